"""The operator against an object store that fails: a store that accepts connections and never answers
must not stall reconciles (of its own resource beyond a few seconds, of any other resource at all), must
show as StoreReachable=False naming the endpoint and the error (never a credential), and must not be
asked again on every tick. Deletion against a dead store fails fast with the endpoint named; a deletion
report survives a pass that stopped half-way, and records the store's checksums instead of reading
the objects.

The reconciles run the real observe and derive steps of the dataset adapter (handlers/dataset.py) with the
real store client, on a worker pool as Kopf runs sync handlers; each resource is reconciled one at a time,
as Kopf does."""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from forge_operator.api import ForgeDataset
from forge_operator.api.common import RetentionPolicy
from forge_operator.api.dataset import DatasetPhase, ForgeDatasetStatus
from forge_operator.handlers.adapter import Pass
from forge_operator.handlers.dataset import ADAPTER, LiveJobs
from forge_operator.handlers.indexes import cluster_lookup
from forge_operator.handlers.runtime import OperatorRuntime
from forge_operator.kube.client import Kube
from forge_operator.plan.dataset import plan_dataset
from forge_operator.resolve.dataset import ResolvedDataset
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import get_condition
from forge_operator.store.connection import open_store
from forge_operator.store.deletion import DeletionJournal, DeletionReport, delete_artifacts
from forge_trainer.config import DatasetProgress, StoreConfig
from forge_trainer.store import StoreError, join_key, open_uri, read_json, write_json_atomic
from tests.support.blackhole import Blackhole, blackhole
from tests.support.ports import free_port
from tests.support.s3 import S3Server

