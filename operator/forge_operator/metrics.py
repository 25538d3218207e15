"""Every Prometheus metric of the operator, in one place.

Counters and histograms are recorded as reconciles happen; per-resource gauges are computed at scrape
time from the operator's last view of each resource, so a deleted resource's series disappear with it.

Every replica serves /metrics and exports what it knows: `forge_leader` (1 on the replica that leads, 0
on the others), the API server's missing capabilities, and its own counters. Only the leader reconciles, so
only the leader exports the per-resource gauges: a replica that stopped leading keeps a frozen view of the
resources, and serving it would give one resource two different values.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from forge_operator.api import DATASET, DEPLOYMENT, TRAINING_RUN

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("forge_reconcile_total", "Reconciles by kind and result (ok, error, invalid, waiting)",
                     ["kind", "result"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("forge_reconcile_duration_seconds", "Time one reconcile took", ["kind"],
                              registry=REGISTRY)
PHASE_TRANSITIONS = Counter("forge_phase_transitions_total", "Phase changes by kind and new phase",
                            ["kind", "phase"], registry=REGISTRY)

STORE_READ_FAILURES = Counter("forge_store_read_failures_total",
                              "Store reads that failed or got no answer in time, by endpoint and reason "
                              "(reads skipped while backing off are not counted)", ["endpoint", "reason"],
                              registry=REGISTRY)
DELETIONS_BLOCKED = Counter("forge_deletion_blocked_total",
                            "Finalizer passes that could not finish, by kind and reason", ["kind", "reason"],
                            registry=REGISTRY)
ARTIFACTS_ABANDONED = Counter("forge_artifacts_abandoned_total",
                              "Deletions let go without removing the artifacts (forge.ai/abandon-artifacts)",
                              ["kind"], registry=REGISTRY)

_lock = threading.Lock()
_view: dict[tuple[str, str, str], dict[str, Any]] = {}
_store_up: dict[str, bool] = {}
_leading: bool | None = None
_capabilities_missing: dict[str, bool] = {}


def set_leading(leading: bool | None) -> None:
    """Record whether this replica leads (None: it cannot tell, e.g. without a peering identity)."""
    global _leading
    with _lock:
        _leading = leading


def set_server_capabilities(missing: dict[str, bool]) -> None:
    """Record, for every capability Forge uses, whether the API server lacks it."""
    with _lock:
        _capabilities_missing.clear()
        _capabilities_missing.update(missing)


def store_read(endpoint: str, reachable: bool, failure_reason: str | None) -> None:
    """Record how a store read went: the endpoint's reachability (a scrape-time gauge) and, for a read
    that was tried and failed, its reason."""
    with _lock:
        _store_up[endpoint] = reachable
    if not reachable and failure_reason is not None:
        STORE_READ_FAILURES.labels(endpoint, failure_reason).inc()


def observe(kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Remember the latest status of a resource for the scrape-time gauges."""
    with _lock:
        _view[(kind, namespace, name)] = status


def forget(kind: str, namespace: str, name: str) -> None:
    """Drop a deleted resource's series."""
    with _lock:
        _view.pop((kind, namespace, name), None)


_RUN_GAUGES = {
    "step": ("forge_run_step", "Optimizer steps completed"),
    "totalSteps": ("forge_run_total_steps", "Steps the run will take"),
    "loss": ("forge_run_loss", "Latest training loss"),
    "evalLoss": ("forge_run_eval_loss", "Latest validation loss"),
    "tokensPerSecond": ("forge_run_tokens_per_second", "Recent training throughput"),
    "mfu": ("forge_run_mfu", "Model FLOPs utilisation estimate"),
    "worldSize": ("forge_run_world_size", "Workers in the current group"),
    "restarts": ("forge_run_restarts", "Job restarts"),
    "meanReward": ("forge_run_mean_reward", "Mean reward of the latest RL step"),
    "successRate": ("forge_run_success_rate", "Share of the latest RL step's completions that passed"),
    "kl": ("forge_run_kl", "KL to the reference model in the latest RL step"),
    "completionLength": ("forge_run_completion_length", "Mean completion tokens in the latest RL step"),
    "clipFraction": ("forge_run_clip_fraction", "Share of the latest RL step's tokens whose ratio was clipped"),
    "gpuHours": ("forge_run_gpu_hours", "GPU-hours used so far (what spec.budget.maxGpuHours limits)"),
}
_DATASET_GAUGES = {
    "documentsRead": ("forge_dataset_documents_read", "Documents read from the source"),
    "documentsKept": ("forge_dataset_documents_kept", "Documents kept"),
    "tokens": ("forge_dataset_tokens", "Tokens in all shards"),
    "exactDuplicates": ("forge_dataset_exact_duplicates", "Documents removed as exact duplicates"),
    "nearDuplicates": ("forge_dataset_near_duplicates", "Documents removed as near duplicates"),
}


