"""What rank 0 reports while training: progress.json in the store (atomically, throttled), a step
log (logs/steps-NNNNNNNN.jsonl: a file per start of the run, named after the step it starts from,
and a new one, named after its first step, every 1000 steps), and Prometheus metrics on a port."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from forge_trainer.config import TrainProgress
from forge_trainer.store import ObjectStore, StoreError, join_key, read_json, write_json_atomic

log = logging.getLogger(__name__)

PROGRESS_NAME = "progress.json"
LOGS_DIR = "logs"
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


class ProgressReporter:
    """Rank 0's progress.json, step log and /metrics; every method is a no-op on other ranks."""

    def __init__(self, store: ObjectStore, prefix: str, enabled: bool, progress: TrainProgress,
                 metrics_port: int = 0, min_interval: float = 1.0, segment_steps: int = LOG_SEGMENT_STEPS) -> None:
        self.store, self.prefix, self.enabled = store, prefix, enabled
        self.progress = progress
        self.min_interval = min_interval
        self.segment_steps = segment_steps
        self._last_write = 0.0
        self._log_key = join_key(prefix, LOGS_DIR, f"steps-{progress.step:08d}.jsonl")
        self._log_lines: list[bytes] = []
        self._rotate = False
        self._gauges: dict[str, Any] = {}
        if enabled and metrics_port:
            self._serve_metrics(metrics_port)

    def _serve_metrics(self, port: int) -> None:
        from prometheus_client import CollectorRegistry, Gauge, start_http_server

        registry = CollectorRegistry()
        self._gauges = {name: Gauge(f"forge_train_{name}", doc, registry=registry) for name, doc in _GAUGES.items()}
        try:
            start_http_server(port, registry=registry)
        except OSError as exc:  # metrics are best effort; training goes on without them
            log.warning("cannot serve metrics on port %d: %s", port, exc)
        self._refresh_gauges()

    def _refresh_gauges(self) -> None:
        for name, gauge in self._gauges.items():
            value = getattr(self.progress, name)
            if value is not None:
                gauge.set(value)

    def update(self, force: bool = False, step_record: dict[str, Any] | None = None, **fields: Any) -> None:
        """Apply `fields` to the progress; append `step_record` to the step log; write both when
        `force` or at most every `min_interval` seconds."""
        if not self.enabled:
            return
        self.progress = self.progress.model_copy(update=fields)
        if step_record is not None:
            if self._rotate:  # a new segment, named after its first step
                self._log_key = join_key(self.prefix, LOGS_DIR, f"steps-{int(step_record['step']):08d}.jsonl")
                self._rotate = False
            self._log_lines.append(json.dumps(step_record, sort_keys=True).encode() + b"\n")
        self._refresh_gauges()
        now = time.monotonic()
        if force or now - self._last_write >= self.min_interval:
            self.flush()
            self._last_write = now

    def flush(self) -> None:
        """Write progress.json and the step log now."""
        if not self.enabled:
            return
        self.progress.updated_at = datetime.now(UTC).isoformat()
        if self._log_lines:
            self.store.put_bytes(self._log_key, b"".join(self._log_lines), content_type="application/x-ndjson")
            if len(self._log_lines) >= self.segment_steps:  # bound what each flush rewrites
                self._log_lines = []
                self._rotate = True
        write_json_atomic(self.store, join_key(self.prefix, PROGRESS_NAME), self.progress.to_wire())


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
