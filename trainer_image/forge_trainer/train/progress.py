"""What rank 0 reports while training: progress.json in the store (atomically, throttled), a step
log (logs/steps-NNNNNNNN.jsonl: a file per start of the run, named after the step it starts from,
and a new one, named after its first step, every 1000 steps), and Prometheus metrics on a port."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from forge_trainer.config import TrainProgress
from forge_trainer.config.store import LOGS_DIR, PROGRESS_NAME
from forge_trainer.config.wire import rfc3339
from forge_trainer.store import ObjectStore, StoreError, join_key, read_json, write_json_atomic

log = logging.getLogger(__name__)

LOG_SEGMENT_STEPS = 1000

_GAUGES = {
    "step": "Optimizer steps completed",
    "total_steps": "Steps the run will take",
    "tokens_seen": "Training tokens consumed",
    "loss": "Latest training loss",
    "eval_loss": "Latest validation loss",
    "tokens_per_second": "Training throughput across all workers",
    "mfu": "Model FLOPs utilisation estimate (0..1)",
    "world_size": "Workers in the current group",
    "restarts": "Times the worker group re-formed",
    "mean_reward": "Mean reward of the latest RL step",
    "success_rate": "Share of the latest RL step's completions that passed their verifier",
    "kl": "KL to the reference model in the latest RL step",
    "completion_length": "Mean completion length in tokens in the latest RL step",
    "clip_fraction": "Share of the latest RL step's completion tokens whose ratio was clipped",
}


def read_progress(store: ObjectStore, prefix: str) -> TrainProgress | None:
    """The progress.json under `prefix`, if there is a readable one."""
    key = join_key(prefix, PROGRESS_NAME)
    try:
        if not store.exists(key):
            return None
        return TrainProgress.model_validate(read_json(store, key))
    except (StoreError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", store.uri(key), exc)
        return None


class _Writer:
    """One background thread that performs the store writes of the latest snapshot handed to it, so
    training never waits on S3 or fsync; a failed write is raised in the training thread at the next
    hand-over (never swallowed)."""

    IDLE_SECONDS = 5.0

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._pending: Callable[[], None] | None = None
        self._busy = False
        self._error: BaseException | None = None
        self._running = False  # the thread ends after IDLE_SECONDS without work; a hand-over restarts it

    def submit(self, write: Callable[[], None], wait: bool) -> None:
        """Hand over `write` (replacing a not yet started one); with `wait`, return once it is done."""
        with self._cv:
            self._raise()
            self._pending = write
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="forge-progress-writer", daemon=True).start()
            self._cv.notify_all()
            if wait:
                while self._pending is not None or self._busy:
                    self._cv.wait()
                self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            with self._cv:
                if self._pending is None:
                    self._cv.wait(timeout=self.IDLE_SECONDS)
                if self._pending is None:
                    self._running = False
                    return
                write, self._pending, self._busy = self._pending, None, True
            try:
                write()
            except BaseException as exc:
                with self._cv:
                    self._error = exc
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()


class ProgressReporter:
    """Rank 0's progress.json, step log and /metrics; every method is a no-op on other ranks.

    Throttled writes happen in a background thread; forced ones (checkpoints, the end, errors) and
    `flush()` wait until they are in the store."""

    def __init__(self, store: ObjectStore, prefix: str, enabled: bool, progress: TrainProgress,
                 metrics_port: int = 0, min_interval: float = 1.0, segment_steps: int = LOG_SEGMENT_STEPS) -> None:
        self.store, self.prefix, self.enabled = store, prefix, enabled
        self._progress = progress
        self._changes: dict[str, Any] = {}
        self.min_interval = min_interval
        self.segment_steps = segment_steps
        self._last_write = 0.0
        self._log_key = join_key(prefix, LOGS_DIR, f"steps-{progress.step:08d}.jsonl")
        self._log_lines: list[bytes] = []
        self._rotate = False
        self._gauges: dict[str, Any] = {}
        self._writer = _Writer() if enabled else None
        if enabled and metrics_port:
            self._serve_metrics(metrics_port)

    @property
    def progress(self) -> TrainProgress:
        """The progress as of the latest update."""
        if self._changes:
            self._progress = self._progress.model_copy(update=self._changes)
            self._changes = {}
        return self._progress

    def _serve_metrics(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        registry = CollectorRegistry()
        self._gauges = {name: Gauge(f"forge_train_{name}", doc, registry=registry) for name, doc in _GAUGES.items()}
        try:
            start_http_server(port, registry=registry)
        except OSError as exc:  # metrics are best effort; training goes on without them
            log.warning("cannot serve metrics on port %d: %s", port, exc)
        self._set_gauges(self.progress.model_dump())

    def _set_gauges(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            gauge = self._gauges.get(name)
            if gauge is not None and isinstance(value, int | float):
                gauge.set(value)

    def update(self, force: bool = False, step_record: dict[str, Any] | None = None,
               step_records: Sequence[dict[str, Any]] = (), **fields: Any) -> None:
        """Apply `fields` to the progress; append `step_record` (or several, `step_records`) to the step
        log; write both when `force` (waiting for the write) or at most every `min_interval` seconds (in
        the background)."""
        if not self.enabled:
            return
        self._changes.update(fields)
        for record in (*step_records, *((step_record,) if step_record is not None else ())):
            if self._rotate:  # a new segment, named after its first step
                self._log_key = join_key(self.prefix, LOGS_DIR, f"steps-{int(record['step']):08d}.jsonl")
                self._rotate = False
            self._log_lines.append(json.dumps(record, sort_keys=True).encode() + b"\n")
            if len(self._log_lines) >= self.segment_steps:
                self.flush(wait=True)  # rotates: the segment is complete
        self._set_gauges(fields)
        now = time.monotonic()
        if force or now - self._last_write >= self.min_interval:
            self.flush(wait=force)
            self._last_write = now

    def flush(self, wait: bool = True) -> None:
        """Write progress.json and the step log (and, with `wait`, return once they are stored)."""
        if not self.enabled or self._writer is None:
            return
        self._progress = self.progress.model_copy(update={"updated_at": rfc3339(datetime.now(UTC))})
        wire = self._progress.to_wire()
        log_key, log_bytes = self._log_key, b"".join(self._log_lines)
        if len(self._log_lines) >= self.segment_steps:  # bound what each write rewrites
            self._log_lines = []
            self._rotate = True
            wait = True  # a later hand-over must not replace this segment's last write

        def write() -> None:
            if log_bytes:
                self.store.put_bytes(log_key, log_bytes, content_type="application/x-ndjson")
            write_json_atomic(self.store, join_key(self.prefix, PROGRESS_NAME), wire)

        self._writer.submit(write, wait)


def read_step_log(store: ObjectStore, prefix: str) -> dict[int, dict[str, Any]]:
    """Every step record of a run by step; a step trained again after a restart keeps its latest record."""
    records: dict[int, dict[str, Any]] = {}
    for obj in store.list(join_key(prefix, LOGS_DIR) + "/"):
        for line in store.get_bytes(obj.key).splitlines():
            if line.strip():
                rec = json.loads(line)
                step = int(rec["step"])
                if step not in records or rec.get("time", 0) >= records[step].get("time", 0):
                    records[step] = rec
    return records