class _ReplicaCollector(Collector):
    """What every replica knows about itself and the API server."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with _lock:
            leading, missing = _leading, dict(_capabilities_missing)
        leader = GaugeMetricFamily("forge_leader",
                                   "1 on the operator replica that leads (reconciles and exports the resources' "
                                   "gauges), 0 on the replicas that wait")
        if leading is not None:
            leader.add_metric([], 1.0 if leading else 0.0)
        yield leader
        lacking = GaugeMetricFamily("forge_server_capability_missing",
                                    "1 for each Kubernetes capability Forge uses that the API server lacks "
                                    "(the operator's start-up Event says what each means), else 0",
                                    labels=["capability"])
        for name, absent in sorted(missing.items()):
            lacking.add_metric([name], 1.0 if absent else 0.0)
        yield lacking


class _StateCollector(Collector):
    """The resources as the leader last saw them; empty families on a replica that does not lead."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with _lock:
            view = dict(_view) if _leading is not False else {}
            store_up = dict(_store_up) if _leading is not False else {}
        phases = GaugeMetricFamily("forge_resources", "Resources by kind and phase",
                                   labels=["kind", "phase"])
        counts: dict[tuple[str, str], int] = {}
        for (kind, _, _), status in view.items():
            key = (kind, str(status.get("phase") or "Unknown"))
            counts[key] = counts.get(key, 0) + 1
        for (kind, phase), n in sorted(counts.items()):
            phases.add_metric([kind, phase], n)
        yield phases
        yield from _per_resource(view, TRAINING_RUN.kind, _RUN_GAUGES, lambda s: s)
        yield from _per_resource(view, DATASET.kind, _DATASET_GAUGES, lambda s: s.get("counts") or {})
        dropped = GaugeMetricFamily("forge_dataset_documents_dropped", "Documents dropped, by reason",
                                    labels=["namespace", "name", "reason"])
        ready = GaugeMetricFamily("forge_deployment_ready_replicas", "Ready serving replicas",
                                  labels=["namespace", "name"])
        for (kind, ns, name), status in sorted(view.items()):
            if kind == DATASET.kind:
                for reason, n in ((status.get("counts") or {}).get("dropped") or {}).items():
                    dropped.add_metric([ns, name, reason], float(n))
            elif kind == DEPLOYMENT.kind and status.get("readyReplicas") is not None:
                ready.add_metric([ns, name], float(status["readyReplicas"]))
        yield dropped
        yield ready
        reachable = GaugeMetricFamily("forge_store_reachable",
                                      "1 when the object store answered the operator's latest read, else 0",
                                      labels=["endpoint"])
        for endpoint, up in sorted(store_up.items()):
            reachable.add_metric([endpoint], 1.0 if up else 0.0)
        yield reachable


def _per_resource(view: dict[tuple[str, str, str], dict[str, Any]], kind: str,
                  gauges: dict[str, tuple[str, str]], pick: Any) -> Iterator[GaugeMetricFamily]:
    families = {field: GaugeMetricFamily(metric, doc, labels=["namespace", "name"])
                for field, (metric, doc) in gauges.items()}
    for (k, ns, name), status in sorted(view.items()):
        if k != kind:
            continue
        values = pick(status)
        for field, family in families.items():
            value = values.get(field)
            if isinstance(value, int | float):
                family.add_metric([ns, name], float(value))
    yield from families.values()


REGISTRY.register(_ReplicaCollector())
REGISTRY.register(_StateCollector())


def serve(port: int) -> None:
    """Serve /metrics on `port` in a background thread."""
    start_http_server(port, registry=REGISTRY)
