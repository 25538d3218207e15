"""Fast encoding for the packing pass: a pre-token cache in front of a byte-level BPE tokenizer.

A byte-level BPE splits text with a fixed regular expression (GPT-2's) and runs BPE on each piece
independently, so the ids of a piece never depend on its neighbours. Corpora repeat the same pieces
endlessly; caching each piece's ids and looking them up with C-level loops (`regex.findall`, `map`,
`numpy.fromiter`) gives exactly the ids `Tokenizer.encode` gives, several times faster than building
an `Encoding` object per document.

The fast path is only taken for a tokenizer it is exact for (no normaliser, the ByteLevel
pre-tokenizer with its regex and no prefix space); documents that contain a special-token string go
through `Tokenizer.encode`; and the first documents are checked against `Tokenizer.encode_batch`, falling
back for good on any difference. Anything else uses the tokenizer as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt
import regex
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

# tokenizers' ByteLevel pre-tokenizer pattern (byte_level.rs)
_GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
MAX_CACHED_PIECES = 200_000
"""Distinct pieces whose ids are remembered (the first ones seen: the frequent ones); bounds memory."""
VERIFY_DOCS = 256
"""Documents of the first batch encoded both ways and compared before the fast path is trusted."""


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table used by the ByteLevel pre-tokenizer."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


_BYTE_CHARS = _bytes_to_unicode()


class _Eos:
    """Marks the end of a document in a stream of pieces."""


class _Literal:
    """Ids computed elsewhere (a document with special tokens), carried through the piece stream."""

    def __init__(self, ids: Sequence[int]) -> None:
        self.ids = tuple(ids)


class _PieceCache(dict[Any, tuple[int, ...]]):
    def __init__(self, tok: Tokenizer, eos_id: int | None) -> None:
        super().__init__()
        self.model = tok.model
        self.eos = _Eos()
        if eos_id is not None:
            self[self.eos] = (eos_id,)

    def __missing__(self, piece: Any) -> tuple[int, ...]:
        if isinstance(piece, _Literal):
            return piece.ids
        mapped = "".join(map(_BYTE_CHARS.__getitem__, piece.encode()))
        ids = tuple(t.id for t in self.model.tokenize(mapped))
        if len(self) < MAX_CACHED_PIECES:
            self[piece] = ids
        return ids


def supports_fast_path(tok: Tokenizer) -> bool:
    """Whether the cached fast path gives exactly this tokenizer's ids."""
    spec = json.loads(tok.to_str())
    pre = spec.get("pre_tokenizer") or {}
    model = spec.get("model") or {}
    return (spec.get("normalizer") is None and pre.get("type") == "ByteLevel"
            and pre.get("use_regex", True) and not pre.get("add_prefix_space", False)
            and model.get("type") == "BPE" and model.get("dropout") is None)


class FastEncoder:
    """Encodes documents to token ids for packing: the cached fast path when exact, else the tokenizer."""

    def __init__(self, tok: Tokenizer, eos_id: int | None = None) -> None:
        self.tok = tok
        self.cache = _PieceCache(tok, eos_id)
        self.fast = supports_fast_path(tok)
        self.verified = False
        self.specials = [t.content for t in tok.get_added_tokens_decoder().values()]
        self._specials_re = regex.compile("|".join(map(regex.escape, self.specials))) if self.specials else None
        self.eos_id = eos_id

    def _has_special(self, text: str) -> bool:
        if len(self.specials) <= 16:  # a few substring searches beat one regex alternation
            return any(s in text for s in self.specials)
        return self._specials_re is not None and self._specials_re.search(text) is not None

    def _pieces(self, texts: Sequence[str], eos: bool) -> Iterator[Any]:
        for text in texts:
            if self._has_special(text):
                yield _Literal(self.tok.encode(text, add_special_tokens=False).ids)
            else:
                yield from _GPT2_SPLIT.findall(text)
            if eos:
                yield self.cache.eos

    def _reference(self, texts: Sequence[str], eos: bool) -> list[int]:
        tail = [self.eos_id] if eos and self.eos_id is not None else []
        return [i for e in self.tok.encode_batch(list(texts), add_special_tokens=False) for i in e.ids + tail]

    def encode_flat(self, texts: Sequence[str], dtype: str) -> npt.NDArray[Any]:
        """The documents' ids back to back, each followed by eos, as one array of `dtype`."""
        eos = self.eos_id is not None
        if self.fast and not self.verified:
            sample = texts[:VERIFY_DOCS]
            self._verify_equal(self._fast_ids(sample, eos, dtype).tolist() == self._reference(sample, eos))
        if not self.fast:
            return np.array(self._reference(texts, eos), dtype=dtype)
        return self._fast_ids(texts, eos, dtype)

    def _fast_ids(self, texts: Sequence[str], eos: bool, dtype: str) -> npt.NDArray[Any]:
        return np.fromiter(chain.from_iterable(map(self.cache.__getitem__, self._pieces(texts, eos))), dtype=dtype)

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens in each document (no eos)."""
        if self.fast and not self.verified:
            sample = texts[:VERIFY_DOCS]
            expected = [len(e.ids) for e in self.tok.encode_batch(list(sample), add_special_tokens=False)]
            self._verify_equal(self._fast_counts(sample) == expected)
        if not self.fast:
            return [len(e.ids) for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]
        return self._fast_counts(texts)

    def _fast_counts(self, texts: Sequence[str]) -> list[int]:
        return [sum(map(len, map(self.cache.__getitem__, self._pieces([t], False)))) for t in texts]

    def _verify_equal(self, same: bool) -> None:
        self.verified = True
        if not same:
            self.fast = False
            log.warning("cached encoding differs from the tokenizer's on the first documents; using the tokenizer")
