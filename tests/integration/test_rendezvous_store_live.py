"""A training run's rendezvous store on the real API server holds a pod only while the run may train: its
Deployment is scaled to 0 in the reconcile that publishes Succeeded (a settled run is not reconciled
again) and while the run is suspended, and back to 1 on resume. Its Service stays throughout."""

from __future__ import annotations

from typing import Any

import kubernetes
import pytest
from minio import Minio

from tests.support.cluster import (
    ACCESS,
    CPU,
    FORGE,
    SECRET,
    Cluster,
    Operator,
    finish_job,
    phase,
    put_json,
    ready_dataset,
    wait_for,
)

pytestmark = pytest.mark.integration
PLURAL = "forgetrainingruns"


def _store_replicas(cluster: Cluster, run: str) -> int | None:
    apps = kubernetes.client.AppsV1Api(cluster.core.api_client)
    return int(apps.read_namespaced_deployment(f"{run}-rendezvous", cluster.ns).spec.replicas)


def _store_pods(cluster: Cluster, run: str) -> list[Any]:
    """The store's pods that are not on their way out (the controller manager runs the Deployment)."""
    selector = f"forge.ai/forgetrainingrun={run},app.kubernetes.io/component=rendezvous"
    return [p for p in cluster.core.list_namespaced_pod(cluster.ns, label_selector=selector).items
            if not p.metadata.deletion_timestamp]


def _start(cluster: Cluster, s3: Minio, bucket: str, name: str) -> str:
    """A Running run at step 5; the key of its progress.json."""
    ready_dataset(cluster, s3, bucket, "data")
    cluster.create(PLURAL, {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": name}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "resources": CPU}})
    wait_for("first job", lambda: cluster.job(f"{name}-train-0"))
    out = wait_for("output uri", lambda: cluster.status(PLURAL, name).get("outputUri"))
    key = out.split(f"s3://{bucket}/", 1)[1] + "/progress.json"
    put_json(s3, bucket, key, {"step": 5, "totalSteps": 10, "loss": 4.0, "worldSize": 1})
    wait_for("Running", lambda: phase(cluster, PLURAL, name) == "Running")
    assert _store_replicas(cluster, name) == 1
    wait_for("the store's pod", lambda: _store_pods(cluster, name), timeout=60)
    return key


def test_a_succeeded_run_keeps_no_store_pod(cluster: Cluster, operator: Operator, _moto_endpoint: str,
                                           store_bucket: str) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    key = _start(cluster, s3, store_bucket, "finished")
    put_json(s3, store_bucket, key, {"step": 10, "totalSteps": 10, "loss": 3.0, "worldSize": 1, "done": True,
                                     "finalModelUri": f"s3://{store_bucket}/{key.rsplit('/', 1)[0]}/model"})
    finish_job(cluster, "finished-train-0")
    wait_for("Succeeded", lambda: phase(cluster, PLURAL, "finished") == "Succeeded", timeout=60)
    # the reconcile that published Succeeded scaled the store down: no later reconcile would
    assert _store_replicas(cluster, "finished") == 0
    wait_for("the store's pod gone", lambda: not _store_pods(cluster, "finished"), timeout=60)
    assert cluster.core.read_namespaced_service("finished-rendezvous", cluster.ns) is not None


def test_a_suspended_run_keeps_no_store_pod_and_gets_it_back_on_resume(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    _start(cluster, s3, store_bucket, "paused")
    cluster.custom.patch_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, PLURAL, "paused",
                                                  {"spec": {"suspend": True}})
    wait_for("Suspended", lambda: phase(cluster, PLURAL, "paused") == "Suspended", timeout=60)
    wait_for("the store scaled to 0", lambda: _store_replicas(cluster, "paused") == 0, timeout=30)
    wait_for("the store's pod gone", lambda: not _store_pods(cluster, "paused"), timeout=60)

    cluster.custom.patch_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, PLURAL, "paused",
                                                  {"spec": {"suspend": False}})
    wait_for("the store back", lambda: _store_replicas(cluster, "paused") == 1, timeout=30)
    wait_for("the store's pod again", lambda: _store_pods(cluster, "paused"), timeout=60)
    wait_for("Running", lambda: phase(cluster, PLURAL, "paused") == "Running", timeout=60)
