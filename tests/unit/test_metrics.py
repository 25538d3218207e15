"""The operator's scrape-time per-resource series (what a Prometheus scrape of the operator shows)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import generate_latest

from forge_operator import metrics


@pytest.fixture(autouse=True)
def _unknown_leadership() -> Iterator[None]:
    """Each test starts as a fresh process does (leadership unknown), whatever an earlier test in this
    process recorded (an operator started in-process records whether it leads)."""
    metrics.set_leading(None)
    yield
    metrics.set_leading(None)


def test_run_series_follow_the_status_and_vanish_on_delete() -> None:
    # runs other tests in this process observed are counted too: count this one as the difference
    running = {"kind": "ForgeTrainingRun", "phase": "Running"}
    before = metrics.REGISTRY.get_sample_value("forge_resources", running) or 0.0
    metrics.observe("ForgeTrainingRun", "ml", "llama", {"phase": "Running", "step": 40, "gpuHours": 12.5,
                                                        "mfu": 0.41})
    text = generate_latest(metrics.REGISTRY).decode()
    labels = 'name="llama",namespace="ml"'
    assert f"forge_run_step{{{labels}}} 40.0" in text
    assert f"forge_run_gpu_hours{{{labels}}} 12.5" in text
    assert f"forge_run_mfu{{{labels}}} 0.41" in text
    assert metrics.REGISTRY.get_sample_value("forge_resources", running) == before + 1
    metrics.forget("ForgeTrainingRun", "ml", "llama")
    assert "forge_run_gpu_hours{" not in generate_latest(metrics.REGISTRY).decode()


def _scrape() -> str:
    return generate_latest(metrics.REGISTRY).decode()


def test_every_replica_says_whether_it_leads_and_only_the_leader_serves_the_resources() -> None:
    """Issue 20 item 9: a replica that waits serves forge_leader 0 and its own counters, not a frozen view of
    the resources that would sit beside the leader's values."""
    metrics.observe("ForgeDataset", "ml", "corpus", {"phase": "Ready", "counts": {"tokens": 900}})
    try:
        metrics.set_leading(True)
        text = _scrape()
        assert "forge_leader 1.0" in text
        assert 'forge_dataset_tokens{name="corpus",namespace="ml"} 900.0' in text
        assert metrics.REGISTRY.get_sample_value("forge_resources", {"kind": "ForgeDataset", "phase": "Ready"})
        metrics.set_leading(False)
        text = _scrape()
        assert "forge_leader 0.0" in text
        assert "forge_dataset_tokens{" not in text and "forge_resources{" not in text
        assert "# TYPE forge_reconcile_total counter" in text  # its own counters are still there
        metrics.set_leading(True)  # leading again: the view is served again
        assert 'forge_dataset_tokens{name="corpus",namespace="ml"} 900.0' in _scrape()
        metrics.set_leading(None)  # cannot tell (no peering identity): no gauge, the view as before
        text = _scrape()
        assert "\nforge_leader " not in text and "forge_dataset_tokens{" in text
    finally:
        metrics.forget("ForgeDataset", "ml", "corpus")
        metrics.set_leading(None)


def test_missing_server_capabilities_are_a_gauge_per_capability() -> None:
    try:
        metrics.set_server_capabilities({"crd-validation-rules": True, "job-suspend": False})
        text = _scrape()
        assert 'forge_server_capability_missing{capability="crd-validation-rules"} 1.0' in text
        assert 'forge_server_capability_missing{capability="job-suspend"} 0.0' in text
    finally:
        metrics.set_server_capabilities({})
