"""The working area of a dataset prepared by several workers: where each stage's worker writes, how it
commits, and how records are placed in the one global order every worker agrees on.

Under the dataset's prefix (deleted once manifest.json is written):

    _work/<stage>/<worker:05d>/...          what one worker of one stage wrote
    _work/<stage>/<worker:05d>/_done.json   written last: the worker's commit (a retried worker that
                                            finds it skips its work)
    _work/progress/<stage>-<worker:05d>/    that worker's progress.json and audit.jsonl

The listing is in pieces (`ingest.pieces`): whole objects, and byte ranges of a large JSON Lines or CSV
object, cut by a piece size that does not depend on the number of workers. A record's position is (index
of its piece in that listing, index of the record in the piece), packed into one uint64 (piece << 32 |
record): the order the one-process `prepare` reads in, as it reads the same pieces. Workers own
contiguous runs of pieces (`partition`, balanced by the pieces' bytes), so concatenating the workers'
outputs in worker order gives the global order without a sort.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from forge_trainer.config import PrepareConfig
from forge_trainer.config.data import MAX_PREPARE_WORKERS, PREPARE_SINGLE_WORKER_STAGES, PREPARE_STAGES
from forge_trainer.data.ingest import Piece
from forge_trainer.errors import WorkloadError
from forge_trainer.store import ObjectStore, StoreError, join_key, read_json

WORK_DIR = "_work"
"""The working area under the dataset prefix."""
DONE_NAME = "_done.json"
"""A worker's commit marker."""
STAGES = PREPARE_STAGES
SINGLE_WORKER_STAGES = PREPARE_SINGLE_WORKER_STAGES
MAX_WORKERS = MAX_PREPARE_WORKERS
MAX_PIECES = 1 << 31
MAX_RECORDS_PER_PIECE = 1 << 32


def position(piece: int, record: int) -> int:
    """The global position of record `record` of piece `piece` (its index in the listing of pieces)."""
    if record >= MAX_RECORDS_PER_PIECE:
        raise WorkloadError(f"piece #{piece} of the source holds more than {MAX_RECORDS_PER_PIECE:,} records; "
                            "set a smaller splitBytes")
    return piece << 32 | record


def piece_of(pos: int) -> int:
    """The listing index of the piece a position lies in."""
    return pos >> 32


def partition(pieces: Sequence[Piece], workers: int) -> list[int]:
    """Bounds (workers + 1 listing indexes) of the contiguous runs of pieces each worker reads: balanced
    by the pieces' bytes, so worker i reads pieces bounds[i]..bounds[i+1]-1."""
    if len(pieces) >= MAX_PIECES:
        raise WorkloadError(f"the source holds {len(pieces):,} pieces; at most {MAX_PIECES - 1:,} are supported "
                            "(set a larger splitBytes)")
    total = sum(max(p.length, 1) for p in pieces)
    bounds = [0] * (workers + 1)
    start = 0
    owner = 0
    for index, piece in enumerate(pieces):
        mine = min(workers - 1, start * workers // max(total, 1))  # who owns the piece's first byte
        while owner < mine:
            owner += 1
            bounds[owner] = index
        start += max(piece.length, 1)
    for w in range(owner + 1, workers + 1):
        bounds[w] = len(pieces)
    return bounds


def listing_digest(pieces: Sequence[Piece]) -> str:
    """A digest of the listing (keys, sizes and pieces): every worker must have seen the same source."""
    h = hashlib.sha256()
    for p in pieces:
        h.update(f"{p.key}\t{p.size}\t{p.start}\t{p.end}\n".encode())
    return "sha256:" + h.hexdigest()


def config_digest(config: PrepareConfig) -> str:
    """A digest of what the workload was told: outputs of another config are never mixed in."""
    return "sha256:" + hashlib.sha256(json.dumps(config.to_wire(), sort_keys=True).encode()).hexdigest()


class WorkArea:
    """The `_work/` keys of one dataset, and the commit markers in it."""

    def __init__(self, store: ObjectStore, prefix: str, config: PrepareConfig, workers: int) -> None:
        self.store, self.prefix, self.workers = store, prefix, workers
        self.config_digest = config_digest(config)

    def key(self, stage: str, worker: int, name: str) -> str:
        """The key of `name` written by `worker` of `stage`."""
        return join_key(self.prefix, WORK_DIR, stage, f"{worker:05d}", name)

    def progress_prefix(self, stage: str, worker: int) -> str:
        """Where one worker's progress.json and audit.jsonl go."""
        return join_key(self.prefix, WORK_DIR, "progress", f"{stage}-{worker:05d}")

    def done(self, stage: str, worker: int) -> dict[str, Any] | None:
        """The commit of a worker when it committed this config at this parallelism, else None."""
        key = self.key(stage, worker, DONE_NAME)
        if not self.store.exists(key):
            return None
        summary = read_json(self.store, key)
        if summary.get("config") != self.config_digest or summary.get("workers") != self.workers:
            return None  # left by a run with another spec or parallelism: redone
        return dict(summary)

    def commit(self, stage: str, worker: int, summary: dict[str, Any]) -> None:
        """Commit a worker's outputs: written after all of them, in one atomic put."""
        body = {**summary, "config": self.config_digest, "workers": self.workers}
        self.store.put_bytes(self.key(stage, worker, DONE_NAME), json.dumps(body, sort_keys=True).encode(),
                             content_type="application/json")

    def committed(self, stage: str) -> list[dict[str, Any]]:
        """Every worker's commit of `stage`; WorkloadError naming the first worker that has not committed."""
        count = 1 if stage in SINGLE_WORKER_STAGES else self.workers
        out = []
        for worker in range(count):
            summary = self.done(stage, worker)
            if summary is None:
                raise WorkloadError(f"stage {stage} is not finished: worker {worker} has not committed "
                                    f"{self.store.uri(self.key(stage, worker, DONE_NAME))}")
            out.append(summary)
        return out

    def clear(self) -> int:
        """Delete the whole working area; the number of objects deleted. Scan worker 0's marker goes first:
        with manifest.json written, its absence is what tells a rerun the preparation is finished, so a
        clear cut short (a killed pod) leaves a dataset a rerun recognises as done, not a half-deleted area
        whose stages cannot run again."""
        first = self.key("scan", 0, DONE_NAME)
        keys = [o.key for o in self.store.list(join_key(self.prefix, WORK_DIR) + "/")]
        keys.sort(key=lambda k: k != first)
        for key in keys:
            try:
                self.store.delete(key)
            except StoreError as exc:
                raise WorkloadError(f"cannot delete {self.store.uri(key)}: {exc}") from exc
        return len(keys)
