"""A `loss` eval gate on a run that reported only its training loss (status.loss, no evalMetrics) is
decided the same way by the operator and by `forge run`. It used to pass under `forge run` and wait
forever on a cluster ("loss is missing from the run's evalMetrics")."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from forge_operator.api import ForgeDeployment
from forge_operator.api.deployment import ForgeDeploymentStatus
from forge_operator.handlers.deployment import ADAPTER
from forge_operator.handlers.indexes import cluster_lookup, forge_runs
from forge_operator.handlers.reconcile import Pass
from forge_operator.local.display import PlainDisplay
from forge_operator.local.runner import LocalRunner, RunFailed, RunOptions
from forge_operator.manifests import load_manifests
from forge_operator.status.conditions import get_condition

MODEL = "s3://forge/forge/default/forgetrainingrun/tuned/local/model"
TUNED = {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
         "metadata": {"name": "tuned", "namespace": "default"},
         "spec": {"stage": "pretrain", "datasetRef": "d", "model": {"size": "tiny"}},
         "status": {"phase": "Succeeded", "finalModelUri": MODEL, "loss": 1.2}}


def _deployment(max_loss: float) -> dict[str, Any]:
    return {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDeployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "u-web", "generation": 1},
            "spec": {"modelRef": "tuned", "evalGate": [{"metric": "loss", "max": max_loss}]}}


def _operator(max_loss: float) -> tuple[Any, str]:
    """The operator's deployment reconcile up to what it applies: (its plan or None, the gate message)."""
    index = forge_runs(body=TUNED, namespace="default", name="tuned")  # as Kopf's watch fills the index
    lookup = cluster_lookup("default", {"forge_datasets": {}, "forge_runs": {k: [v] for k, v in index.items()},
                                        "forge_deployments": {}})
    body = _deployment(max_loss)
    rc = Pass(body, ForgeDeployment.model_validate(body), ForgeDeploymentStatus(), 1, datetime.now(UTC))
    resolved = ADAPTER.resolve(rc, lookup)
    return ADAPTER.plan(rc, resolved), resolved.gate.message


def test_operator_serves_when_the_training_loss_passes_and_says_why_when_not() -> None:
    plan, message = _operator(max_loss=2.0)
    assert plan is not None and plan.model_uri == MODEL and message == "eval gate passed (loss)"
    plan, message = _operator(max_loss=1.0)
    assert plan is None and message == "eval gate failed: loss = 1.2 is above the maximum 1"


def test_forge_run_refuses_a_failing_loss_gate_with_the_same_message(tmp_path: Path) -> None:
    (tmp_path / "web.yaml").write_text(yaml.safe_dump(_deployment(max_loss=1.0)))
    [manifest] = load_manifests([tmp_path / "web.yaml"])
    runner = LocalRunner(RunOptions(root=tmp_path / ".forge"), PlainDisplay())
    runner.records[("ForgeTrainingRun", "tuned")] = TUNED
    with pytest.raises(RunFailed) as failed:
        runner.run_deployment(manifest)
    assert str(failed.value) == "ForgeDeployment web: eval gate failed: loss = 1.2 is above the maximum 1"
    saved = ForgeDeploymentStatus.model_validate(runner.records[("ForgeDeployment", "web")]["status"])
    gate = get_condition(saved.conditions, "EvalGatePassed")
    assert gate is not None and gate.status.value == "False" and "loss = 1.2" in gate.message
