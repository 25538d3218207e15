"""When a workload's Pod cannot run, the resource's status says which Pod, where and why, in the user's own
terms, with an Event: checked on a node that really schedules, pulls and kills (no status written by the
test). Each case is one a user meets on day one: a request no node can hold, an image the node cannot get,
a memory limit the trainer exceeds, a preparation whose container exits with an error."""

from __future__ import annotations

import io
from typing import Any

import pytest

from tests.support.cluster import wait_for
from tests.support.node import Install

pytestmark = pytest.mark.cluster


def _pods_ready(install: Install, plural: str, name: str) -> dict[str, Any] | None:
    """The PodsReady condition once it is False for a reason (not while its pods are still starting)."""
    if (install.cluster.condition(plural, name, "InvalidSpec") or {}).get("status") == "True":
        pytest.fail(f"{plural}/{name}: {install.cluster.status(plural, name).get('message')}")
    cond = install.cluster.condition(plural, name, "PodsReady")
    return cond if cond and cond["status"] == "False" and cond.get("reason") not in (None, "Starting", "Pending") else None


def _warning(install: Install, name: str, reason: str) -> Any:
    return next((e for e in install.cluster.events_for(name) if e.type == "Warning" and e.reason == reason), None)


def _run(name: str, **resources: Any) -> dict[str, Any]:
    return {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun", "metadata": {"name": name},
            "spec": {"stage": "pretrain", "datasetRef": "small-notes", "maxRestarts": 0,
                     "model": {"hiddenSize": 32, "numLayers": 1, "numHeads": 2, "numKvHeads": 1,
                               "intermediateSize": 64, "maxSeqLen": 32},
                     "hyperparameters": {"maxSteps": 2000, "globalBatchSize": 2, "microBatchSize": 2,
                                         "sequenceLength": 32},
                     "precision": "fp32", "resources": {"gpusPerNode": 0, **resources}}}


@pytest.mark.timeout(900)
def test_a_request_no_node_can_hold(install: Install, small_notes: str) -> None:
    install.cluster.create("forgetrainingruns", _run("too-big", cpu="500"))
    cond = wait_for("PodsReady=False on too-big", lambda: _pods_ready(install, "forgetrainingruns", "too-big"),
                    timeout=180)
    assert cond["reason"] == "Unschedulable", cond
    assert "too-big-train-0" in cond["message"] and "Insufficient cpu" in cond["message"], cond
    status = install.cluster.status("forgetrainingruns", "too-big")
    assert status["phase"] != "Running", status  # it never started: not "Running"
    assert wait_for("an Unschedulable Warning Event", lambda: _warning(install, "too-big", "Unschedulable"))


@pytest.mark.timeout(900)
def test_a_trainer_over_its_memory_limit(install: Install, small_notes: str) -> None:
    install.cluster.create("forgetrainingruns", _run("tight", memory="120Mi", sharedMemory="16Mi"))
    cond = wait_for("PodsReady=False on tight", lambda: _pods_ready(install, "forgetrainingruns", "tight"),
                    timeout=300)
    assert cond["reason"] == "OOMKilled", cond
    assert "tight-train-0" in cond["message"] and "forge-node" in cond["message"], cond
    assert wait_for("an OOMKilled Warning Event", lambda: _warning(install, "tight", "OOMKilled"))


@pytest.mark.timeout(900)
def test_a_serving_image_the_node_cannot_get(install: Install) -> None:
    """runtime vllm names the chart's vLLM image, which this node does not have and may not pull (the node
    advertises one nvidia.com/gpu, as a device plugin would, so the pod schedules: KH_NODE_GPUS=1). The
    model is there (the init container fetches it); the serving container's image is not."""
    model = f"forge/{install.ml}/none/model"
    install.store().put_object("forge", f"{model}/config.json", io.BytesIO(b"{}"), 2)
    install.cluster.create("forgedeployments", {
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDeployment", "metadata": {"name": "no-image"},
        "spec": {"modelUri": f"s3://forge/{model}/", "runtime": "vllm",
                 "resources": {"gpus": 1, "cpu": "100m", "memory": "1Gi"}}})
    cond = wait_for("PodsReady=False on no-image", lambda: _pods_ready(install, "forgedeployments", "no-image"),
                    timeout=180)
    assert cond["reason"] == "ImagePull" and "no-image" in cond["message"], cond
    assert wait_for("an ImagePull Warning Event", lambda: _warning(install, "no-image", "ImagePull"))


@pytest.mark.timeout(900)
def test_a_deployment_whose_model_is_missing(install: Install) -> None:
    """The init container that fetches the model exits 1; its own last words say what is missing."""
    install.cluster.create("forgedeployments", {
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDeployment", "metadata": {"name": "no-model"},
        "spec": {"modelUri": f"s3://forge/forge/{install.ml}/nothing/here/", "runtime": "builtin"}})
    cond = wait_for("PodsReady=False on no-model", lambda: _pods_ready(install, "forgedeployments", "no-model"),
                    timeout=180)
    assert cond["reason"] in ("ExitCode", "CrashLoop"), cond
    assert "no-model-serve" in cond["message"] and "no objects under this prefix" in cond["message"], cond
    assert wait_for("a Warning Event", lambda: _warning(install, "no-model", cond["reason"]))


@pytest.mark.timeout(900)
def test_a_preparation_that_exits_with_an_error(install: Install) -> None:
    """A source in a bucket that does not exist: the container exits 1, and its own last words arrive."""
    install.cluster.create("forgedatasets", {
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset", "metadata": {"name": "no-bucket"},
        "spec": {"source": {"uri": "s3://no-such-bucket/corpus/"}, "tokenizer": {"vocabSize": 300}}})

    def failed() -> dict[str, Any] | None:
        status = install.cluster.status("forgedatasets", "no-bucket")
        return status if status.get("phase") == "Failed" else None
    status = wait_for("dataset no-bucket Failed", failed, timeout=300)
    text = status.get("message", "") + " ".join(c.get("message", "") for c in status.get("conditions", []))
    assert "no-bucket-prepare" in text and "no-such-bucket" in text, status
