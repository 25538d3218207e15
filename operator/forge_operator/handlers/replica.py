"""What each operator replica does for itself, leader or not: at start-up it names the capabilities the API
server lacks (log, one Warning Event on its own Pod, forge_server_capability_missing), and while it runs it
keeps forge_leader current from Kopf's peering objects."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from forge_operator import metrics
from forge_operator.handlers.runtime import runtime
from forge_operator.kube.client import KubeError
from forge_operator.plan.capabilities import (
    CAPABILITIES,
    describe_missing,
    missing_capabilities,
    parse_server_version,
)
from forge_operator.status.leadership import derive_leading

log = logging.getLogger("forge.operator")
PEERING_API = "kopf.dev/v1"
CLUSTER_PEERING = "ClusterKopfPeering"
PEERING = "KopfPeering"
LEADERSHIP_INTERVAL = 5.0
"""Seconds between reads of the peering objects: how late forge_leader may be after a failover."""
CAPABILITIES_REASON = "MissingCapabilities"
_GLOB = set("*?[]!")
_watch: asyncio.Task[None] | None = None
_missing: frozenset[str] = frozenset()


def server_lacks() -> frozenset[str]:
    """Names of the capabilities the API server lacks, as read at start-up (plan_deployment's `missing`)."""
    return _missing


def pod_event(pod: Mapping[str, str], reason: str, message: str, now: datetime) -> dict[str, Any]:
    """A Warning Event about the operator's own Pod (named after it, so a container restart posts it once)."""
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    involved = {"apiVersion": "v1", "kind": "Pod", "name": pod["name"], "namespace": pod["namespace"],
                **({"uid": pod["uid"]} if pod.get("uid") else {})}
    return {"apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{pod['name']}.{reason.lower()}", "namespace": pod["namespace"]},
            "involvedObject": involved, "type": "Warning", "reason": reason, "message": message,
            "source": {"component": "forge-operator"}, "reportingComponent": "forge-operator",
            "reportingInstance": pod["name"], "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}


def own_pod() -> dict[str, str] | None:
    """The operator's own Pod from the downward API (POD_NAME, POD_NAMESPACE, POD_UID); None outside a pod."""
    name, namespace = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
    if not name or not namespace:
        return None
    return {"name": name, "namespace": namespace, "uid": os.environ.get("POD_UID", "")}


@kopf.on.startup()
def check_server_capabilities(**_: Any) -> None:
    """Read the API server's version and name each capability Forge uses that it lacks: in the log, in one
    Warning Event on the operator's Pod (when the chart tells it its Pod), and as a gauge."""
    global _missing
    kube = runtime().kube
    try:
        info = kube.server_version()
    except KubeError as exc:
        log.warning("cannot read the API server's version, so its missing capabilities are unknown: %s", exc)
        return
    version = parse_server_version(info)
    if version is None:
        log.warning("the API server's /version names no version (%s); its missing capabilities are unknown", info)
        return
    missing = missing_capabilities(version)
    _missing = frozenset(c.name for c in missing)
    metrics.set_server_capabilities({c.name: c in missing for c in CAPABILITIES})
    if not missing:
        log.info("Kubernetes %d.%d: every capability Forge uses is there", *version)
        return
    message = describe_missing(version, missing)
    log.warning("%s", message)
    pod = own_pod()
    if pod is None:
        return  # not in a pod (or the downward API env is not set): the log line is all there is
    try:
        kube.create(pod_event(pod, CAPABILITIES_REASON, message, datetime.now(UTC)))
    except KubeError as exc:
        log.warning("cannot post the %s Event on pod %s/%s: %s", CAPABILITIES_REASON, pod["namespace"],
                    pod["name"], exc)


def _peerings(settings: kopf.OperatorSettings, namespaces: list[str]) -> list[dict[str, Any] | None]:
    """The peering objects this replica takes part in, as the API server holds them (None: not there)."""
    kube, name = runtime().kube, settings.peering.name
    if settings.peering.clusterwide:
        listed = [kube.list(PEERING_API, CLUSTER_PEERING)]
    else:
        listed = [kube.list(PEERING_API, PEERING, namespace=ns) for ns in namespaces]
    return [next((o for o in items if o["metadata"]["name"] == name), None) for items in listed]


async def _watch_leadership(settings: kopf.OperatorSettings, namespaces: list[str], identity: str) -> None:
    """Keep forge_leader current: Kopf's peering rule over the peering objects, every LEADERSHIP_INTERVAL."""
    failing = False
    while True:
        try:
            peerings = await asyncio.to_thread(_peerings, settings, namespaces)
        except KubeError as exc:
            if not failing:
                log.warning("cannot read the peering objects for forge_leader (kept as it was): %s", exc)
            failing = True
        else:
            failing = False
            metrics.set_leading(derive_leading(peerings, identity, datetime.now(UTC)))
        await asyncio.sleep(LEADERSHIP_INTERVAL)


@kopf.on.startup()
async def start_leadership_gauge(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """forge_leader: always 1 when standalone; with peering, kept current in the background from the peering
    objects (absent when this replica cannot tell: no POD_ID, Kopf's identity for it, or glob namespaces)."""
    global _watch
    if settings.peering.standalone:
        metrics.set_leading(True)
        return
    identity = os.environ.get("POD_ID")
    namespaces = [ns for ns in memo.get("watch_namespaces") or [] if not _GLOB & set(ns)]
    if not identity or (not settings.peering.clusterwide and not namespaces):
        log.info("forge_leader is not exported: it needs POD_ID (the chart sets it) and plain namespace names")
        return
    _watch = asyncio.create_task(_watch_leadership(settings, namespaces, identity), name="forge_leader")


@kopf.on.cleanup()
async def stop_leadership_gauge(**_: Any) -> None:
    """Stop the background reads of the peering objects."""
    if _watch is not None:
        _watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _watch