RUNNING_JOB = {"metadata": {"name": "x-prepare"}, "status": {"active": 1}}
COMPLETE_JOB = {"metadata": {"name": "x-prepare"},
                "status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
TICK = 0.5
SECRET = "forge-test-secret"  # the s3 fixture's secret key, in this process's environment


def _body(name: str) -> dict[str, Any]:
    return {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset",
            "metadata": {"name": name, "namespace": "ml", "uid": f"u-{name}", "generation": 1},
            "spec": {"source": {"uri": "s3://raw/corpus/"}, "tokenizer": {"vocabSize": 1000}}}


@dataclass
class Resource:
    """One dataset and what its reconciles saw."""

    name: str
    settings: OperatorSettings
    status: ForgeDatasetStatus = field(default_factory=ForgeDatasetStatus)
    durations: list[float] = field(default_factory=list)
    finished_at: list[float] = field(default_factory=list)


def _reconcile(res: Resource, job: dict[str, Any] = RUNNING_JOB) -> None:
    """parse -> resolve -> plan -> observe -> derive for one dataset whose Job is `job` (the store is read
    in observe, through the operator's store reader)."""
    started = time.monotonic()
    body = _body(res.name)
    rc = Pass(body, ForgeDataset.model_validate(body), res.status, 1, datetime.now(UTC))
    lookup = cluster_lookup("ml", {"forge_datasets": {}, "forge_runs": {}, "forge_deployments": {}})
    resolved = ADAPTER.resolve(rc, lookup)
    assert isinstance(resolved, ResolvedDataset)
    plan = plan_dataset(rc.resource, res.settings)  # what ADAPTER.plan does, with this resource's store
    observed = ADAPTER.observe(rc, resolved, plan, LiveJobs({plan.job_name: job}))
    res.status, _ = ADAPTER.derive(res.status, observed, rc.now)
    res.durations.append(time.monotonic() - started)
    res.finished_at.append(time.monotonic())


@pytest.fixture
def hole() -> Iterator[Blackhole]:
    with blackhole() as h:
        yield h


@pytest.fixture
def operator_runtime(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> OperatorSettings:
    """The operator's process-wide runtime, on the moto store (no API calls are made in these tests)."""
    settings = OperatorSettings(store_endpoint=s3.endpoint, store_secure=False, store_bucket=s3.bucket)
    module = importlib.import_module("forge_operator.handlers.runtime")  # the package re-exports runtime()
    monkeypatch.setattr(module, "_runtime", OperatorRuntime(settings=settings, kube=Kube()))
    return settings


def test_an_unresponsive_store_stalls_no_reconcile_and_is_not_asked_every_tick(
        s3: S3Server, hole: Blackhole, operator_runtime: OperatorSettings) -> None:
    dead = Resource("stuck", operator_runtime.model_copy(update={"store_endpoint": hole.endpoint}))
    healthy = [Resource(f"ok-{i}", operator_runtime) for i in range(3)]
    for i, res in enumerate(healthy):
        store, key = open_uri(plan_dataset(ForgeDataset.model_validate(_body(res.name)), res.settings).output_uri,
                              s3.config)
        write_json_atomic(store, join_key(key, "progress.json"),
                          DatasetProgress(stage="reading", documents_done=10 + i).to_wire())

    # Kopf-like: a small worker pool; a timer tick every TICK seconds; one reconcile per resource at a time
    running: dict[str, Future[None]] = {}
    test_started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        while time.monotonic() - test_started < 8:
            for res in [dead, *healthy]:
                if res.name not in running or running[res.name].done():
                    running[res.name] = pool.submit(_reconcile, res)
            time.sleep(TICK)
        stuck_done = running["stuck"]
        try:
            stuck_done.result(timeout=5)
        except TimeoutError:
            hole.close()  # unblock the client so the pool can shut down, then fail
            pytest.fail("a reconcile of the resource on the unresponsive store did not return within 13 s")
        for res in healthy:
            running[res.name].result(timeout=5)

    # the resources on the healthy store kept reconciling on every tick, each within 2 s
    for res in healthy:
        assert len(res.durations) >= 12, f"{res.name}: only {len(res.durations)} reconciles in 8 s"
        assert max(res.durations) < 2.0, f"{res.name}: a reconcile took {max(res.durations):.1f}s"
        gaps = [b - a for a, b in zip(res.finished_at, res.finished_at[1:], strict=False)]
        assert max(gaps) < 2.0
        assert res.status.documents_done is not None and res.status.documents_done >= 10
        reachable = get_condition(res.status.conditions, "StoreReachable")
        assert reachable is not None and reachable.status.value == "True"

    # the one on the unresponsive store: its reconciles returned within a few seconds, it says why ...
    assert max(dead.durations) < 4.0, f"a reconcile waited {max(dead.durations):.1f}s for the store"
    assert len(dead.durations) >= 4
    cond = get_condition(dead.status.conditions, "StoreReachable")
    assert cond is not None and cond.status.value == "False" and cond.reason == "NoAnswer"
    assert hole.endpoint in cond.message and "no answer within 3s" in cond.message
    assert SECRET not in cond.message and "forge-test" not in cond.message
    assert dead.status.phase is DatasetPhase.RUNNING
    # ... and the store was not asked on every tick (backoff): one probe, maybe a second after 5 s
    assert len(hole.accepted) <= 2, f"{len(hole.accepted)} connections to the dead store in 8 s"


def test_a_job_that_ends_while_the_store_is_down_is_not_failed_for_a_missing_result(
        hole: Blackhole, operator_runtime: OperatorSettings) -> None:
    res = Resource("finished", operator_runtime.model_copy(update={"store_endpoint": hole.endpoint}))
    _reconcile(res, COMPLETE_JOB)
    assert res.status.phase is DatasetPhase.RUNNING
    assert "read once the object store answers" in (res.status.message or "")


def test_deletion_against_a_dead_store_fails_fast_naming_the_store(hole: Blackhole) -> None:
    for endpoint in (hole.endpoint, f"127.0.0.1:{free_port()}"):  # no answer; connection refused
        config = StoreConfig(endpoint=endpoint, secure=False)
        store, prefix = open_store("s3://forge/forge/ml/forgedataset/x/u1", config)
        audit, key = open_store("s3://forge/forge/ml/_audit", config)
        journal = DeletionJournal(audit, key, DeletionReport("ForgeDataset", "ml", "x", "u1", "Delete", "s3://x"))
        started = time.monotonic()
        with pytest.raises(StoreError, match="s3://forge/forge/ml"):
            journal.resume()
            delete_artifacts(store, prefix, RetentionPolicy.DELETE, journal)
        assert time.monotonic() - started < 15


def _populate(s3: S3Server, prefix: str, n: int) -> dict[str, int]:
    store, _ = open_uri(s3.uri(), s3.config)
    sizes = {}
    for i in range(n):
        key = f"{prefix}/checkpoints/part-{i:05d}.bin"
        store.put_bytes(key, bytes([i % 251]) * (100 + i))
        sizes[key] = 100 + i
    store.put_bytes(f"{prefix}/model/weights.bin", b"w" * 50)
    return sizes


def test_a_deletion_stopped_half_way_resumes_without_losing_or_repeating_records(s3: S3Server) -> None:
    prefix = "forge/ml/forgetrainingrun/r/u1"
    sizes = _populate(s3, prefix, 250)
    store, _ = open_store(s3.uri(), s3.config)

    def journal() -> DeletionJournal:
        report = DeletionReport("ForgeTrainingRun", "ml", "r", "u1", "Delete", s3.uri(prefix))
        j = DeletionJournal(store, "forge/ml/_audit", report)
        j.resume()
        return j

    # the first pass stops after 2 batches of 40 (a restart, an error, the end of a finalizer's slice)
    first = journal()
    assert not delete_artifacts(store, prefix, RetentionPolicy.DELETE, first, batch=40, max_batches=2)
    assert first.report.deleted_objects == 80
    # a crash after a part was written but before its batch was deleted: recorded, still there
    crashed = journal()
    left = sorted(o.key for o in store.list(prefix + "/"))[:10]
    crashed.append([{"key": k, "uri": store.uri(k), "size": sizes[k], "action": "deleted"} for k in left])

    # a fresh operator process picks the deletion up from the audit log
    second = journal()
    assert second.report.deleted_objects == 90 and len(second.report.parts) == 3
    assert delete_artifacts(store, prefix, RetentionPolicy.DELETE, second, batch=40)
    where = second.finish()
    assert list(store.list(prefix + "/")) == []

    summary = read_json(store, where.split(f"s3://{s3.bucket}/", 1)[1])
    assert summary["event"] == "deleted" and summary["deletedObjects"] == 251
    assert summary["deletedBytes"] == sum(sizes.values()) + 50
    lines = [line for part in summary["parts"] for line in
             store.get_bytes(part.split(f"s3://{s3.bucket}/", 1)[1]).decode().splitlines()]
    keys = [__import__("json").loads(line)["key"] for line in lines]
    assert len(keys) == len(set(keys)) == 251  # every object exactly once
    # the store's checksum from the listing (an MD5 for a single-part upload), not a download of the object
    records = [__import__("json").loads(line) for line in lines]
    assert all(len(r.get("etag", "")) == 32 for r in records if r["key"] not in left)
    assert not any("sha256" in r for r in records)


def test_keep_final_records_kept_objects_once_and_leaves_them(s3: S3Server) -> None:
    prefix = "forge/ml/forgetrainingrun/k/u2"
    _populate(s3, prefix, 5)
    store, _ = open_store(s3.uri(), s3.config)
    report = DeletionReport("ForgeTrainingRun", "ml", "k", "u2", "KeepFinal", s3.uri(prefix))
    journal = DeletionJournal(store, "forge/ml/_audit", report)
    journal.resume()
    assert delete_artifacts(store, prefix, RetentionPolicy.KEEP_FINAL, journal)
    assert [o.key for o in store.list(prefix + "/")] == [f"{prefix}/model/weights.bin"]
    again = DeletionJournal(store, "forge/ml/_audit", report)
    again.resume()
    assert delete_artifacts(store, prefix, RetentionPolicy.KEEP_FINAL, again)
    assert (again.report.kept_objects, again.report.deleted_objects) == (1, 5)

