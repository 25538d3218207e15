"""Bounds on what one source record or file may cost to read. A hostile or broken input that would
exceed one is dropped and counted under a reason; it never stalls or crashes the prepare job.

Each figure is far above what a real document of its kind needs (a 1,000-page book is about 1 M
characters and a few hundred thousand content-stream operations), and far below what a crafted
file can demand (a 9 KB PDF can decompress to 7.5 M characters of text).
"""

from __future__ import annotations

from typing import Any

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects in one record. Python's JSON parser and encoder recurse,
so a deeper record could fail a later stage; a `[` x 100000 line fails to parse at all."""

PDF_MAX_BYTES = 256 << 20
"""Size of one PDF file: pypdf reads the whole file into memory. Larger PDFs are scans, whose pages hold
images, not text."""
PDF_MAX_PAGES = 5_000
"""Pages in one PDF; a file declaring more is dropped before any page is read."""
PDF_MAX_STREAM_TOKENS = 300_000
"""Tokens (operands and operators) pypdf may parse from one content stream before giving up."""
PDF_MAX_OPERATIONS = 600_000
"""Content-stream operations interpreted across one PDF, form XObjects included: with the per-stream
bound above, this caps the CPU a PDF can take whatever its text amounts to."""

CSV_MAX_RECORD_LINES = 500
"""Physical lines one CSV record may span. Quoted fields may hold line breaks, but a record running
over more is almost always a stray quote swallowing the rows after it: its first line is dropped and
the others are read again (`csv_rows`)."""


def deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests lists and dicts more than `limit` levels deep (iterative, so any depth is safe)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
