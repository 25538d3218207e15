"""Text normalisation: Unicode NFC, control characters removed, whitespace folded."""

from __future__ import annotations

import re
import unicodedata

# C0/C1 control characters except tab and newline, plus zero-width characters and the BOM
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_HSPACE_RUN = re.compile(r"[ \t]{2,}|\t")  # only runs that change: single spaces stay untouched
_TRAILING = re.compile(r"[ \t]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str, keep_indentation: bool = False) -> str:
    """`text` in NFC with control characters removed, unusual spaces made plain, trailing spaces and
    runs of blank lines removed; runs of spaces and tabs fold to one space unless `keep_indentation`
    (source code and chat answers keep their layout)."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
        text = _ODD_SPACES.sub(" ", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not keep_indentation:
        text = _HSPACE_RUN.sub(" ", text)
    if " \n" in text or "\t\n" in text:
        text = _TRAILING.sub("\n", text)
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip() if not keep_indentation else text.strip("\n").rstrip()
