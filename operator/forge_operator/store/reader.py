"""Store reads that a reconcile waits on only briefly. Reads run on a bounded thread pool; the reconcile
waits at most `deadline` seconds for an answer. An endpoint that fails or does not answer is left alone
for a backoff that doubles up to a cap (a circuit breaker: one probe at a time once it is open), so a dead
store costs every reconcile at most one deadline, and most of them nothing."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar

from forge_operator.status.conditions import StoreCheck
from forge_operator.store.connection import scrub
from forge_trainer.store import StoreError

T = TypeVar("T")
log = logging.getLogger("forge.operator")


class StoreAnswered(StoreError):
    """The store answered, but what it holds is unusable (e.g. a progress file that does not parse): the
    store is reachable, the read still failed."""


@dataclass
class _Breaker:
    failures: int = 0
    retry_at: float = 0.0
    reason: str = ""
    error: str = ""
    in_flight: int = 0
    """Reads of this endpoint still running (a timed-out read keeps its thread until the client gives up)."""


class StoreReader:
    """Runs store reads off the reconcile's thread with a deadline, and backs off from failing endpoints."""

    def __init__(self, *, deadline: float = 3.0, backoff: float = 5.0, max_backoff: float = 120.0,
                 workers: int = 32, clock: Callable[[], float] = time.monotonic) -> None:
        """`deadline`: the longest a reconcile waits for one read; `backoff`: the first pause after a
        failure (doubling up to `max_backoff`); `workers`: reads in flight at most."""
        self.deadline = deadline
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forge-store-read")
        self._lock = threading.Lock()
        self._breakers: dict[str, _Breaker] = {}

    def read(self, endpoint: str, fn: Callable[[], T]) -> tuple[T | None, StoreCheck]:
        """`fn()` run on the pool, and how the store answered. While `endpoint` is backing off (or its probe
        is still running) nothing is run and the last failure is returned with `attempted=False`.
        StoreAnswered propagates (the store is reachable); any other error is a failed check."""
        with self._lock:
            breaker = self._breakers.setdefault(endpoint, _Breaker())
            if breaker.failures and (self._clock() < breaker.retry_at or breaker.in_flight):
                return None, StoreCheck(False, endpoint, breaker.reason, breaker.error, attempted=False)
            breaker.in_flight += 1
        future = self._pool.submit(fn)
        future.add_done_callback(lambda _: self._finished(endpoint))
        try:
            value = future.result(timeout=self.deadline)
        except FutureTimeout:
            return None, self._failed(endpoint, "NoAnswer", f"no answer within {self.deadline:g}s")
        except StoreAnswered:
            self._succeeded(endpoint)
            raise
        except Exception as exc:  # any failure of the client is the store's state, reported in status
            reason = str(getattr(getattr(exc, "__cause__", None), "code", None) or "Unreachable")
            return None, self._failed(endpoint, reason if reason.isalnum() else "Unreachable", str(exc))
        self._succeeded(endpoint)
        return value, StoreCheck(True, endpoint)

    def breaker_open(self, endpoint: str) -> bool:
        """Whether reads of `endpoint` are backing off now."""
        with self._lock:
            breaker = self._breakers.get(endpoint)
            return breaker is not None and breaker.failures > 0

    def shutdown(self) -> None:
        """Stop taking reads; running ones finish on their own (bounded by the client's timeouts)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _finished(self, endpoint: str) -> None:
        with self._lock:
            self._breakers[endpoint].in_flight -= 1

    def _succeeded(self, endpoint: str) -> None:
        with self._lock:
            breaker = self._breakers[endpoint]
            if breaker.failures:
                log.info("object store %s answers again after %d failed reads", endpoint, breaker.failures)
            breaker.failures, breaker.reason, breaker.error = 0, "", ""

    def _failed(self, endpoint: str, reason: str, error: str) -> StoreCheck:
        error = scrub(error)
        with self._lock:
            breaker = self._breakers[endpoint]
            breaker.failures += 1
            pause = min(self.backoff * 2 ** (breaker.failures - 1), self.max_backoff)
            breaker.retry_at = self._clock() + pause
            breaker.reason, breaker.error = reason, error
            failures = breaker.failures
        log.warning("object store %s: %s (failure %d; next read in %.0fs)", endpoint, error, failures, pause)
        return StoreCheck(False, endpoint, reason, error)

