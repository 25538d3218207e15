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

PARQUET_MAX_ROW_GROUP_BYTES = 512 << 20
"""Uncompressed bytes of the columns read from one Parquet row group. pyarrow decompresses a value
whole, so a 7 KB file holding one 200 MB string took 1.2 GB of memory; a group over this (or whose
rows average more than a document may hold) is dropped unread, by its declared size."""

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


def parquet_group_excess(group: Any, columns: set[str] | None, max_row_bytes: int) -> str | None:
    """Why a Parquet row group (pyarrow's RowGroupMetaData) is too large to read, or None. Only the
    top-level `columns` are counted (all when None)."""
    size = sum(group.column(i).total_uncompressed_size for i in range(group.num_columns)
               if columns is None or group.column(i).path_in_schema.split(".")[0] in columns)
    if size > PARQUET_MAX_ROW_GROUP_BYTES:
        return f"{size / 2**20:,.0f} MiB uncompressed, more than {PARQUET_MAX_ROW_GROUP_BYTES >> 20} MiB"
    if size > max_row_bytes * max(group.num_rows, 1):
        return f"{size / 2**20:,.1f} MiB uncompressed for {group.num_rows:,} rows, over {max_row_bytes:,} bytes a row"
    return None
