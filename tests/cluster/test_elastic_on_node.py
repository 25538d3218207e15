"""Elastic training across Pods: a 2-node ForgeTrainingRun whose torchrun agents meet at the run's own
rendezvous store (a Pod behind a Service, not one of the training pods), then loses a training Pod
abruptly, as a lost node would. The run must go on without the operator recreating its Job: the remaining
agent re-forms the group, training resumes from the latest checkpoint, the Job's replacement Pod joins,
and status says it was a re-form (workerGroupRestarts) and not a new attempt. Prints how long training
stood still."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.cluster import wait_for
from tests.support.node import Install

pytestmark = pytest.mark.cluster


def _status(install: Install) -> dict[str, Any]:
    status = install.cluster.status("forgetrainingruns", "elastic")
    if status.get("phase") in ("Failed", "Stalled"):
        pytest.fail(f"run elastic is {status['phase']}: {status.get('message')}")
    return status


@pytest.mark.timeout(1200)
def test_a_lost_pod_costs_a_re_form_not_a_restart(install: Install, small_notes: str, record_property: Any) -> None:
    from kubernetes import client

    install.cluster.create("forgetrainingruns", {
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun", "metadata": {"name": "elastic"},
        "spec": {"stage": "pretrain", "datasetRef": small_notes,
                 "model": {"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "numKvHeads": 1,
                           "intermediateSize": 64, "maxSeqLen": 32},
                 "hyperparameters": {"maxSteps": 160, "globalBatchSize": 4, "microBatchSize": 2,
                                     "sequenceLength": 32, "evalInterval": 0},
                 "precision": "fp32", "checkpointing": {"interval": 10, "keep": 2},
                 "resources": {"gpusPerNode": 0, "minNodes": 1, "maxNodes": 2, "cpu": "200m", "memory": "2Gi"}}})
    wait_for("two workers past step 20", lambda: (s := _status(install)).get("worldSize") == 2
             and (s.get("step") or 0) >= 20, timeout=600, interval=1)
    core = client.CoreV1Api(install.api)
    pods = [p for p in core.list_namespaced_pod(install.ml, label_selector="job-name=elastic-train-0").items
            if p.status.phase == "Running"]
    assert len(pods) == 2, [p.metadata.name for p in pods]
    before = _status(install)["step"]
    lost = time.monotonic()
    # gone at once, no SIGTERM checkpoint: what a lost node looks like to the others
    core.delete_namespaced_pod(pods[0].metadata.name, install.ml, grace_period_seconds=0)
    # back past where it was, in a re-formed group (the survivor may log a step or two before it notices)
    wait_for("the re-formed group to train past the step it was at", lambda: (s := _status(install)).get(
        "workerGroupRestarts", 0) >= 1 and (s.get("step") or 0) > before, timeout=300, interval=0.5)
    stood_still = time.monotonic() - lost
    wait_for("run elastic Succeeded", lambda: _status(install).get("phase") == "Succeeded", timeout=900, interval=2)
    status = _status(install)
    summary = (f"pod {pods[0].metadata.name} lost at step {before}; a re-formed group trained past it "
               f"{stood_still:.1f} s later; worker group restarts {status.get('workerGroupRestarts')}")
    print(f"elastic: {summary}")
    record_property("measured", summary)
    assert (status.get("attempt") or 0) == 0 and (status.get("restarts") or 0) == 0, status
    assert (status.get("workerGroupRestarts") or 0) >= 1, status
    assert status["step"] == 160, status
