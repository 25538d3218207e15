"""The whole chain applied at once — dataset → pretrain run → sft run → deployment — converges in order
as each workload really runs and its Pods are marked finished; plus restarts and stall detection."""

from __future__ import annotations

from pathlib import Path
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
from tests.support.workloads import run_like_the_pod, upload_corpora

pytestmark = pytest.mark.integration
TINY_HP = {"maxSteps": 4, "warmupSteps": 1, "globalBatchSize": 4, "microBatchSize": 2, "sequenceLength": 32,
           "evalInterval": 0, "evalBatches": 1}


def _manifests(raw: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("forgedatasets", {**FORGE, "kind": "ForgeDataset", "metadata": {"name": "corpus"}, "spec": {
            "source": {"uri": f"s3://{raw}/corpus/"}, "tokenizer": {"vocabSize": 400},
            "split": {"validationFraction": 0.1}}}),
        ("forgedatasets", {**FORGE, "kind": "ForgeDataset", "metadata": {"name": "chats"}, "spec": {
            "source": {"uri": f"s3://{raw}/chats/"}, "purpose": "sft", "format": "jsonl",
            "tokenizer": {"datasetRef": "corpus"}, "processing": {"nearDedup": {"enabled": False}},
            "split": {"validationFraction": 0.1}}}),
        ("forgetrainingruns", {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": "base"}, "spec": {
            "stage": "pretrain", "datasetRef": "corpus", "model": {"size": "tiny", "maxSeqLen": 64},
            "hyperparameters": TINY_HP, "precision": "fp32", "checkpointing": {"interval": 2, "keep": 1},
            "resources": CPU}}),
        ("forgetrainingruns", {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": "tuned"}, "spec": {
            "stage": "sft", "datasetRef": "chats", "init": {"baseRun": "base"}, "hyperparameters": TINY_HP,
            "precision": "fp32", "checkpointing": {"interval": 2, "keep": 1}, "resources": CPU}}),
        ("forgedeployments", {**FORGE, "kind": "ForgeDeployment", "metadata": {"name": "chat"}, "spec": {
            "modelRef": "tuned", "resources": {"cpu": "1", "memory": "2Gi"},
            "evalGate": [{"metric": "loss", "max": 100.0}]}}),
    ]


def test_whole_chain_applied_at_once_converges_in_order(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str, tmp_path: Path) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    raw = f"raw-{cluster.ns}"
    s3.make_bucket(raw)
    upload_corpora(s3, raw)
    for plural, body in _manifests(raw):
        cluster.create(plural, body)

    # everything downstream waits, saying what for
    cond = wait_for("base run to wait for its dataset", lambda: cluster.condition("forgetrainingruns", "base",
                                                                                   "DatasetReady"))
    assert cond["status"] == "False" and "ForgeDataset corpus" in cond["message"]
    wait_for("chats to wait for the corpus tokenizer",
             lambda: cluster.condition("forgedatasets", "chats", "Ready") or None)
    assert cluster.job("chats-prepare") is None
    wait_for("deployment to wait", lambda: phase(cluster, "forgedeployments", "chat") == "Pending")

    wait_for("corpus job", lambda: cluster.job("corpus-prepare"))
    run_like_the_pod(cluster, "corpus-prepare-config", "prepare", _moto_endpoint, tmp_path)
    finish_job(cluster, "corpus-prepare")
    wait_for("corpus Ready", lambda: phase(cluster, "forgedatasets", "corpus") == "Ready")

    wait_for("chats job (after corpus is Ready)", lambda: cluster.job("chats-prepare"), timeout=60)
    run_like_the_pod(cluster, "chats-prepare-config", "prepare", _moto_endpoint, tmp_path)
    finish_job(cluster, "chats-prepare")
    wait_for("chats Ready", lambda: phase(cluster, "forgedatasets", "chats") == "Ready")

    job = wait_for("base training job", lambda: cluster.job("base-train-0"), timeout=60)
    assert job.metadata.owner_references[0].name == "base"
    # the run's rendezvous store: a Deployment behind a ClusterIP Service, applied with the Job
    assert cluster.core.read_namespaced_service("base-rendezvous", cluster.ns).spec.cluster_ip not in (None, "None")
    apps = kubernetes.client.AppsV1Api(cluster.core.api_client)
    assert apps.read_namespaced_deployment("base-rendezvous", cluster.ns).spec.replicas == 1
    run_like_the_pod(cluster, "base-train-config", "train", _moto_endpoint, tmp_path)
    finish_job(cluster, "base-train-0")
    wait_for("base Succeeded", lambda: phase(cluster, "forgetrainingruns", "base") == "Succeeded", timeout=60)
    base = cluster.status("forgetrainingruns", "base")
    assert base["finalModelUri"].startswith(f"s3://{store_bucket}/forge/{cluster.ns}/forgetrainingrun/base/")
    assert base["step"] == 4 and base["progress"] == "4/4" and base["loss"] > 0
    corpus_digest = cluster.status("forgedatasets", "corpus")["digest"]
    assert base["lineage"]["datasetDigest"] == corpus_digest and base["lineage"]["configHash"].startswith("sha256:")

    wait_for("tuned training job", lambda: cluster.job("tuned-train-0"), timeout=60)
    run_like_the_pod(cluster, "tuned-train-config", "train", _moto_endpoint, tmp_path)
    finish_job(cluster, "tuned-train-0")
    wait_for("tuned Succeeded", lambda: phase(cluster, "forgetrainingruns", "tuned") == "Succeeded", timeout=60)
    tuned = cluster.status("forgetrainingruns", "tuned")
    assert tuned["lineage"]["baseModelDigest"] == base["finalModelDigest"]

    from kubernetes import client

    apps = client.AppsV1Api(cluster.core.api_client)
    dep = wait_for("serving Deployment", lambda: _read_deployment(apps, cluster.ns, "chat-serve"), timeout=60)
    assert "--model-digest" in dep.spec.template.spec.containers[0].command
    wait_for("a serving pod", lambda: _mark_pods_ready(cluster, "forge.ai/forgedeployment=chat"), timeout=60)
    wait_for("deployment Available", lambda: phase(cluster, "forgedeployments", "chat") == "Available", timeout=60)
    status = cluster.status("forgedeployments", "chat")
    assert status["modelDigest"] == tuned["finalModelDigest"] and status["readyReplicas"] == 1
    assert status["endpoint"] == f"http://chat.{cluster.ns}.svc:8000/v1"


