"""The pure parts of the guards against two reconciles of one object acting at once (issue #20, item 7):
which attempt a run's status makes current (the only Job a reconcile may create), which status patch
advances a guarded field, the per-object reconcile lock, and what an older API server dropped from a
create. tests/integration/test_reconcile_races.py runs them together against the API server."""

from __future__ import annotations

import threading

import pytest

from forge_operator.api.training import ForgeTrainingRunStatus
from forge_operator.handlers.reconcile import gate
from forge_operator.handlers.runtime import guarded_advance
from forge_operator.kube.client import fields_dropped
from forge_operator.status.run_job import current_attempt, stale_attempt


@pytest.mark.parametrize(("status", "attempt"), [
    (ForgeTrainingRunStatus(), 0),
    (ForgeTrainingRunStatus(attempt=2, restarts=1), 2),
    (ForgeTrainingRunStatus(restarts=3), 3),  # written before attempts were recorded: one Job per restart
])
def test_the_current_attempt_comes_from_status(status: ForgeTrainingRunStatus, attempt: int) -> None:
    assert current_attempt(status) == attempt


def test_creating_an_attempt_the_status_has_moved_past_is_stale() -> None:
    assert stale_attempt(1, ForgeTrainingRunStatus(attempt=1)) is None
    assert stale_attempt(0, ForgeTrainingRunStatus()) is None
    assert stale_attempt(1, ForgeTrainingRunStatus(attempt=2)) == \
        "status.attempt is 2 now, this reconcile planned attempt 1"


@pytest.mark.parametrize(("old", "patch", "guarded"), [
    ({"attempt": 1, "phase": "Running"}, {"attempt": 2}, "attempt"),
    ({"attempt": 1}, {"attempt": None}, "attempt"),
    ({"phase": "Pending"}, {"attempt": 0, "phase": "Running"}, None),  # the first attempt is set, not advanced
    ({"attempt": 1, "step": 3}, {"step": 4}, None),
    ({"phase": "Ready"}, {"phase": "Failed"}, None),  # kinds without an attempt
])
def test_only_an_advance_of_the_attempt_is_guarded(old: dict[str, object], patch: dict[str, object],
                                                    guarded: str | None) -> None:
    assert guarded_advance(old, patch) == guarded


def test_one_lock_per_object_while_anyone_holds_it() -> None:
    held = gate("uid-a")
    assert gate("uid-a") is held
    assert gate("uid-b") is not held
    assert held.lock.acquire(blocking=False)
    try:
        # another thread reconciling the same object waits (a tick skips); another object does not
        same, other = [], []
        probe = threading.Thread(target=lambda: (same.append(gate("uid-a").lock.acquire(blocking=False)),
                                                 other.append(gate("uid-b").lock.acquire(blocking=False))))
        probe.start()
        probe.join()
        assert (same, other) == ([False], [True])
    finally:
        held.lock.release()


def test_fields_an_older_api_server_dropped_from_a_create_are_named() -> None:
    sent = {"completionMode": "Indexed", "completions": 2, "suspend": False, "selector": {},
            "template": {"spec": {"containers": [{"name": "trainer", "args": [], "workingDir": "/w"}]}}}
    live = {"completions": 2, "backoffLimit": 6,
            "template": {"spec": {"containers": [{"name": "trainer", "imagePullPolicy": "IfNotPresent"}]}}}
    assert fields_dropped(sent, live, ".spec") == [".spec.completionMode",
                                                   ".spec.template.spec.containers[0].workingDir"]
    assert fields_dropped(sent, sent, ".spec") == []
