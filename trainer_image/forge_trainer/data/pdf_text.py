"""The text of a PDF, extracted within bounds: pages, characters and content-stream work are all capped
(see `limits`), and extraction stops as soon as a cap is passed, so a small crafted file cannot take
minutes of CPU or gigabytes of text. pypdf's own parsing budget bounds each content stream; counting
the operations it interprets (forms included) bounds the whole document.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forge_trainer.data.limits import PDF_MAX_BYTES, PDF_MAX_OPERATIONS, PDF_MAX_PAGES, PDF_MAX_STREAM_TOKENS

_SHOW_TEXT = (b"Tj", b"'", b'"')


class PdfTooLong(ValueError):
    """The PDF passes one of the caps; the message says which."""


class _Budget:
    """Counts the text and operations of one document as pypdf interprets its content streams."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.chars = 0
        self.operations = 0
        self.exceeded: str | None = None  # pypdf swallows exceptions raised inside a form XObject

    def _stop(self, why: str) -> None:
        self.exceeded = why
        raise PdfTooLong(why)

    def visit(self, operator: bytes, operands: Any, _cm: Any, _tm: Any) -> None:
        """pypdf's `visitor_operand_before`: raising here stops the extraction at once."""
        self.operations += 1
        if self.operations > PDF_MAX_OPERATIONS:
            self._stop(f"more than {PDF_MAX_OPERATIONS:,} content-stream operations")
        if operator in _SHOW_TEXT and operands:
            self.chars += len(operands[-1]) if isinstance(operands[-1], str | bytes) else 0
        elif operator == b"TJ" and operands and isinstance(operands[0], list):
            self.chars += sum(len(part) for part in operands[0] if isinstance(part, str | bytes))
        if self.chars > self.max_chars:
            self._stop(f"more than {self.max_chars:,} characters of text")


def pdf_text(path: Path, max_chars: int) -> str:
    """The text of every page, pages separated by a blank line; PdfTooLong past a cap (pypdf's own
    limits included), and whatever pypdf raises for a damaged file."""
    import pypdf
    from pypdf.errors import LimitReachedError

    if path.stat().st_size > PDF_MAX_BYTES:  # pypdf holds the whole file in memory
        raise PdfTooLong(f"larger than {PDF_MAX_BYTES >> 20} MiB")
    budget = _Budget(max_chars)
    pages: list[str] = []
    number = 0
    try:
        with pypdf.apply_configuration(stream_parsing_work_maximum_count=PDF_MAX_STREAM_TOKENS):
            reader = pypdf.PdfReader(path)
            if len(reader.pages) > PDF_MAX_PAGES:
                raise PdfTooLong(f"{len(reader.pages):,} pages, more than {PDF_MAX_PAGES:,}")
            for page in reader.pages:
                number += 1  # named in the error of a cap passed on this page
                text = page.extract_text(visitor_operand_before=budget.visit).strip()
                if budget.exceeded:  # raised inside a form XObject, where pypdf logs and carries on
                    raise PdfTooLong(budget.exceeded)
                if text:
                    pages.append(text)
    except (LimitReachedError, PdfTooLong) as exc:
        raise PdfTooLong(f"page {number}: {exc}" if number else str(exc)) from exc
    text = "\n\n".join(pages)
    if len(text) > max_chars:  # text the operand count missed (e.g. ligatures that expand)
        raise PdfTooLong(f"more than {max_chars:,} characters of text")
    return text
