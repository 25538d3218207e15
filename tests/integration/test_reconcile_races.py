"""One reconcile at a time per object, and Job creates that cannot act on a stale attempt (issue #20,
item 7: after a spec.resources edit the operator deleted `<run>-train-1` and created a Job of that name
labelled with the old attempt while status moved on, because Kopf's timer and change handler reconciled the
same run at once from a stale status).

Many threads call the operator's real entry points (`on_event`, `on_tick`) for one run during a roll, half
of them with a body that predates the roll, as Kopf's timer and change handler do. The reconciles run in
this process against the real loopback API server, in a namespace the suite's operator process does not
watch; a watch on the namespace's Jobs records every Job created."""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import kopf
import pytest
from kopf._core.engines import posting  # the context Kopf gives its sync handlers' threads, for Events

from forge_operator.api.training import ForgeTrainingRunStatus
from forge_operator.handlers.reconcile import on_event, on_tick
from forge_operator.handlers.runtime import OperatorRuntime, StaleStatusError, parse_status, publish_status
from forge_operator.handlers.training import ADAPTER
from forge_operator.kube.client import Kube
from forge_operator.settings import OperatorSettings
from tests.support.cluster import CPU, FORGE, Cluster, wait_for
from tests.support.s3 import S3Server

pytestmark = pytest.mark.integration
PLURAL = "forgetrainingruns"
RUN = "elastic"
ATTEMPT = "forge.ai/attempt"
THREADS, ROUNDS = 16, 3


