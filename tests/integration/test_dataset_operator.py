"""ForgeDataset end to end on a real API server: the operator creates the Job and its ConfigMap,
the real `forge-trainer prepare` runs with that ConfigMap's config against S3 (as the pod would),
the Pod is marked finished as a kubelet would, and the dataset becomes Ready with its counts."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from tests.support.cluster import ACCESS, SECRET, Cluster, Operator, wait_for

pytestmark = pytest.mark.integration

_WORDS = ["operator", "cluster", "shard", "token", "corpus", "model", "train", "node", "queue", "bucket", "secret", "policy", "schedule", "gradient", "batch", "checkpoint", "metric", "replica", "service", "volume", "network", "kernel", "tensor", "vector"]


def _doc(i: int) -> str:
    import random

    rng = random.Random(i)
    return " ".join(rng.choice(_WORDS) for _ in range(60)) + "."


DOCS = [_doc(i) for i in range(30)]


def _dataset(name: str, source: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset", "metadata": {"name": name},
            "spec": {"source": {"uri": source}, "tokenizer": {"vocabSize": 300},
                     "processing": {"quality": {"minChars": 10}}, **spec}}


def _run_workload_like_the_pod(config_yaml: str, tmp_path: Path, endpoint: str) -> None:
    """Run the real workload with the config the operator wrote and the credentials a pod gets."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_yaml)
    env = {**os.environ, "FORGE_S3_ACCESS_KEY": ACCESS, "FORGE_S3_SECRET_KEY": SECRET, "FORGE_S3_ENDPOINT": endpoint}
    proc = subprocess.run([sys.executable, "-m", "forge_trainer.cli", "prepare", "--config", str(cfg)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_dataset_reaches_ready_with_counts_and_children_go_with_it(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str, tmp_path: Path) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    raw = f"raw-{cluster.ns}"
    s3.make_bucket(raw)
    import io
    for i, doc in enumerate([*DOCS, DOCS[0]]):  # one exact duplicate
        data = doc.encode()
        s3.put_object(raw, f"corpus/doc-{i:03d}.txt", io.BytesIO(data), len(data), content_type="text/plain")

    cluster.create("forgedatasets", _dataset("handbook", f"s3://{raw}/corpus/"))

    job = wait_for("the preparation Job", lambda: cluster.job("handbook-prepare"), timeout=60)
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("ForgeDataset", "handbook", True)
    cm = cluster.core.read_namespaced_config_map("handbook-prepare-config", cluster.ns)
    assert cm.metadata.owner_references[0].name == "handbook"
    assert SECRET not in cm.data["config.yaml"]
    wait_for("phase Running", lambda: cluster.status("forgedatasets", "handbook").get("phase") == "Running")

    _run_workload_like_the_pod(cm.data["config.yaml"], tmp_path, _moto_endpoint)
    wait_for("the Job's pod", lambda: cluster.finish_pods("handbook-prepare"), timeout=30)

    def ready() -> dict[str, Any] | None:
        status = cluster.status("forgedatasets", "handbook")
        return status if status.get("phase") == "Ready" else None

    status = wait_for("phase Ready", ready, timeout=60)
    body = cluster.get("forgedatasets", "handbook")
    assert body is not None
    assert status["observedGeneration"] == body["metadata"]["generation"]
    counts = status["counts"]
    assert counts["documentsRead"] == 31 and counts["documentsKept"] == 30 and counts["exactDuplicates"] == 1
    assert counts["tokens"] > 0
    manifest_key = status["manifestUri"].split(f"s3://{store_bucket}/", 1)[1]
    manifest = s3.get_object(store_bucket, manifest_key).read()
    assert status["digest"] == "sha256:" + hashlib.sha256(manifest).hexdigest()
    ready_cond = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready_cond["status"] == "True" and ready_cond["observedGeneration"] == body["metadata"]["generation"]
    reasons = wait_for("Events", lambda: {e.reason for e in cluster.events_for("handbook")} >= {"Running", "Ready"}
                       and {e.reason for e in cluster.events_for("handbook")})
    assert "Ready" in reasons

    # deletion: the finalizer removes the artifacts, writes a report, children are collected
    prefix = status["outputUri"].split(f"s3://{store_bucket}/", 1)[1]
    assert list(s3.list_objects(store_bucket, prefix=prefix + "/", recursive=True))
    cluster.delete("forgedatasets", "handbook")
    wait_for("the dataset to be gone", lambda: cluster.get("forgedatasets", "handbook") is None, timeout=60)
    assert list(s3.list_objects(store_bucket, prefix=prefix + "/", recursive=True)) == []
    audit = [o.object_name for o in s3.list_objects(store_bucket, prefix=f"forge/{cluster.ns}/_audit/", recursive=True)]
    summaries = [name for name in audit if name.endswith(".json")]  # the rest: the report's JSONL parts
    assert len(summaries) == 1
    report = json.loads(s3.get_object(store_bucket, summaries[0]).read())
    assert report["event"] == "deleted" and report["name"] == "handbook"
    assert report["deletedObjects"] > 3 and report["deletedBytes"] > 0
    records = [json.loads(line) for part in report["parts"]
               for line in s3.get_object(store_bucket, part.split(f"s3://{store_bucket}/", 1)[1]).read().splitlines()]
    assert sum(r["action"] == "deleted" for r in records) == report["deletedObjects"]
    assert all(r["etag"] for r in records)  # the store's checksum from the listing: nothing was downloaded
    wait_for("the Job to be garbage-collected", lambda: cluster.job("handbook-prepare") is None, timeout=120,
             interval=2)


def test_invalid_cross_field_spec_gets_invalid_spec_condition_and_no_job(cluster: Cluster) -> None:
    body = _dataset("bad", "s3://raw/x/", tokenizer={"vocabSize": 1000, "uri": "s3://other/tokenizer.json"})
    cluster.create("forgedatasets", body)
    cond = wait_for("InvalidSpec condition", lambda: cluster.condition("forgedatasets", "bad", "InvalidSpec"))
    assert cond["status"] == "True"
    assert "spec.tokenizer" in cond["message"] and "vocabSize, uri" in cond["message"]
    assert cluster.status("forgedatasets", "bad")["phase"] == "Failed"
    assert cluster.job("bad-prepare") is None


def test_local_source_is_reported_not_crashed(cluster: Cluster) -> None:
    cluster.create("forgedatasets", _dataset("local", "/data/corpus"))
    cond = wait_for("InvalidSpec condition", lambda: cluster.condition("forgedatasets", "local", "InvalidSpec"))
    assert cond["status"] == "True" and "spec.source.uri" in cond["message"]


def test_api_server_rejects_wrong_types_and_unknown_enums(cluster: Cluster) -> None:
    from kubernetes.client.exceptions import ApiException

    for field, value in (("purpose", "chitchat"), ("format", 42)):
        body = _dataset(f"typed-{field}", "s3://raw/x/", **{field: value})
        with pytest.raises(ApiException) as exc:
            cluster.create("forgedatasets", body)
        assert exc.value.status == 422
        assert f"spec.{field}" in (exc.value.body or "")


def test_failed_job_fails_the_dataset_with_the_workloads_reason(cluster: Cluster) -> None:
    cluster.create("forgedatasets", _dataset("doomed", "s3://raw/nothing/"))
    wait_for("the preparation Job", lambda: cluster.job("doomed-prepare"))

    def fail_pods() -> bool:
        cluster.finish_pods("doomed-prepare", "Failed")
        job = cluster.job("doomed-prepare")
        return any(c.type == "Failed" and c.status == "True" for c in (job.status.conditions or []))

    wait_for("the Job to fail after its retries", fail_pods, timeout=120, interval=2)
    wait_for("phase Failed", lambda: cluster.status("forgedatasets", "doomed").get("phase") == "Failed")
    assert "failed" in cluster.condition("forgedatasets", "doomed", "Ready")["message"]  # type: ignore[index]
