"""Training sequences from a prepared dataset's token shards, in a deterministic order.

Each shard is cut into sequences of `seq_len + 1` tokens (stride `seq_len`, so inputs and shifted
targets are contiguous). An epoch visits the shards in a seeded random order and each shard's
sequences in a seeded random order, so the stream is a pure function of the seed: global batch `s`
is sequences `[s * G, (s + 1) * G)` of it whatever the world size, and rank r of W takes its
contiguous `G / W` of them. A resumed or resized run therefore sees exactly the batches an
uninterrupted one would. Shards are read (digest-verified) when first needed, or ahead of time by
`warm` in a background thread; a few stay cached.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from forge_trainer.config import StoreConfig
from forge_trainer.data.manifest import Manifest, ShardFormat, Split
from forge_trainer.data.shards import read_token_shard

Batch = dict[str, torch.Tensor]
"""A micro-batch: `input_ids` (B, T) and `labels` (B, T), labels[t] the target of position t,
-100 where no loss is taken."""

IGNORE_INDEX = -100
_CACHED_SHARDS = 3


class TokenSequences:
    """The sequences of one split of a dataset, addressable by position in an endless seeded stream."""

    def __init__(self, uri: str, manifest: Manifest, split: Split, seq_len: int, seed: int,
                 store: StoreConfig | None = None, shuffle: bool = True) -> None:
        self.uri, self.manifest, self.store = uri, manifest, store
        self.seq_len, self.seed, self.shuffle = seq_len, seed, shuffle
        self.shards = [s for s in manifest.shards if s.split is split and s.format is ShardFormat.TOKENS]
        self.counts = [max(0, (s.tokens - 1) // seq_len) for s in self.shards]
        self.total = sum(self.counts)
        """Sequences in one epoch."""
        self._cache: OrderedDict[int, npt.NDArray[Any]] = OrderedDict()
        self._epochs: dict[int, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        self._perms: dict[tuple[int, int], npt.NDArray[np.int64]] = {}
        self._lock = threading.RLock()  # `warm` may run in a background thread

    def _epoch(self, epoch: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(shard order, cumulative sequence counts in that order) of an epoch."""
        if epoch not in self._epochs:
            n = len(self.shards)
            order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                     else np.arange(n))
            cum = np.cumsum([self.counts[i] for i in order])
            self._epochs = {epoch: (order.astype(np.int64), cum.astype(np.int64))}
        return self._epochs[epoch]

    def _offsets(self, epoch: int, shard: int, pos: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Sequence numbers within `shard` of positions `pos` of its epoch order."""
        if not self.shuffle:
            return pos
        key = (epoch, shard)
        if key not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[key] = np.random.default_rng([self.seed, epoch, shard]).permutation(self.counts[shard])
        return self._perms[key][pos]

    def _tokens(self, shard: int) -> npt.NDArray[Any]:
        if shard in self._cache:
            self._cache.move_to_end(shard)
        else:
            self._store_shard(shard, self._read(shard))
        return self._cache[shard]

    def _read(self, shard: int) -> npt.NDArray[Any]:
        return read_token_shard(self.uri, self.shards[shard], self.store, dtype=self.manifest.dtype)

    def _store_shard(self, shard: int, tokens: npt.NDArray[Any]) -> None:
        self._cache[shard] = tokens
        while len(self._cache) > _CACHED_SHARDS:
            self._cache.popitem(last=False)

    def _shards_of(self, indices: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        epochs, within = np.divmod(indices, self.total)
        out = np.empty(len(indices), dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            order, cum = self._epoch(int(epoch))
            out[sel] = order[np.searchsorted(cum, within[sel], side="right")]
        return out

    def missing_shards(self, indices: range | list[int]) -> list[int]:
        """Shards the sequences at `indices` need that are not read yet."""
        with self._lock:
            shards = np.unique(self._shards_of(np.asarray(list(indices), dtype=np.int64)))
            return [int(s) for s in shards if int(s) not in self._cache]

    def warm(self, shards: list[int]) -> None:
        """Read (and verify) `shards` into the cache ahead of use; safe to run in a background thread
        while the training thread reads batches."""
        for shard in shards:
            with self._lock:
                if shard in self._cache:
                    continue
            tokens = self._read(shard)  # the slow part, without the lock
            with self._lock:
                if shard not in self._cache:
                    self._store_shard(shard, tokens)

    def rows(self, indices: range | list[int]) -> npt.NDArray[np.int64]:
        """Sequences at `indices` of the endless stream, one row of `seq_len + 1` token ids each."""
        with self._lock:
            return self._rows(np.asarray(list(indices), dtype=np.int64))

    def _rows(self, idx: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        out = np.empty((len(idx), self.seq_len + 1), dtype=np.int64)
        epochs, within = np.divmod(idx, self.total)
        span = np.arange(self.seq_len + 1)
        for epoch in np.unique(epochs):
            in_epoch = np.flatnonzero(epochs == epoch)
            order, cum = self._epoch(int(epoch))
            slots = np.searchsorted(cum, within[in_epoch], side="right")
            shards = order[slots]
            pos = within[in_epoch] - np.where(slots > 0, cum[slots - 1], 0)
            for shard in np.unique(shards):
                mine = shards == shard
                starts = self._offsets(int(epoch), int(shard), pos[mine]) * self.seq_len
                out[in_epoch[mine]] = self._tokens(int(shard))[starts[:, None] + span]
        return out

    def sequence(self, index: int) -> npt.NDArray[np.int64]:
        """Sequence `index` of the endless stream: `seq_len + 1` token ids."""
        row: npt.NDArray[np.int64] = self.rows([index])[0]
        return row

    def batch(self, indices: range | list[int]) -> Batch:
        """The sequences at `indices` as a micro-batch."""
        rows = torch.from_numpy(self.rows(indices))
        return {"input_ids": rows[:, :-1].contiguous(), "labels": rows[:, 1:].contiguous()}


def micro_batch_size_for(global_batch: int, world_size: int, micro_batch: int) -> int:
    """The largest micro-batch size not above `micro_batch` that divides this worker's share of the
    global batch (the global batch must split evenly across workers)."""
    if global_batch % world_size:
        raise ValueError(f"hyperparameters.globalBatchSize ({global_batch}) must be divisible by the "
                         f"number of workers ({world_size})")
    share = global_batch // world_size
    return max(d for d in range(1, min(micro_batch, share) + 1) if share % d == 0)


def step_indices(step: int, global_batch: int, rank: int, world_size: int) -> range:
    """Stream positions of this worker's sequences in optimizer step `step`."""
    share = global_batch // world_size
    start = step * global_batch + rank * share
    return range(start, start + share)


def step_micro_batches(data: TokenSequences, step: int, global_batch: int, rank: int, world_size: int,
                       micro_batch: int) -> list[Batch]:
    """This worker's micro-batches of optimizer step `step`."""
    mine = step_indices(step, global_batch, rank, world_size)
    return [data.batch(mine[i:i + micro_batch]) for i in range(0, len(mine), micro_batch)]


def eval_micro_batches(data: TokenSequences, num_sequences: int, rank: int, world_size: int,
                       micro_batch: int) -> list[Batch]:
    """This worker's part of the first `num_sequences` sequences of a split (fixed order)."""
    mine = list(range(rank, min(num_sequences, data.total), world_size))
    return [data.batch(mine[i:i + micro_batch]) for i in range(0, len(mine), micro_batch)]
