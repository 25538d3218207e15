"""A run whose pod cannot start or fails says which pod, its rank, its node and why, on the real API server.
No kubelet runs here: the test writes what a scheduler and kubelet would through the `pods/status` and
`pods/binding` subresources (and the completion-index annotation a 1.21+ Job controller puts on each pod;
v1.20 predates Indexed Jobs), and checks the run's PodsReady condition, its Ready message and the Warning
Events."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from minio import Minio

from tests.support.cluster import ACCESS, CPU, FORGE, SECRET, Cluster, Operator, ready_dataset, wait_for

pytestmark = pytest.mark.integration
PLURAL = "forgetrainingruns"


@pytest.fixture
def node(cluster: Cluster) -> Iterator[str]:
    """A Node object for the pod to be bound to (without one the pod garbage collector deletes pods bound
    to a missing node); no kubelet behind it, and no scheduler runs here to place anything else on it."""
    name = f"forge-it-node-{uuid.uuid4().hex[:6]}"
    cluster.core.create_node({"metadata": {"name": name, "labels": {"forge-it": "pod-faults"}}})
    yield name
    cluster.core.delete_node(name)


def _pod_status(cluster: Cluster, pod: str, status: dict[str, Any]) -> None:
    cluster.core.patch_namespaced_pod_status(pod, cluster.ns, {"status": status})


def _pods_ready(cluster: Cluster, run: str) -> dict[str, Any]:
    return cluster.condition(PLURAL, run, "PodsReady") or {}


def _warnings(cluster: Cluster, run: str) -> dict[str, str]:
    return {e.reason: e.message for e in cluster.events_for(run) if e.type == "Warning"}


def test_unschedulable_image_pull_and_oom_killed_pods_are_named_in_status_and_events(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str, node: str) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    ready_dataset(cluster, s3, store_bucket, "data")
    # when the pod's trouble began: now (not when the module was imported, maybe many minutes ago), well
    # within the operator's podsStalledAfter (600 s)
    began = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    ended = (datetime.now(UTC) + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    cluster.create(PLURAL, {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": "faulty"}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "resources": CPU}})
    pods = wait_for("the job's pod", lambda: cluster.core.list_namespaced_pod(
        cluster.ns, label_selector="job-name=faulty-train-0").items)
    pod = pods[0].metadata.name
    cluster.core.patch_namespaced_pod(pod, cluster.ns, {"metadata": {"annotations": {
        "batch.kubernetes.io/job-completion-index": "0"}}})

    # the scheduler finds no node
    _pod_status(cluster, pod, {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                               "lastTransitionTime": began,
                                               "message": "0/1 nodes are available: 1 Insufficient cpu."}]})
    cond = wait_for("PodsReady Unschedulable", lambda: (c := _pods_ready(cluster, "faulty")).get("reason")
                    == "Unschedulable" and c)
    assert cond["status"] == "False"
    assert cond["message"] == (f"pod {pod} (rank 0) (not scheduled): Unschedulable: 0/1 nodes are available: "
                               f"1 Insufficient cpu (since {began})")
    status = cluster.status(PLURAL, "faulty")
    assert status["phase"] == "Pending", "a run none of whose pods can start is not Running"
    assert status["message"] == f"training job faulty-train-0 cannot start: {cond['message']}"
    wait_for("Unschedulable Event", lambda: "Unschedulable" in _warnings(cluster, "faulty"))

    # scheduled on a node whose runtime cannot pull the image
    cluster.core.create_namespaced_pod_binding(pod, cluster.ns, {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}}, _preload_content=False)
    _pod_status(cluster, pod, {
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": began},
                       {"type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": began}],
        "startTime": began,
        "containerStatuses": [{"name": "trainer", "image": "forge-trainer:missing", "imageID": "", "ready": False,
                               "restartCount": 0, "state": {"waiting": {
                                   "reason": "ErrImagePull",
                                   "message": 'rpc error: pull access denied for "forge-trainer:missing"'}}}]})
    cond = wait_for("PodsReady ImagePull", lambda: (c := _pods_ready(cluster, "faulty")).get("reason")
                    == "ImagePull" and c)
    assert cond["message"].startswith(f"pod {pod} (rank 0) on node {node}: ImagePull: container trainer: "
                                      'ErrImagePull: rpc error: pull access denied for "forge-trainer:missing"')
    wait_for("ImagePull Event", lambda: node in _warnings(cluster, "faulty").get("ImagePull", ""))

    # it ran, and the kernel killed it for its memory
    _pod_status(cluster, pod, {"phase": "Failed", "containerStatuses": [{
        "name": "trainer", "image": "forge-trainer:0.1.0", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": began,
                                 "finishedAt": ended}}}]})
    cond = wait_for("PodsReady OOMKilled", lambda: (c := _pods_ready(cluster, "faulty")).get("reason")
                    == "OOMKilled" and c)
    assert cond["message"].startswith(
        f"pod {pod} (rank 0) on node {node}: OOMKilled: container trainer exceeded its memory limit")
    assert f"(OOMKilled, exit code 137) (since {ended})" in cond["message"]
    events = wait_for("OOMKilled Event", lambda: "OOMKilled" in (w := _warnings(cluster, "faulty")) and w)
    assert f"pod {pod} (rank 0) on node {node}" in events["OOMKilled"]
    assert "OOMKilled" in (cluster.status(PLURAL, "faulty").get("message") or "")
    # no kubelet answers for the log here: the status says what it knows, and the operator goes on
    assert "Traceback" not in operator.tail(200)
