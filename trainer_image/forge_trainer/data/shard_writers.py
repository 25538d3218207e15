"""Packing cleaned documents into shard files: token ids into fixed-size binary shards, records into
JSON Lines shards. Shards are written to a local temporary directory, hashed as they are written, and
handed to a `publish` callback (which uploads them) as soon as each is full."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from forge_trainer.config.store import RECORDS_DIR, SHARDS_DIR
from forge_trainer.data.encode import FastEncoder
from forge_trainer.data.manifest import ShardFormat, ShardInfo, Split

if TYPE_CHECKING:
    from tokenizers import Tokenizer

Publish = Callable[[Path, ShardInfo], None]
"""Uploads a finished shard file to the store at `info.path`."""

JSONL_SHARD_BYTES = 64 << 20
"""A records shard rolls over once it holds this many bytes."""


class _ShardWriter:
    def __init__(self, split: Split, fmt: ShardFormat, tmpdir: Path, publish: Publish, suffix: str,
                 folder: str) -> None:
        self.split, self.format, self.tmpdir, self.publish = split, fmt, tmpdir, publish
        self.suffix, self.folder = suffix, folder
        self.shards: list[ShardInfo] = []
        self._fh: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._bytes = self._tokens = self._records = 0

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            self._path = self.tmpdir / f"{self.split.value}-{len(self.shards):05d}{self.suffix}"
            self._fh = self._path.open("wb")
            self._hash = hashlib.sha256()
            self._bytes = self._tokens = self._records = 0
        return self._fh

    def _write(self, data: bytes) -> None:
        self._open().write(data)
        self._hash.update(data)
        self._bytes += len(data)

    def _finish(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        info = ShardInfo(path=f"{self.folder}/{self._path.name}", split=self.split, format=self.format,
                         bytes=self._bytes, tokens=self._tokens, records=self._records,
                         sha256="sha256:" + self._hash.hexdigest())
        self.publish(self._path, info)
        self._path.unlink()
        self.shards.append(info)

    def close(self) -> list[ShardInfo]:
        """Publish the last, partly filled shard; the shards written, in order."""
        self._finish()
        return self.shards


class TokenShardWriter(_ShardWriter):
    """Packs documents' token ids back to back into shards of exactly `tokens_per_shard` tokens (the
    last may be smaller); a document may continue in the next shard. A shard's `records` counts the
    documents that end in it (its eos tokens)."""

    def __init__(self, split: Split, dtype: str, tokens_per_shard: int, tmpdir: Path, publish: Publish,
                 eos_id: int) -> None:
        super().__init__(split, ShardFormat.TOKENS, tmpdir, publish, ".bin", SHARDS_DIR)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.tokens_per_shard = tokens_per_shard
        self.eos_id = eos_id
        self.total_tokens = 0

    def add(self, ids: npt.NDArray[Any]) -> None:
        """Append ids of whole documents, each followed by its eos."""
        arr = np.asarray(ids).astype(self.dtype, copy=False)
        while len(arr):
            room = self.tokens_per_shard - self._tokens
            part, arr = arr[:room], arr[room:]
            self._write(part.tobytes())
            self._tokens += len(part)
            self._records += int(np.count_nonzero(part == self.eos_id))
            self.total_tokens += len(part)
            if self._tokens >= self.tokens_per_shard:
                self._finish()


class RecordShardWriter(_ShardWriter):
    """Writes records as JSON Lines, rolling over to a new shard at about `max_bytes`."""

    def __init__(self, split: Split, tmpdir: Path, publish: Publish, max_bytes: int = JSONL_SHARD_BYTES) -> None:
        super().__init__(split, ShardFormat.JSONL, tmpdir, publish, ".jsonl", RECORDS_DIR)
        self.max_bytes = max_bytes
        self.total_tokens = 0

    def add(self, record: dict[str, Any], tokens: int = 0) -> None:
        """Append one record; `tokens` is its token count under the dataset's tokenizer."""
        self._write(json.dumps(record, ensure_ascii=False, sort_keys=True).encode() + b"\n")
        self._records += 1
        self._tokens += tokens
        self.total_tokens += tokens
        if self._bytes >= self.max_bytes:
            self._finish()


SPLITS = (Split.TRAIN, Split.VALIDATION)
"""Split of index 0 and 1, as the cleaning pass numbers them."""


def pack_token_shards(batches: Iterable[list[tuple[int, str]]], tok: Tokenizer, eos_id: int, dtype: str,
                      tokens_per_shard: int, tmpdir: Path, publish: Publish,
                      on_batch: Callable[[], None] = lambda: None) -> tuple[list[ShardInfo], list[int]]:
    """Tokenize batches of (split index, text) and pack them, eos after each document, into token
    shards; returns the shards (train first) and the tokens per split."""
    encoder = FastEncoder(tok, eos_id)
    writers = [TokenShardWriter(s, dtype, tokens_per_shard, tmpdir, publish, eos_id) for s in SPLITS]
    for batch in batches:
        for index, writer in enumerate(writers):
            texts = [text for split, text in batch if split == index]
            if texts:
                writer.add(encoder.encode_flat(texts, dtype))
        on_batch()
    return [s for w in writers for s in w.close()], [w.total_tokens for w in writers]


def pack_record_shards(batches: Iterable[list[tuple[int, str, dict[str, Any]]]], tok: Tokenizer, tmpdir: Path,
                       publish: Publish, on_batch: Callable[[], None] = lambda: None,
                       ) -> tuple[list[ShardInfo], list[int]]:
    """Write batches of (split index, text, record) into JSONL shards, counting each record's tokens;
    returns the shards (train first) and the tokens per split."""
    encoder = FastEncoder(tok)
    writers = [RecordShardWriter(s, tmpdir, publish) for s in SPLITS]
    for batch in batches:
        counts = encoder.count([text for _, text, _ in batch])
        for (split, _, record), tokens in zip(batch, counts, strict=True):
            writers[split].add(record, tokens=tokens)
        on_batch()
    return [s for w in writers for s in w.close()], [w.total_tokens for w in writers]
