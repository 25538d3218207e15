"""The dataset's progress.json while its preparation is split across workers: every worker's commits and
its own live progress.json merged into one snapshot: `stage n/5 (k/N workers)`, the documents and bytes
read so far by all workers, the counts of the committed workers, and one entry per worker.

Worker 0 rewrites it every progress interval from a background thread (`LiveProgress`, stopped before
its manifest stage, which writes the dataset's progress.json itself); every worker rewrites it when it
commits a stage (`publish_merged`). Each write is one atomic put of a complete snapshot, so whichever
lands last is whole, and a committed figure never goes back: commits are never undone within a run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from forge_trainer.config import DatasetCounts, DatasetProgress, WorkerProgress
from forge_trainer.config.store import PROGRESS_NAME
from forge_trainer.config.wire import rfc3339
from forge_trainer.data.work import SINGLE_WORKER_STAGES, STAGES, WorkArea
from forge_trainer.store import ObjectStore, StoreError, join_key, write_json_atomic

log = logging.getLogger(__name__)

CountsOf = Callable[[list[dict[str, Any]], list[dict[str, Any]]], DatasetCounts]
"""The merged counts of the committed scan and pack summaries (stages._merged_counts)."""
WORKERS_PER_SECOND = 20
"""Workers whose state one merge reads per second at most (about three store requests each)."""


@dataclass(frozen=True)
class WorkerSeen:
    """What one worker has shown: its commits by stage, and the progress.json of the stage it is in."""

    worker: int
    commits: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Commit summaries of the stages it committed."""
    stage: str | None = None
    """The first stage it has not committed, when it has started it (it wrote its progress.json)."""
    live: DatasetProgress | None = None
    """That stage's progress.json."""


def worker_stages(worker: int) -> list[str]:
    """The committed stages `worker` runs, in order (the manifest stage has no commit: its output is the
    dataset's own progress.json and manifest.json)."""
    return [s for s in STAGES[:-1] if s not in SINGLE_WORKER_STAGES or worker == 0]


def current_stage(workers: int, seen: list[WorkerSeen]) -> tuple[int, int, int]:
    """(index of the first stage not every worker committed, workers that committed it, workers it has)."""
    for index, stage in enumerate(STAGES):
        count = 1 if stage in SINGLE_WORKER_STAGES else workers
        done = sum(1 for w in seen[:count] if stage in w.commits)
        if done < count:
            return index, done, count
    return len(STAGES) - 1, 1, 1


def worker_entry(seen: WorkerSeen) -> WorkerProgress:
    """One worker's entry: the stage it is in (or the last it committed), and what its scan read."""
    entry = WorkerProgress(worker=seen.worker)
    scan, live = seen.commits.get("scan"), seen.live
    if scan is not None:
        entry.documents_read, entry.bytes_done = int(scan["read"]), int(scan["bytes"])
        entry.bytes_total = entry.bytes_done
    elif live is not None and seen.stage == "scan":
        entry.documents_read, entry.bytes_done = live.counts.documents_read, live.bytes_done
        entry.bytes_total = live.bytes_total
    if seen.stage is not None:
        entry.stage = seen.stage
        entry.error = live.error if live is not None else None
    else:
        done = [s for s in worker_stages(seen.worker) if s in seen.commits]
        if done:
            entry.stage, entry.committed = done[-1], True
    return entry


def merge_progress(workers: int, seen: list[WorkerSeen], counts_of: CountsOf, now: str) -> DatasetProgress:
    """The dataset's progress.json from every worker's state (`seen`, one per worker in worker order)."""
    index, done, count = current_stage(workers, seen)
    entries = [worker_entry(w) for w in seen]
    counts = counts_of([w.commits["scan"] for w in seen if "scan" in w.commits],
                       [w.commits["pack"] for w in seen if "pack" in w.commits])
    # the live reads include the committed ones, which the counts already hold
    counts.documents_read = max(counts.documents_read, sum(e.documents_read for e in entries))
    totals = [e.bytes_total for e in entries]
    failed = [e for e in entries if e.error]
    stage = f"{STAGES[index]} {index + 1}/{len(STAGES)} ({done}/{count} workers)"
    return DatasetProgress(
        stage="failed" if failed else stage, documents_done=counts.documents_read,
        bytes_done=sum(e.bytes_done for e in entries),
        bytes_total=sum(t for t in totals if t is not None) if None not in totals else None,
        counts=counts, error=failed[0].error if failed else None, updated_at=now, workers=entries)


def read_worker(area: WorkArea, worker: int, before: WorkerSeen | None = None) -> WorkerSeen:
    """What `worker` has shown so far (its commits, and the progress.json of the stage it is in); the
    commits of `before` are not read again (a commit stays). StoreError when the store does not answer."""
    commits = dict(before.commits) if before is not None else {}
    for stage in worker_stages(worker):
        if stage in commits:
            continue
        summary = area.done(stage, worker)
        if summary is not None:
            commits[stage] = summary
            continue
        key = join_key(area.progress_prefix(stage, worker), PROGRESS_NAME)
        if not area.store.exists(key):
            break
        try:
            live = DatasetProgress.model_validate_json(area.store.get_bytes(key))
        except ValidationError:
            live = None  # never written whole by a worker; shown as started without figures
        return WorkerSeen(worker, commits, stage, live)
    return WorkerSeen(worker, commits)


def manifest_started(workers: int, seen: list[WorkerSeen]) -> bool:
    """Every pack worker committed: worker 0's manifest stage may be writing the dataset's progress.json."""
    return all("pack" in w.commits for w in seen[:workers])


def publish_merged(store: ObjectStore, prefix: str, area: WorkArea, counts_of: CountsOf,
                   before: list[WorkerSeen] | None = None) -> list[WorkerSeen]:
    """Read every worker's state and write the dataset's progress.json (unless the manifest stage may have
    begun: that stage writes it). Returns what was read, for the next call's `before`. A worker whose
    state cannot be read keeps what `before` held."""
    seen: list[WorkerSeen] = []
    for worker in range(area.workers):
        prev = before[worker] if before is not None else None
        try:
            seen.append(read_worker(area, worker, prev))
        except (StoreError, ValueError) as exc:  # ValueError: a commit marker that is not JSON
            log.warning("prepare: cannot read worker %d's state: %s", worker, exc)
            seen.append(prev or WorkerSeen(worker))
    if not manifest_started(area.workers, seen):
        progress = merge_progress(area.workers, seen, counts_of, rfc3339(datetime.now(UTC)))
        write_json_atomic(store, join_key(prefix, PROGRESS_NAME), progress.to_wire())
    return seen


class LiveProgress:
    """Worker 0's merger: the dataset's progress.json rewritten from every worker's state in a background
    thread, every progress interval (longer with many workers: each merge reads every worker's state)."""

    def __init__(self, store: ObjectStore, prefix: str, area: WorkArea, counts_of: CountsOf,
                 interval: float) -> None:
        self.store, self.prefix, self.area, self.counts_of = store, prefix, area, counts_of
        self.interval = max(interval, area.workers / WORKERS_PER_SECOND)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prepare-progress", daemon=True)

    def start(self) -> None:
        """Start merging."""
        self._thread.start()

    def stop(self) -> None:
        """Stop merging; returns once a merge under way has written (so nothing of it lands later)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        seen: list[WorkerSeen] | None = None
        while not self._stop.wait(self.interval):
            try:
                seen = publish_merged(self.store, self.prefix, self.area, self.counts_of, seen)
            except StoreError as exc:  # the next interval tries again; the workers' own work goes on
                log.warning("prepare: cannot write the merged progress.json: %s", exc)
