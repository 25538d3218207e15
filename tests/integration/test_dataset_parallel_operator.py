"""A ForgeDataset with spec.parallelism on a real API server: one Job per worker, the real workers run as
the pods would (all at once, `--stage all`), the Jobs' pods finish as a kubelet would mark them, and the
dataset becomes Ready with the counts of the whole corpus; a worker Job that fails for good fails it and
stops the other workers, and a spec change starts a new attempt."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from minio import Minio

from tests.support.cluster import ACCESS, SECRET, Cluster, Operator, wait_for

pytestmark = pytest.mark.integration

WORDS = ["operator", "cluster", "shard", "token", "corpus", "model", "train", "node", "queue", "bucket", "secret",
         "policy", "schedule", "gradient", "batch", "checkpoint", "metric", "replica", "service", "volume"]


def _doc(i: int) -> str:
    import random

    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(60)) + "."


def _dataset(name: str, source: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset", "metadata": {"name": name},
            "spec": {"source": {"uri": source}, "tokenizer": {"vocabSize": 300},
                     "processing": {"quality": {"minChars": 10}}, **spec}}


def test_worker_jobs_prepare_the_dataset_together(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str, tmp_path: Path) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    raw = f"rawp-{cluster.ns}"
    s3.make_bucket(raw)
    docs = [_doc(i) for i in range(30)]
    for i, doc in enumerate([*docs, docs[0]]):  # the copy of doc 0 is read by the other worker
        data = doc.encode()
        s3.put_object(raw, f"corpus/doc-{i:03d}.txt", io.BytesIO(data), len(data), content_type="text/plain")
    cluster.create("forgedatasets", _dataset("split", f"s3://{raw}/corpus/", parallelism=2))

    jobs = [wait_for(f"Job {name}", lambda n=name: cluster.job(n), timeout=60)  # type: ignore[misc]
            for name in ("split-prepare", "split-prepare-1")]
    assert all(j.metadata.owner_references[0].name == "split" for j in jobs)
    cm = cluster.core.read_namespaced_config_map("split-prepare-config", cluster.ns)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(cm.data["config.yaml"])
    env = {**os.environ, "FORGE_S3_ACCESS_KEY": ACCESS, "FORGE_S3_SECRET_KEY": SECRET,
           "FORGE_S3_ENDPOINT": _moto_endpoint}
    workers = []
    for job in jobs:  # what each pod runs
        command = job.spec.template.spec.containers[0].command
        assert command[:2] == ["forge-trainer", "prepare"]
        args = [str(cfg) if a == command[command.index("--config") + 1] else a for a in command[2:]]
        workers.append(subprocess.Popen([sys.executable, "-m", "forge_trainer.cli", "prepare", *args,
                                         "--poll-seconds", "0.5"], env=env, stderr=subprocess.PIPE, text=True))
    for proc in workers:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    wait_for("the worker pods", lambda: cluster.finish_pods("split-prepare-1"), timeout=30)
    wait_for("worker 0's pod", lambda: cluster.finish_pods("split-prepare"), timeout=30)

    def ready() -> dict[str, Any] | None:
        status = cluster.status("forgedatasets", "split")
        return status if status.get("phase") == "Ready" else None

    status = wait_for("phase Ready", ready, timeout=60)
    counts = status["counts"]
    assert counts["documentsRead"] == 31 and counts["documentsKept"] == 30 and counts["exactDuplicates"] == 1
    prefix = status["outputUri"].split(f"s3://{store_bucket}/", 1)[1]
    assert not list(s3.list_objects(store_bucket, prefix=prefix + "/_work/", recursive=True))


def test_a_worker_job_failing_for_good_fails_the_dataset_and_stops_the_other_workers(
        cluster: Cluster, operator: Operator) -> None:
    cluster.create("forgedatasets", _dataset("halfdoomed", "s3://raw/nothing/", parallelism=3))
    for name in ("halfdoomed-prepare", "halfdoomed-prepare-1", "halfdoomed-prepare-2"):
        wait_for(f"Job {name}", lambda n=name: cluster.job(n), timeout=60)  # type: ignore[misc]

    def fail_pods() -> bool:
        cluster.finish_pods("halfdoomed-prepare-1", "Failed")
        job = cluster.job("halfdoomed-prepare-1")
        return any(c.type == "Failed" and c.status == "True" for c in (job.status.conditions or []))

    wait_for("worker 1's Job to fail after its retries", fail_pods, timeout=120, interval=2)
    wait_for("phase Failed", lambda: cluster.status("forgedatasets", "halfdoomed").get("phase") == "Failed")
    message = cluster.condition("forgedatasets", "halfdoomed", "Ready")["message"]  # type: ignore[index]
    assert message.startswith("preparation job halfdoomed-prepare-1 failed: ")
    assert cluster.status("forgedatasets", "halfdoomed")["jobName"] == "halfdoomed-prepare-1"
    # the others would wait forever for worker 1's output: stopped; the failed one stays for its logs
    wait_for("the other workers' Jobs deleted",
             lambda: cluster.job("halfdoomed-prepare") is None and cluster.job("halfdoomed-prepare-2") is None,
             timeout=30)
    assert cluster.job("halfdoomed-prepare-1") is not None
    assert cluster.status("forgedatasets", "halfdoomed")["phase"] == "Failed"

    # once the cause is fixed (a spec change), a new attempt starts: every worker's Job anew
    cluster.custom.patch_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, "forgedatasets", "halfdoomed",
                                                  {"spec": {"source": {"uri": "s3://raw/fixed/"}}})

    def new_attempt() -> bool:
        jobs = [cluster.job(n) for n in ("halfdoomed-prepare", "halfdoomed-prepare-1", "halfdoomed-prepare-2")]
        return all(j is not None and j.metadata.labels.get("forge.ai/generation") == "2"
                   and not j.status.conditions for j in jobs)

    wait_for("the new attempt's Jobs", new_attempt, timeout=60)
    wait_for("the dataset no longer Failed",
             lambda: cluster.status("forgedatasets", "halfdoomed").get("phase") in ("Pending", "Running"), timeout=30)