@dataclass
class JobLog:
    """Every Job the namespace's watch saw created: uid -> (name, attempt label)."""

    created: dict[str, tuple[str, str]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    """Annotation values of the sync marks the watch has delivered."""


@dataclass
class KopfContext:
    """Kopf's posting context (settings, Event queue and its loop), as its sync handlers' threads get it."""

    context: contextvars.Context
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any]

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call `fn` inside the context (a copy per call: threads cannot enter one context at once)."""
        return self.context.copy().run(fn, *args)

    def event_reasons(self) -> list[str]:
        """The reasons of the Events posted so far."""
        async def drain() -> list[str]:
            reasons = []
            while not self.queue.empty():
                reasons.append(self.queue.get_nowait().reason)
            return reasons
        return asyncio.run_coroutine_threadsafe(drain(), self.loop).result(timeout=10)


@pytest.fixture
def kopf_context() -> Iterator[KopfContext]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def make_queue() -> asyncio.Queue[Any]:
        return asyncio.Queue()

    queue = asyncio.run_coroutine_threadsafe(make_queue(), loop).result(timeout=10)
    context = contextvars.Context()

    def enter() -> None:
        posting.settings_var.set(kopf.OperatorSettings())
        posting.event_queue_loop_var.set(loop)
        posting.event_queue_var.set(queue)

    context.run(enter)
    yield KopfContext(context, loop, queue)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


@pytest.fixture
def race_cluster(api: Any, crds: None, kubeconfig: str, s3: S3Server,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    """A namespace of its own (not the suite operator's `forge-it-*`) and the operator's runtime in this
    process, on the real API server and the loopback S3 server."""
    from kubernetes import client

    settings = OperatorSettings(store_endpoint=s3.endpoint, store_secure=False, store_bucket=s3.bucket)
    # the package re-exports the function `runtime` under the module's name: reach the module itself
    runtime_module = importlib.import_module("forge_operator.handlers.runtime")
    monkeypatch.setattr(runtime_module, "_runtime", OperatorRuntime(settings=settings, kube=Kube(kubeconfig)))
    core = client.CoreV1Api(api)
    name = f"forge-race-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    yield Cluster(api, name)
    core.delete_namespace(name)


def _watch_jobs(cluster: Cluster, log: JobLog, since: str, stop: threading.Event) -> None:
    """Record every Job created in the namespace from resourceVersion `since` on, until `stop`."""
    from kubernetes import watch

    w = watch.Watch()
    version = since
    while not stop.is_set():
        for event in w.stream(cluster.batch.list_namespaced_job, cluster.ns, resource_version=version,
                              timeout_seconds=2):
            job = event["object"]
            version = job.metadata.resource_version
            if event["type"] == "ADDED":
                log.created[job.metadata.uid] = (job.metadata.name, (job.metadata.labels or {}).get(ATTEMPT, ""))
            log.seen.add((job.metadata.annotations or {}).get("test/sync", ""))
            if stop.is_set():
                w.stop()


def _synced(cluster: Cluster, log: JobLog, job: str) -> None:
    """Wait until the watch has delivered every Job event so far: mark `job` and wait for the mark (events
    arrive in resourceVersion order)."""
    mark = uuid.uuid4().hex
    cluster.batch.patch_namespaced_job(job, cluster.ns, {"metadata": {"annotations": {"test/sync": mark}}})
    wait_for("the Job watch to catch up", lambda: mark in log.seen, timeout=30)


def _handler_kwargs(cluster: Cluster, bucket: str) -> dict[str, Any]:
    """Kopf's indexes as the handlers get them: a Ready dataset `data` in the namespace."""
    prefix = f"s3://{bucket}/forge/{cluster.ns}/forgedataset/data/u"
    data = {"metadata": {"name": "data"}, "spec": {"source": {"uri": "s3://raw/none/"}},
            "status": {"phase": "Ready", "manifestUri": f"{prefix}/manifest.json", "digest": "sha256:00"}}
    return {"forge_datasets": {(cluster.ns, "data"): [data]}, "forge_runs": {}, "forge_deployments": {}}


def _live_jobs(cluster: Cluster) -> list[Any]:
    items = cluster.batch.list_namespaced_job(cluster.ns, label_selector=f"forge.ai/forgetrainingrun={RUN}").items
    return [j for j in items if not j.metadata.deletion_timestamp]


def _described(jobs: list[Any]) -> list[tuple[str, str]]:
    return [(j.metadata.name, (j.metadata.labels or {}).get(ATTEMPT, "")) for j in jobs]


def test_concurrent_reconciles_during_a_roll_create_one_job_per_attempt(
        race_cluster: Cluster, kopf_context: KopfContext, s3: S3Server) -> None:
    cluster = race_cluster
    kwargs = _handler_kwargs(cluster, s3.bucket)
    log, stop = JobLog(), threading.Event()
    since = cluster.batch.list_namespaced_job(cluster.ns).metadata.resource_version
    watcher = threading.Thread(target=_watch_jobs, args=(cluster, log, since, stop), daemon=True)
    watcher.start()

    created = cluster.create(PLURAL, {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": RUN}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "resources": CPU}})
    kopf_context.run(on_event, ADAPTER, created, kwargs)
    assert cluster.job(f"{RUN}-train-0") is not None
    before_roll = cluster.get(PLURAL, RUN)
    assert before_roll is not None and before_roll["status"]["attempt"] == 0

    # the roll: a new shape; every body handed over from here on still says attempt 0
    changed = cluster.custom.patch_namespaced_custom_object(
        "forge.ai", "v1alpha1", cluster.ns, PLURAL, RUN, {"spec": {"resources": {"minNodes": 1, "maxNodes": 2}}})
    calls = [(on_event, changed), (on_tick, changed), (on_event, before_roll), (on_tick, before_roll)]
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def reconcile_once(entry: Callable[..., None], body: dict[str, Any]) -> None:
        try:
            kopf_context.run(entry, ADAPTER, body, kwargs)
        except Exception as exc:  # collected: the test reports every one
            errors.append(exc)

    def reconciler(i: int) -> None:
        start.wait()
        for round_ in range(ROUNDS):
            reconcile_once(*calls[(i + round_) % len(calls)])

    workers = [threading.Thread(target=reconciler, args=(i,)) for i in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)

    # the old attempt's pods may still be going: tick (with the body as it is now, as Kopf's watch has it
    # by then) until the new Job is there
    def rolled() -> Any:
        kopf_context.run(on_tick, ADAPTER, cluster.get(PLURAL, RUN), kwargs)
        return cluster.job(f"{RUN}-train-1")

    try:
        wait_for("the Job of attempt 1", rolled, timeout=60)
    except pytest.fail.Exception:
        pytest.fail(f"no Job of attempt 1 after the roll; status.attempt is "
                    f"{cluster.status(PLURAL, RUN).get('attempt')}, the Jobs are {_described(_live_jobs(cluster))}")
    # and after the roll, more stale reconciles at once: they must create nothing
    late = [threading.Thread(target=reconcile_once, args=call) for call in calls * 2]
    for worker in late:
        worker.start()
    for worker in late:
        worker.join(timeout=300)
    _synced(cluster, log, f"{RUN}-train-1")
    stop.set()
    watcher.join(timeout=10)

    created_jobs = sorted(log.created.values())
    assert created_jobs == [(f"{RUN}-train-0", "0"), (f"{RUN}-train-1", "1")], \
        f"exactly one Job per attempt, named and labelled for it; created: {created_jobs}"
    assert not cluster.batch.list_namespaced_job(cluster.ns, label_selector=f"{ATTEMPT}=0").items, \
        "a Job of the old attempt is left after the roll"
    jobs = _live_jobs(cluster)
    assert [(j.metadata.name, j.metadata.labels[ATTEMPT], j.spec.completions) for j in jobs] == \
        [(f"{RUN}-train-1", "1", 2)]
    status = cluster.status(PLURAL, RUN)
    assert (status["attempt"], status["jobName"], status["restarts"]) == (1, f"{RUN}-train-1", 0)
    assert kopf_context.event_reasons().count("JobRolled") == 1, "one roll, one JobRolled Event"
    assert errors == []


def test_two_writers_cannot_both_advance_the_attempt(race_cluster: Cluster, kopf_context: KopfContext) -> None:
    """Outside one operator's lock (two replicas during a leader handover): two reconciles that read attempt
    0 both decide on attempt 1; the first one's status is published, even though another write (Kopf's
    annotations) moved the run's resourceVersion meanwhile; the second one publishes nothing."""
    cluster = race_cluster
    cluster.create(PLURAL, {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": RUN}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "resources": CPU}})
    cluster.custom.patch_namespaced_custom_object_status(
        "forge.ai", "v1alpha1", cluster.ns, PLURAL, RUN,
        {"status": {"phase": "Running", "attempt": 0, "jobName": f"{RUN}-train-0", "restarts": 0}})
    read = cluster.get(PLURAL, RUN)
    assert read is not None
    prev = parse_status(ForgeTrainingRunStatus, read)
    first = prev.model_copy(update={"attempt": 1, "job_name": f"{RUN}-train-1", "message": "rolled"})
    second = prev.model_copy(update={"attempt": 1, "job_name": f"{RUN}-train-1", "message": "rolled again"})
    cluster.custom.patch_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, PLURAL, RUN,
                                                  {"metadata": {"annotations": {"kopf.zalando.org/x": "y"}}})

    assert kopf_context.run(publish_status, read, prev, first) is True
    with pytest.raises(StaleStatusError, match=r"status\.attempt moved from 0 to 1"):
        kopf_context.run(publish_status, read, prev, second)
    status = cluster.status(PLURAL, RUN)
    assert (status["attempt"], status["jobName"], status.get("message")) == (1, f"{RUN}-train-1", "rolled")


def test_a_run_being_deleted_is_left_to_its_finalizer(race_cluster: Cluster, kopf_context: KopfContext,
                                                      s3: S3Server) -> None:
    """A change handler or a timer tick that Kopf started before the deletion (its body has no
    deletionTimestamp) reconciles nothing once the run is marked for deletion: no Job of a first attempt,
    no status, while the finalizer releases the artifacts."""
    cluster = race_cluster
    kwargs = _handler_kwargs(cluster, s3.bucket)
    created = cluster.create(PLURAL, {**FORGE, "kind": "ForgeTrainingRun",
                                      "metadata": {"name": RUN, "finalizers": ["test/hold"]}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "resources": CPU}})
    cluster.delete(PLURAL, RUN)  # held by the test's finalizer: marked, not gone
    for entry in (on_event, on_tick):
        kopf_context.run(entry, ADAPTER, created, kwargs)
    assert cluster.job(f"{RUN}-train-0") is None, "a run being deleted got a Job"
    assert cluster.status(PLURAL, RUN) == {}
    cluster.custom.patch_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, PLURAL, RUN,
                                                  {"metadata": {"finalizers": None}})
