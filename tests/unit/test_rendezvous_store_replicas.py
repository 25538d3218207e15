"""A training run's rendezvous store holds a pod only while the run may train: none once the run has
Succeeded or Failed, none while it is held (spec.suspend, a spent GPU budget), one again on resume."""

from __future__ import annotations

from typing import Any

import pytest

from forge_operator.api import ForgeTrainingRun
from forge_operator.api.training import RunPhase
from forge_operator.plan.training import ResolvedRefs, plan_training_run
from forge_operator.render.training import render_training
from forge_operator.settings import OperatorSettings
from forge_operator.status.run_job import store_replicas

SETTINGS = OperatorSettings(store_endpoint="minio.storage:9000", store_secure=False, store_bucket="acme-forge")
REFS = ResolvedRefs(dataset_manifest="s3://acme-forge/forge/ml/forgedataset/corpus/u9/manifest.json")


def _run() -> ForgeTrainingRun:
    return ForgeTrainingRun.model_validate({
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
        "metadata": {"name": "base", "namespace": "ml", "uid": "run-uid"},
        "spec": {"stage": "pretrain", "datasetRef": "corpus", "model": {"size": "tiny"}}})


def _store(replicas: int) -> dict[str, Any]:
    rendered = render_training(plan_training_run(_run(), SETTINGS, REFS, rdzv_replicas=replicas))
    return next(m for m in rendered if m["kind"] == "Deployment")


@pytest.mark.parametrize("phase", [None, RunPhase.PENDING, RunPhase.RUNNING, RunPhase.SUSPENDED])
def test_a_run_that_may_train_has_one_store_pod(phase: RunPhase | None) -> None:
    # Suspended without a hold is a Kueue queue waiting to admit the Job: it may start any moment
    assert store_replicas(phase, held=False) == 1


@pytest.mark.parametrize("phase", [RunPhase.SUCCEEDED, RunPhase.FAILED])
def test_a_settled_run_has_no_store_pod(phase: RunPhase) -> None:
    assert store_replicas(phase, held=False) == 0
    assert store_replicas(phase, held=True) == 0


@pytest.mark.parametrize("phase", [None, RunPhase.PENDING, RunPhase.RUNNING, RunPhase.SUSPENDED])
def test_a_held_run_has_no_store_pod(phase: RunPhase | None) -> None:
    assert store_replicas(phase, held=True) == 0


def test_the_store_deployment_renders_the_planned_pods_and_nothing_else_changes() -> None:
    running, stopped = _store(1), _store(0)
    assert running["spec"]["replicas"] == 1 and stopped["spec"]["replicas"] == 0
    # the same Deployment otherwise: scaling it back up brings the same store back
    assert {**stopped, "spec": {**stopped["spec"], "replicas": 1}} == running
    assert plan_training_run(_run(), SETTINGS, REFS).rdzv_replicas == 1  # the local runner and preview
