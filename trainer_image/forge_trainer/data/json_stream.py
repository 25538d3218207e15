"""The elements of a JSON file, parsed as its bytes arrive: a top-level array yields one element at a
time, any other top-level value is yielded alone. Memory stays at about one element plus one chunk,
whatever the file size (a 50 MB array no longer becomes 188 MB of Python objects at once).

Built on the standard library's `JSONDecoder.raw_decode`, which parses one value from a position in a
string; an element cut by the end of the buffer is retried once more bytes have arrived.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

_DECODER = json.JSONDecoder()
_NON_SPACE = re.compile(r"[^ \t\n\r]")
_COMPACT_AT = 1 << 20  # drop the consumed part of the buffer once it is this long
_NUMBER_GOES_ON = frozenset("0123456789.eE+-")
_TRUNCATION_SLACK = 8  # an error this close to the buffer's end may just be a value cut by a chunk boundary


class ElementTooLong(ValueError):
    """One element is longer than the limit, so neither it nor the rest of the file can be read."""


class EmptyDocument(ValueError):
    """The file holds only whitespace."""


class _Buffer:
    """Decoded text of the input so far, with a read position."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0
        self.eof = False

    def fill(self) -> bool:
        """Append the next chunk; False once the input is exhausted."""
        if self.eof:
            return False
        if self.pos >= _COMPACT_AT:
            self.text, self.pos = self.text[self.pos:], 0
        chunk = next(self._chunks, None)
        if chunk is None:
            self.text += self._utf8.decode(b"", final=True)  # a truncated UTF-8 sequence raises here
            self.eof = True
            return False
        self.text += self._utf8.decode(chunk)
        return True

    def peek(self) -> str:
        """The next non-whitespace character (the position moves to it), or "" at the end of the input."""
        while True:
            m = _NON_SPACE.search(self.text, self.pos)
            if m:
                self.pos = m.start()
                return self.text[self.pos]
            self.pos = len(self.text)
            if not self.fill():
                return ""

    def value(self, limit: int) -> tuple[Any, str]:
        """Parse the value at the position: (value, its text)."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, self.pos)
                if self.eof or not self._number_may_go_on(value, end):
                    raw = self.text[self.pos:end]
                    self.pos = end
                    return value, raw
            except json.JSONDecodeError as exc:
                if self.eof or not _maybe_truncated(exc, len(self.text)):
                    raise
            if len(self.text) - self.pos > limit:
                raise ElementTooLong(f"an element at character {self.pos} is longer than {limit} characters")
            self.fill()

    def _number_may_go_on(self, value: Any, end: int) -> bool:
        """A number parsed up to the buffer's end (or up to a '.', 'e', ...) may continue in the next chunk."""
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return is_number and (end == len(self.text) or self.text[end] in _NUMBER_GOES_ON)

    def error(self, message: str) -> json.JSONDecodeError:
        """A decode error at the current position."""
        return json.JSONDecodeError(message, self.text, self.pos)


def _maybe_truncated(exc: json.JSONDecodeError, buffered: int) -> bool:
    return exc.pos >= buffered - _TRUNCATION_SLACK or exc.msg.startswith("Unterminated string")


def json_elements(chunks: Iterable[bytes], limit: int) -> Iterator[tuple[Any, str]]:
    """(element, its text) for each element of a top-level array, or the one top-level value.

    Raises, after yielding what came before the fault: UnicodeDecodeError, json.JSONDecodeError,
    RecursionError (nesting deeper than the parser follows), ElementTooLong (an element over `limit`
    characters) and EmptyDocument."""
    buf = _Buffer(chunks)
    first = buf.peek()
    if not first:
        raise EmptyDocument("the file holds only whitespace")
    if first != "[":
        yield buf.value(limit)
    else:
        buf.pos += 1
        if buf.peek() == "]":
            buf.pos += 1
        else:
            while True:
                yield buf.value(limit)
                sep = buf.peek()
                buf.pos += 1
                if sep == "]":
                    break
                if sep != ",":
                    buf.pos -= 1
                    raise buf.error("Expecting ',' delimiter or ']'")
                if buf.peek() in ("]", ""):
                    raise buf.error("Expecting value")
    if buf.peek():
        raise buf.error("Extra data")
