"""What the data workload tells the world while it runs: progress.json (rewritten atomically every
few seconds) and the audit log (one JSON line per object read and per artifact written)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from forge_trainer.config import DatasetCounts, DatasetProgress
from forge_trainer.config.store import AUDIT_NAME, PROGRESS_NAME
from forge_trainer.config.wire import rfc3339
from forge_trainer.store import ObjectStore, append_jsonl, join_key, write_json_atomic

log = logging.getLogger(__name__)

MAX_EXAMPLES = 5
"""Dropped examples kept per reason."""


class Reporter:
    """Counts, examples, progress.json and the audit log of one prepare run."""

    def __init__(self, store: ObjectStore, prefix: str, interval: float = 5.0,
                 scrub: Callable[[str], str] | None = None) -> None:
        self.store, self.prefix, self.interval = store, prefix, interval
        self.scrub = scrub  # applied to dropped examples, so personal data never reaches the manifest
        self.progress = DatasetProgress()
        self.examples: dict[str, list[str]] = {}
        self._audit: list[dict[str, Any]] = []
        self._last = 0.0

    @property
    def counts(self) -> DatasetCounts:
        """Counts so far."""
        return self.progress.counts

    def drop(self, reason: str, example: str) -> None:
        """Count one dropped record under `reason`, keeping the first few examples."""
        dropped = self.counts.dropped
        dropped[reason] = dropped.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:
            kept.append((self.scrub(example[:400]) if self.scrub else example)[:200])

    def audit(self, event: str, uri: str, sha256: str, size: int) -> None:
        """Record an object read or an artifact written (flushed with the next progress write)."""
        self._audit.append({"time": rfc3339(datetime.now(UTC)), "event": event, "uri": uri, "sha256": sha256,
                            "size": size})

    def stage(self, name: str) -> None:
        """Enter a pipeline stage and say so at once."""
        log.info("prepare: %s", name)
        self.progress.stage = name
        self.flush()

    def tick(self) -> None:
        """Write progress.json (and the audit records so far) if the interval has passed."""
        if time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write progress.json and pending audit records now."""
        if self._audit:
            append_jsonl(self.store, join_key(self.prefix, AUDIT_NAME), self._audit)
            self._audit = []
        self.progress.updated_at = rfc3339(datetime.now(UTC))
        write_json_atomic(self.store, join_key(self.prefix, PROGRESS_NAME), self.progress.to_wire())
        self._last = time.monotonic()
