"""Turning generated token ids into text as they arrive, and stopping at stop strings.

Byte-level BPE can split one character over several tokens, so a token's text is only released once
it decodes to whole characters; text that could be the start of a stop string is held back until
it is clear it is not.
"""

from __future__ import annotations

from typing import Protocol


class Decoder(Protocol):
    """What a tokenizer offers to turn ids back into text."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class TextStream:
    """The text of one sequence's generated tokens, released piece by piece."""

    def __init__(self, decoder: Decoder, stop: tuple[str, ...] = ()) -> None:
        self._decoder = decoder
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._prefix_offset = 0  # ids decoded as context, so a token's leading space comes out right
        self._read_offset = 0  # ids whose text is already in self.text
        self.text = ""
        """All text decoded so far (not cut at a stop string)."""
        self._released = 0
        self.stopped = False
        """Whether a stop string was found; nothing more is released after it."""

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the text now safe to release (may be empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        prefix = self._decoder.decode(self._ids[self._prefix_offset:self._read_offset], skip_special_tokens=True)
        full = self._decoder.decode(self._ids[self._prefix_offset:], skip_special_tokens=True)
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""  # an incomplete character: wait for the next token
        self.text += full[len(prefix):]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        return self._release(final=False)

    def finish(self) -> str:
        """The text still held back, released because generation ended."""
        if self.stopped:
            return ""
        if self._read_offset < len(self._ids):
            prefix = self._decoder.decode(self._ids[self._prefix_offset:self._read_offset],
                                          skip_special_tokens=True)
            full = self._decoder.decode(self._ids[self._prefix_offset:], skip_special_tokens=True)
            self.text += full[len(prefix):]
            self._read_offset = len(self._ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self._stop:
            start = max(0, self._released - max(len(s) for s in self._stop) + 1)
            hits = [i for i in (self.text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                end = min(hits)
                self.stopped = True
                piece = self.text[self._released:end]
                self._released = max(self._released, end)
                return piece
        end = len(self.text) if final else len(self.text) - self._held_back()
        piece = self.text[self._released:end]
        self._released = max(self._released, end)
        return piece

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is the start of a stop string."""
        longest = 0
        for s in self._stop:
            for n in range(min(len(s) - 1, len(self.text)), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest
