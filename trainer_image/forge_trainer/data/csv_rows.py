"""The rows of a CSV file, with a stray quote costing one row instead of every row after it.

The csv module in its default dialect lets a quote that is never closed (or closed by luck) run on
over the following lines, silently merging them into one field. Here the reader is strict (a closing
quote must come right before a delimiter or the line end, and none may be open at the end of the
file) and a record may span at most CSV_MAX_RECORD_LINES lines. A record that breaks either rule is
reported as a `CsvFault` naming its first line, and the lines after that first one are read again as
records of their own, so only the line with the stray quote is lost. Each line is re-read at most
once per fault, and a fault needs a quote, so the work stays linear in the file.

A piece of a split CSV (see `ingest`) is read as its lines after the header's (`csv_header`); a quoted line
break straddling the piece's end is, to this reader, an unclosed quote at the end of the file.
"""

from __future__ import annotations

import csv
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from forge_trainer.data.limits import CSV_MAX_RECORD_LINES


@dataclass
class CsvRow:
    """A record: its fields by header name, and whether it had more fields than the header."""

    line: int
    fields: dict[str, str | None]
    extra_fields: bool


@dataclass
class CsvFault:
    """A record the reader could not take (its first line is dropped; the rest are read again)."""

    line: int
    message: str
    text: str


@dataclass
class CsvBadLine:
    """A line that is not UTF-8 (`raw` holds it) or is longer than the limit (`raw` is None)."""

    line: int
    raw: bytes | None


class _RecordTooLong(Exception):
    """The current record has reached CSV_MAX_RECORD_LINES lines."""


class _Lines:
    """Feeds decoded lines to the csv reader, remembering those of the current record so they can be
    read again; undecodable and overlong lines are set aside as they pass."""

    def __init__(self, lines: Iterable[bytes | None]) -> None:
        self._source = iter(lines)
        self._number = 0
        self._replay: deque[tuple[int, str]] = deque()
        self.record: list[tuple[int, str]] = []
        self.bad: list[CsvBadLine] = []

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if len(self.record) >= CSV_MAX_RECORD_LINES:
            raise _RecordTooLong(f"one record runs over more than {CSV_MAX_RECORD_LINES} lines")
        entry = self._replay.popleft() if self._replay else self._read()
        self.record.append(entry)
        return entry[1]

    def _read(self) -> tuple[int, str]:
        for raw in self._source:  # StopIteration at the end of the file ends the csv reader
            self._number += 1
            if raw is None:
                self.bad.append(CsvBadLine(self._number, None))
                continue
            try:
                return self._number, raw.decode("utf-8").removesuffix("\r") + "\n"
            except UnicodeDecodeError:
                self.bad.append(CsvBadLine(self._number, raw))
        raise StopIteration

    def read_again(self, entries: list[tuple[int, str]]) -> None:
        """Put `entries` back in front of the lines still to come."""
        self._replay.extendleft(reversed(entries))


def csv_rows(lines: Iterable[bytes | None], field_limit: int) -> Iterator[CsvRow | CsvFault | CsvBadLine]:
    """Rows of a CSV whose first record is the header, faults and bad lines, in file order. A header
    that cannot be read is one fault and ends the file (no row can be named without it)."""
    csv.field_size_limit(min(field_limit, 2**31 - 1))
    feed = _Lines(lines)
    rows = csv.DictReader(feed, strict=True)
    try:
        _ = rows.fieldnames
    except (csv.Error, _RecordTooLong) as exc:
        yield from _flush(feed)
        first, text = feed.record[0] if feed.record else (0, "")
        yield CsvFault(first, f"header: {exc}", text.rstrip("\n"))
        return
    while True:
        feed.record = []
        try:
            row = next(rows)
        except StopIteration:
            break
        except (csv.Error, _RecordTooLong) as exc:  # the reader starts afresh at its next call
            taken = feed.record
            yield from _flush(feed)
            if taken:
                first, text = taken[0]
                merged = f" (an unclosed quote took lines {first}-{taken[-1][0]}; the lines after {first} " \
                         "are read again)" if len(taken) > 1 else ""
                yield CsvFault(first, f"{exc}{merged}", text.rstrip("\n"))
                feed.read_again(taken[1:])
            continue
        first = feed.record[0][0] if feed.record else 0
        yield from _flush(feed)
        yield CsvRow(first, {k: v for k, v in row.items() if isinstance(k, str)}, None in row)
    yield from _flush(feed)


def csv_header(lines: Iterable[bytes | None]) -> list[bytes] | None:
    """The lines of a CSV's first record (its header), read no further; None when it cannot be read. A
    piece of a split file is read after these, so its rows get the header's names."""
    feed = _Lines(lines)
    try:
        next(csv.reader(feed, strict=True))
    except (csv.Error, _RecordTooLong, StopIteration):
        return None
    return [text.removesuffix("\n").encode() for _, text in feed.record]


def _flush(feed: _Lines) -> Iterator[CsvBadLine]:
    yield from feed.bad
    feed.bad = []
