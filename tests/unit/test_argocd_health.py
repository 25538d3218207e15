"""The ArgoCD health check (deploy/argocd/health.lua), run with a real Lua (lupa) on statuses the
operator's own status functions produce, as ArgoCD runs it: `obj` is the live object.
tests/integration/test_chart_install.py runs it on statuses read back from a real API server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import yaml

from forge_operator.api.common import Condition, ConditionStatus
from forge_operator.api.dataset import ForgeDatasetStatus
from forge_operator.api.deployment import DeploymentPhase, ForgeDeploymentStatus
from forge_operator.api.training import ForgeTrainingRunStatus, RunPhase
from forge_operator.status.dataset import DatasetObservation, derive_dataset_status
from forge_operator.status.job import JobObservation
from tests.support.argocd import ARGOCD, argocd_health

NOW = "2026-01-01T00:00:00Z"


def resource(kind: str, status: Any, generation: int = 1) -> dict[str, Any]:
    """The object as the API server returns it, with the status the operator would write."""
    body = {"apiVersion": "forge.ai/v1alpha1", "kind": kind, "metadata": {"name": "x", "generation": generation}}
    if status is not None:
        body["status"] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    return body


def dataset_status(**obs: Any) -> ForgeDatasetStatus:
    status, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(1, **obs), datetime(2026, 1, 1, tzinfo=UTC))
    return status


def cond(type_: str, status: str, message: str) -> Condition:
    return Condition(type=type_, status=ConditionStatus(status), reason="R", message=message,
                     last_transition_time=NOW, observed_generation=1)


def test_dataset_from_the_operators_status_functions() -> None:
    assert argocd_health(resource("ForgeDataset", None))["status"] == "Progressing"
    running = dataset_status(job_name="j", output_uri="s3://b/p", job=JobObservation(active=1))
    assert running.phase and argocd_health(resource("ForgeDataset", running))["status"] == "Progressing"
    invalid = dataset_status(spec_error="spec.source.uri: must be s3://")
    health = argocd_health(resource("ForgeDataset", invalid))
    assert health["status"] == "Degraded" and "spec.source.uri" in health["message"]
    failed = dataset_status(job_name="j", output_uri="s3://b/p", job=JobObservation(failed=3, failed_final=True))
    assert failed.phase == "Failed" and argocd_health(resource("ForgeDataset", failed))["status"] == "Degraded"


def test_a_spec_change_not_yet_observed_is_progressing() -> None:
    failed = dataset_status(job_name="j", output_uri="s3://b/p", job=JobObservation(failed=3, failed_final=True))
    health = argocd_health(resource("ForgeDataset", failed, generation=2))
    assert health["status"] == "Progressing" and "generation 2" in health["message"]


def test_training_run_phases_and_stall() -> None:
    expected = {RunPhase.PENDING: "Progressing", RunPhase.RUNNING: "Progressing", RunPhase.SUSPENDED: "Suspended",
                RunPhase.SUCCEEDED: "Healthy", RunPhase.FAILED: "Degraded"}
    assert set(expected) == set(RunPhase)
    for phase, state in expected.items():
        status = ForgeTrainingRunStatus(phase=phase, observed_generation=1,
                                        conditions=[cond("Ready", "True" if state == "Healthy" else "False", f"{phase}")])
        assert argocd_health(resource("ForgeTrainingRun", status)) == {"status": state, "message": str(phase)}
    stalled = ForgeTrainingRunStatus(phase=RunPhase.RUNNING, observed_generation=1,
                                     conditions=[cond("Ready", "False", "running"),
                                                 cond("Stalled", "True", "no step for 30m")])
    assert argocd_health(resource("ForgeTrainingRun", stalled)) == {"status": "Degraded", "message": "no step for 30m"}


def test_deployment_phases() -> None:
    expected = {DeploymentPhase.PENDING: "Progressing", DeploymentPhase.PROGRESSING: "Progressing",
                DeploymentPhase.AVAILABLE: "Healthy", DeploymentPhase.FAILED: "Degraded"}
    assert set(expected) == set(DeploymentPhase)
    for phase, state in expected.items():
        status = ForgeDeploymentStatus(phase=phase, observed_generation=1)
        assert argocd_health(resource("ForgeDeployment", status))["status"] == state


def test_argocd_cm_carries_the_script_for_each_kind() -> None:
    data = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())["data"]
    script = (ARGOCD / "health.lua").read_text()
    assert data == {f"resource.customizations.health.forge.ai_{k}": script
                    for k in ("ForgeDataset", "ForgeTrainingRun", "ForgeDeployment")}
