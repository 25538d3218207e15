"""The operator's store reads back off from a failing endpoint, and a store that cannot be read shows as
StoreReachable=False without failing or restarting anything whose outcome is in the store."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest

from forge_operator import metrics
from forge_operator.api.dataset import DatasetPhase, ForgeDatasetStatus
from forge_operator.api.training import ForgeTrainingRunStatus, RunPhase
from forge_operator.status.conditions import Action, StoreCheck, get_condition
from forge_operator.status.dataset import DatasetObservation, derive_dataset_status
from forge_operator.status.job import JobObservation, observe_job
from forge_operator.status.training import RunObservation, derive_run_status
from forge_operator.store.connection import scrub
from forge_operator.store.reader import StoreAnswered, StoreReader
from forge_trainer.config import TrainProgress
from forge_trainer.store import SECRET_KEY_ENV, StoreError

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DOWN = StoreCheck(False, "http://minio:9000", "Unreachable", "s3://b/p/progress.json: MaxRetryError: refused")
UP = StoreCheck(True, "http://minio:9000")


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _failing() -> None:
    raise StoreError("s3://b/p/progress.json: MaxRetryError: connection refused")


def test_a_failing_endpoint_is_left_alone_for_a_doubling_backoff_and_recovers() -> None:
    clock = Clock()
    reader = StoreReader(deadline=1.0, backoff=5.0, max_backoff=20.0, workers=2, clock=clock)
    calls: list[str] = []

    def fail() -> None:
        calls.append("x")
        _failing()

    value, check = reader.read("http://s", fail)
    assert value is None and not check.reachable and check.attempted and check.reason == "Unreachable"
    assert "connection refused" in check.error
    for pause in (5.0, 10.0, 20.0, 20.0):  # doubling, capped
        clock.now += pause - 0.1
        _, skipped = reader.read("http://s", fail)
        assert not skipped.attempted and skipped.error == check.error
        clock.now += 0.1
        reader.read("http://s", fail)
    assert len(calls) == 5
    # another endpoint is not held back by this one
    assert reader.read("http://other", lambda: 7) == (7, StoreCheck(True, "http://other"))
    clock.now += 20.0
    assert reader.read("http://s", lambda: 3) == (3, StoreCheck(True, "http://s"))
    assert not reader.breaker_open("http://s")


def test_a_read_past_the_deadline_returns_and_no_second_read_piles_up_behind_it() -> None:
    clock = Clock()
    reader = StoreReader(deadline=0.2, backoff=0.0, workers=4, clock=clock)
    release = threading.Event()
    value, check = reader.read("http://hang", lambda: release.wait(10))
    assert value is None and check.reason == "NoAnswer" and "no answer within 0.2s" in check.error
    # backoff 0, but the probe still hangs: nothing more is sent to that endpoint
    _, again = reader.read("http://hang", lambda: pytest.fail("a second read was sent to a hanging store"))
    assert not again.attempted
    release.set()
    reader.shutdown()


def test_an_unreadable_file_is_not_an_unreachable_store() -> None:
    reader = StoreReader(deadline=1.0)

    def bad() -> None:
        raise StoreAnswered("s3://b/p/progress.json: unreadable progress file")

    with pytest.raises(StoreAnswered):
        reader.read("http://s", bad)
    assert not reader.breaker_open("http://s")


def test_credentials_never_reach_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, "s3cr3t-value")
    assert scrub("signature for s3cr3t-value did not match") == "signature for *** did not match"
    reader = StoreReader(deadline=1.0)

    def leaky() -> None:
        raise StoreError("auth failed with secret s3cr3t-value")

    _, check = reader.read("http://s", leaky)
    assert "s3cr3t-value" not in check.error


def test_store_reachable_condition_names_the_endpoint_and_does_not_churn() -> None:
    running = observe_job({"status": {"active": 1}})
    s1, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(1, job=running, store=UP), T0)
    cond = get_condition(s1.conditions, "StoreReachable")
    assert cond is not None and cond.status.value == "True" and "http://minio:9000" in cond.message
    s2, _ = derive_dataset_status(s1, DatasetObservation(1, job=running, store=DOWN), T0 + timedelta(seconds=10))
    s3, _ = derive_dataset_status(s2, DatasetObservation(1, job=running, store=DOWN), T0 + timedelta(seconds=20))
    cond = get_condition(s3.conditions, "StoreReachable")
    assert cond is not None and cond.status.value == "False" and cond.reason == "Unreachable"
    assert "http://minio:9000" in cond.message and "refused" in cond.message
    assert s2 == s3  # a store that stays down costs one status write
    # nothing read, nothing said
    s4, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(1, job=running), T0)
    assert get_condition(s4.conditions, "StoreReachable") is None


def test_a_finished_dataset_job_waits_for_the_store_instead_of_failing() -> None:
    complete = observe_job({"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}})
    s, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(1, job_name="d", job=complete, store=DOWN), T0)
    assert s.phase is DatasetPhase.RUNNING and "once the object store answers" in (s.message or "")
    s, _ = derive_dataset_status(s, DatasetObservation(1, job_name="d", job=complete, store=UP), T0)
    assert s.phase is DatasetPhase.FAILED  # answered, and no manifest: now it is known


def _run(job: JobObservation, progress: TrainProgress | None, store: StoreCheck | None) -> RunObservation:
    return RunObservation(1, job_name="r-train-0", output_uri="s3://b/r", job=job, progress=progress,
                          stall_timeout_seconds=600, store=store)


def test_a_run_is_neither_restarted_nor_failed_while_its_progress_cannot_be_read() -> None:
    active = JobObservation(active=2)
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _run(active, TrainProgress(step=10, total_steps=99), UP), T0)
    # the store goes down for longer than the stall timeout: not a stall
    s, action = derive_run_status(s, _run(active, None, DOWN), T0 + timedelta(seconds=900))
    assert action is Action.NONE and s.phase is RunPhase.RUNNING and s.restarts == 0
    # the Job ends while the store is down: not a failure either
    s, action = derive_run_status(s, _run(JobObservation(complete=True), None, DOWN), T0 + timedelta(seconds=950))
    assert action is Action.NONE and s.phase is RunPhase.RUNNING and "has ended" in (s.message or "")
    done = TrainProgress(step=99, total_steps=99, done=True, final_model_uri="s3://b/r/model")
    s, _ = derive_run_status(s, _run(JobObservation(complete=True), done, UP), T0 + timedelta(seconds=960))
    assert s.phase is RunPhase.SUCCEEDED


def test_the_store_state_is_exported_for_alerting() -> None:
    metrics.store_read("http://dead:9000", False, "NoAnswer")
    metrics.store_read("http://dead:9000", False, None)  # a read skipped while backing off: not a failure
    metrics.store_read("http://live:9000", True, None)
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'forge_store_reachable{endpoint="http://dead:9000"} 0.0' in text
    assert 'forge_store_reachable{endpoint="http://live:9000"} 1.0' in text
    assert 'forge_store_read_failures_total{endpoint="http://dead:9000",reason="NoAnswer"} 1.0' in text