def _read_deployment(apps: Any, ns: str, name: str) -> Any:
    from kubernetes.client.exceptions import ApiException

    try:
        return apps.read_namespaced_deployment(name, ns)
    except ApiException:
        return None


def _mark_pods_ready(cluster: Cluster, selector: str) -> int:
    pods = cluster.core.list_namespaced_pod(cluster.ns, label_selector=selector).items
    for pod in pods:
        cluster.core.patch_namespaced_pod_status(pod.metadata.name, cluster.ns, {"status": {
            "phase": "Running", "conditions": [{"type": "Ready", "status": "True"},
                                               {"type": "ContainersReady", "status": "True"}]}})
    return len(pods)


def test_failed_job_is_recreated_then_the_run_fails_after_max_restarts(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    ready_dataset(cluster, s3, store_bucket, "data")
    cluster.create("forgetrainingruns", {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": "flaky"}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "maxRestarts": 1, "resources": CPU}})

    def fail(job: str) -> bool:
        cluster.finish_pods(job, "Failed")
        j = cluster.job(job)
        return j is not None and any(c.type == "Failed" and c.status == "True" for c in (j.status.conditions or []))

    wait_for("first attempt", lambda: cluster.job("flaky-train-0"))
    # the Job retries a failed pod once (backoffLimit) after the controller's back-off: allow for a loaded machine
    wait_for("first attempt to fail (its pods failed)", lambda: fail("flaky-train-0"), timeout=180, interval=1)
    wait_for("second attempt", lambda: cluster.job("flaky-train-1"), timeout=60)
    assert cluster.status("forgetrainingruns", "flaky")["restarts"] == 1
    restarted = [e.message for e in cluster.events_for("flaky") if e.reason == "JobRestarted"]
    assert restarted and "restart 1 of 1" in restarted[0] and "flaky-train-0 failed" in restarted[0]
    wait_for("second attempt to fail", lambda: fail("flaky-train-1"), timeout=180, interval=1)
    wait_for("run Failed", lambda: phase(cluster, "forgetrainingruns", "flaky") == "Failed", timeout=60)
    assert "no restarts left" in cluster.status("forgetrainingruns", "flaky")["message"]


def test_stalled_run_gets_a_condition_and_is_restarted(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    ready_dataset(cluster, s3, store_bucket, "data")
    cluster.create("forgetrainingruns", {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": "stuck"}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "stallTimeoutSeconds": 10,
        "resources": CPU}})
    wait_for("job", lambda: cluster.job("stuck-train-0"))
    out = wait_for("output uri", lambda: cluster.status("forgetrainingruns", "stuck").get("outputUri"))
    key = out.split(f"s3://{store_bucket}/", 1)[1] + "/progress.json"
    put_json(s3, store_bucket, key, {"step": 3, "totalSteps": 100, "loss": 5.0, "worldSize": 1})
    wait_for("step mirrored", lambda: cluster.status("forgetrainingruns", "stuck").get("step") == 3)
    wait_for("stall restart", lambda: cluster.job("stuck-train-1"), timeout=60)
    restarted = [e.message for e in cluster.events_for("stuck") if e.reason == "JobRestarted"]
    assert restarted and "step 3 has not advanced" in restarted[0] and "stallTimeoutSeconds 10" in restarted[0]


def test_immutable_field_change_is_refused(cluster: Cluster, operator: Operator, _moto_endpoint: str,
                                           store_bucket: str) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    ready_dataset(cluster, s3, store_bucket, "data")
    cluster.create("forgetrainingruns", {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": "fixed"}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "resources": CPU}})
    wait_for("job", lambda: cluster.job("fixed-train-0"))
    cluster.custom.patch_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, "forgetrainingruns", "fixed",
                                                  {"spec": {"model": {"size": "125m"}}})
    cond = wait_for("InvalidSpec", lambda: (c := cluster.condition("forgetrainingruns", "fixed", "InvalidSpec"))
                    and c["status"] == "True" and c)
    assert "spec.model is immutable" in cond["message"]


def test_cross_namespace_model_uri_is_refused(cluster: Cluster, operator: Operator, store_bucket: str) -> None:
    cluster.create("forgedeployments", {**FORGE, "kind": "ForgeDeployment", "metadata": {"name": "thief"}, "spec": {
        "modelUri": f"s3://{store_bucket}/forge/other-team/forgetrainingrun/x/u/model"}})
    cond = wait_for("InvalidSpec", lambda: (c := cluster.condition("forgedeployments", "thief", "InvalidSpec"))
                    and c["status"] == "True" and c)
    assert "refers to namespace other-team" in cond["message"]
