"""An operator whose object store accepts connections and never answers, on a real API server: a dataset
shows StoreReachable=False (endpoint, reason, no credential) instead of hanging its reconciles; deleting it
is blocked with a DeletionBlocked condition and Event that say how to let it go; the abandonment
annotation lets it go, with an ArtifactsAbandoned Event (the store cannot take the record).

This test runs its own operator process (the suite's one talks to a healthy store), watching one
namespace outside the suite's prefix so the two never act on the same objects."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.blackhole import Blackhole, blackhole
from tests.support.cluster import ACCESS, SECRET, Cluster, Operator, wait_for
from tests.support.ports import free_port


@pytest.fixture
def dead_store_cluster(api: Any, crds: None, kubeconfig: str,
                       tmp_path: Path) -> Iterator[tuple[Cluster, Blackhole, Operator]]:
    from kubernetes import client

    core = client.CoreV1Api(api)
    ns = f"forge-deadstore-{uuid.uuid4().hex[:8]}"  # not the suite's prefix: only this test's operator
    core.create_namespace({"metadata": {"name": ns}})
    with blackhole() as hole:
        env = {**os.environ, "KUBECONFIG": kubeconfig, "FORGE_STORE_ENDPOINT": hole.endpoint,
               "FORGE_STORE_SECURE": "false", "FORGE_STORE_BUCKET": "forge", "FORGE_S3_ACCESS_KEY": ACCESS,
               "FORGE_S3_SECRET_KEY": SECRET, "FORGE_RECONCILE_INTERVAL": "1", "FORGE_METRICS_PORT": "0",
               "FORGE_LIVENESS_PORT": str(free_port())}
        op = Operator(env, tmp_path / "operator.log", namespace=ns)
        op.start()
        try:
            yield Cluster(api, ns), hole, op
        finally:
            op.stop()
            print("---- dead-store operator log (tail) ----\n" + op.tail(80))
            core.delete_namespace(ns)


def test_a_dead_store_is_reported_blocks_deletion_and_abandonment_lets_go(
        dead_store_cluster: tuple[Cluster, Blackhole, Operator]) -> None:
    cluster, hole, _ = dead_store_cluster
    cluster.create("forgedatasets", {
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset", "metadata": {"name": "notes"},
        "spec": {"source": {"uri": "s3://raw/notes/"}, "tokenizer": {"vocabSize": 1000}}})
    cond = wait_for("StoreReachable=False", lambda: (c := cluster.condition("forgedatasets", "notes", "StoreReachable"))
                    and c["status"] == "False" and c, timeout=30)
    assert cond["reason"] == "NoAnswer" and hole.endpoint in cond["message"] and SECRET not in cond["message"]
    assert cluster.job("notes-prepare") is not None  # the reconcile went on past the store

    cluster.delete("forgedatasets", "notes")
    blocked = wait_for("DeletionBlocked", lambda: cluster.condition("forgedatasets", "notes", "DeletionBlocked"),
                       timeout=60)
    assert blocked["status"] == "True" and blocked["reason"] == "StoreUnavailable"
    assert hole.endpoint in blocked["message"] and "forge.ai/abandon-artifacts" in blocked["message"]
    assert SECRET not in blocked["message"]
    assert any(e.reason == "DeletionBlocked" and e.type == "Warning" for e in cluster.events_for("notes"))
    assert cluster.get("forgedatasets", "notes") is not None  # still there: nothing was deleted or recorded

    cluster.custom.patch_namespaced_custom_object(
        "forge.ai", "v1alpha1", cluster.ns, "forgedatasets", "notes",
        {"metadata": {"annotations": {"forge.ai/abandon-artifacts": "store decommissioned, INC-1"}}})
    wait_for("the dataset to be gone", lambda: cluster.get("forgedatasets", "notes") is None, timeout=90)
    abandoned = wait_for("ArtifactsAbandoned Event", lambda: next(
        (e for e in cluster.events_for("notes") if e.reason == "ArtifactsAbandoned"), None), timeout=30)
    assert "store decommissioned, INC-1" in abandoned.message and "could not record it" in abandoned.message
