"""The operator exports per-run metrics, and survives its own restart mid-run without duplicating
children while its status converges."""

from __future__ import annotations

import urllib.request

import pytest
from minio import Minio

from tests.support.cluster import (
    ACCESS,
    CPU,
    FORGE,
    SECRET,
    Cluster,
    Operator,
    put_json,
    ready_dataset,
    wait_for,
)

pytestmark = pytest.mark.integration


def _scrape(operator: Operator) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.env['FORGE_METRICS_PORT']}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _start_run(cluster: Cluster, s3: Minio, store_bucket: str, name: str) -> str:
    ready_dataset(cluster, s3, store_bucket, "data")
    cluster.create("forgetrainingruns", {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": name}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "resources": CPU}})
    wait_for("job", lambda: cluster.job(f"{name}-train-0"))
    out = wait_for("output uri", lambda: cluster.status("forgetrainingruns", name).get("outputUri"))
    return str(out.split(f"s3://{store_bucket}/", 1)[1] + "/progress.json")


def test_metrics_endpoint_exposes_per_run_series(cluster: Cluster, operator: Operator, _moto_endpoint: str,
                                                  store_bucket: str) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    key = _start_run(cluster, s3, store_bucket, "watched")
    put_json(s3, store_bucket, key, {"step": 7, "totalSteps": 50, "loss": 3.25, "tokensPerSecond": 1200.0,
                                      "worldSize": 2, "mfu": 0.31})
    wait_for("step mirrored", lambda: cluster.status("forgetrainingruns", "watched").get("step") == 7)
    labels = f'name="watched",namespace="{cluster.ns}"'
    text = wait_for("series", lambda: (t := _scrape(operator)) and f"forge_run_step{{{labels}}} 7.0" in t and t)
    assert f"forge_run_loss{{{labels}}} 3.25" in text
    assert f"forge_run_world_size{{{labels}}} 2.0" in text
    assert f"forge_run_tokens_per_second{{{labels}}} 1200.0" in text
    assert 'forge_reconcile_total{kind="ForgeTrainingRun",result="ok"}' in text
    assert 'forge_resources{kind="ForgeTrainingRun",phase="Running"}' in text
    cluster.delete("forgetrainingruns", "watched")
    wait_for("run gone", lambda: cluster.get("forgetrainingruns", "watched") is None)
    assert f"forge_run_step{{{labels}}}" not in _scrape(operator), "a deleted run's series must disappear"


def test_operator_restart_mid_run_creates_no_duplicates_and_converges(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str) -> None:
    s3 = Minio(_moto_endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    key = _start_run(cluster, s3, store_bucket, "steady")
    operator.stop()
    try:
        # the workload keeps going while the operator is away
        put_json(s3, store_bucket, key, {"step": 12, "totalSteps": 40, "loss": 2.5, "worldSize": 1})
    finally:
        operator.start()
    wait_for("status converges after the restart",
             lambda: cluster.status("forgetrainingruns", "steady").get("step") == 12, timeout=90)
    jobs = cluster.batch.list_namespaced_job(cluster.ns, label_selector="forge.ai/forgetrainingrun=steady").items
    assert [j.metadata.name for j in jobs] == ["steady-train-0"]
    services = cluster.core.list_namespaced_service(cluster.ns, label_selector="forge.ai/forgetrainingrun=steady")
    assert [s.metadata.name for s in services.items] == ["steady-rendezvous"]
    assert cluster.status("forgetrainingruns", "steady")["phase"] == "Running"
