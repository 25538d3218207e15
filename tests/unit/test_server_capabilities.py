"""Issue 20 item 3: which Kubernetes versions lack which capability Forge uses, read from what `/version`
answers, and the message the operator posts (and logs) at start-up naming each one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from forge_operator.handlers.replica import pod_event
from forge_operator.plan.capabilities import (
    CAPABILITIES,
    describe_missing,
    missing_capabilities,
    parse_server_version,
)

ALL = {"crd-validation-rules", "job-suspend", "indexed-jobs", "hpa-autoscaling-v2"}


@pytest.mark.parametrize(("minor", "missing"), [
    (20, ALL),
    (21, ALL),  # Job suspend and Indexed Jobs are alpha in 1.21: off unless the cluster turns their gates on
    (22, {"crd-validation-rules", "hpa-autoscaling-v2"}),
    (23, {"crd-validation-rules"}),
    (24, {"crd-validation-rules"}),  # validation rules are alpha (off) before 1.25
    *((m, set()) for m in range(25, 32)),
])
def test_missing_capabilities_by_version(minor: int, missing: set[str]) -> None:
    assert {c.name for c in missing_capabilities((1, minor))} == missing


@pytest.mark.parametrize(("answer", "version"), [
    ({"major": "1", "minor": "20", "gitVersion": "v1.20.15"}, (1, 20)),
    ({"major": "1", "minor": "24+", "gitVersion": "v1.24.17-eks-c12679a"}, (1, 24)),
    ({"major": "1", "minor": "27+"}, (1, 27)),  # some distributions leave gitVersion out
    ({"gitVersion": "v1.31.0+k3s1"}, (1, 31)),
    ({"major": "", "minor": "", "gitVersion": "unknown"}, None),
    ({}, None),
    ({"gitVersion": ["v1.30.0"], "minor": None}, None),  # hostile: not a version at all
])
def test_the_server_version_is_read_from_what_version_answers(answer: dict[str, object],
                                                             version: tuple[int, int] | None) -> None:
    assert parse_server_version(answer) == version


def test_the_message_names_each_missing_capability_and_what_it_means() -> None:
    message = describe_missing((1, 20), missing_capabilities((1, 20)))
    assert message.startswith("Kubernetes 1.20 is older than 1.25")
    for capability in CAPABILITIES:
        assert f"[{capability.name}]" in message and capability.without in message
    assert "InvalidSpec" in message and "deletes its Job" in message
    assert len(message.encode()) <= 1024  # what an Event's message may hold
    assert "[job-suspend]" not in describe_missing((1, 24), missing_capabilities((1, 24)))


def test_the_event_is_a_warning_about_the_operators_own_pod() -> None:
    pod = {"name": "forge-forge-operator-7d9f-abcde", "namespace": "forge-system", "uid": "u-1"}
    event = pod_event(pod, "MissingCapabilities", "Kubernetes 1.20 ...", datetime(2026, 1, 1, tzinfo=UTC))
    assert event["type"] == "Warning" and event["reason"] == "MissingCapabilities"
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": pod["name"],
                                       "namespace": "forge-system", "uid": "u-1"}  # kubectl describe pod finds it
    assert event["metadata"] == {"name": f"{pod['name']}.missingcapabilities", "namespace": "forge-system"}
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-01-01T00:00:00Z"
