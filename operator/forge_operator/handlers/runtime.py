"""What every handler shares: settings, the API facade, Events, reading a resource as it is now, and
publishing a new status once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import kopf
from pydantic import BaseModel, ValidationError

from forge_operator import metrics
from forge_operator.api.common import API_VERSION
from forge_operator.api.dataset import DatasetPhase
from forge_operator.api.deployment import DeploymentPhase
from forge_operator.api.training import RunPhase
from forge_operator.kube.client import ConflictError, Kube, KubeError
from forge_operator.plan.workload import StoreAccess
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import StoreCheck
from forge_operator.store.artifacts import read_progress
from forge_operator.store.connection import endpoint_of
from forge_operator.store.reader import StoreAnswered, StoreReader
from forge_trainer.config import StoreConfig

log = logging.getLogger("forge.operator")
FAILED = {DatasetPhase.FAILED, RunPhase.FAILED, DeploymentPhase.FAILED}
GUARDED_FIELDS = ("attempt",)
"""Status fields that name a generation of the resource's children (a training run's attempt names its Job):
an advance is published only onto the status it was decided from, so two writers never both advance one."""
_GUARDED_TRIES = 5


class StaleStatusError(Exception):
    """The status a reconcile decided from is no longer the resource's: another writer advanced a guarded
    field since it was read. The reconcile stops without acting or publishing; the next one reads anew."""


@dataclass
class OperatorRuntime:
    """The operator's process-wide state: its settings, its API facade and its store reader."""

    settings: OperatorSettings
    kube: Kube
    reader: StoreReader = field(default_factory=StoreReader)


_runtime: OperatorRuntime | None = None


def runtime() -> OperatorRuntime:
    """The runtime, created on first use from the environment."""
    global _runtime
    if _runtime is None:
        settings = OperatorSettings.from_env()
        # a dead store is retried about every reconcile interval at first, then less and less often
        reader = StoreReader(backoff=settings.reconcile_interval, max_backoff=max(120.0, settings.reconcile_interval))
        _runtime = OperatorRuntime(settings=settings, kube=Kube(), reader=reader)
    return _runtime


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `old` into `new`: changed keys, plus None for keys that went away."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def guarded_advance(old: dict[str, Any], patch: dict[str, Any]) -> str | None:
    """The guarded field (GUARDED_FIELDS) a status patch moves from a value it had, if any. Setting one for
    the first time is no advance: there was nothing another writer could have moved on from."""
    return next((f for f in GUARDED_FIELDS if f in patch and old.get(f) is not None), None)


def read_current(body: dict[str, Any]) -> dict[str, Any] | None:
    """The resource as the API server holds it now (a handler's body may be older than a status the
    operator has since written), or None when it is gone or replaced by a new object of the same name."""
    meta = body["metadata"]
    live = runtime().kube.get(API_VERSION, body["kind"], meta["namespace"], meta["name"])
    if live is None or (meta.get("uid") and live["metadata"].get("uid") != meta["uid"]):
        return None
    return live


def _patch_guarded(body: dict[str, Any], field: str, read: Any, patch: dict[str, Any]) -> None:
    """Publish `patch`, which advances `field` from the value `read`, only onto a status whose `field` is
    still `read`: a resourceVersion precondition, renewed while other writes (Kopf's annotations) move the
    version but not the field; StaleStatusError when another writer advanced the field meanwhile."""
    kube = runtime().kube
    meta = body["metadata"]
    kind, ns, name = body["kind"], meta["namespace"], meta["name"]
    version = meta.get("resourceVersion")
    for _ in range(_GUARDED_TRIES):
        try:
            kube.patch_status(API_VERSION, kind, ns, name, patch, resource_version=version)
            return
        except ConflictError:
            live = read_current(body)
            if live is None:
                return  # deleted meanwhile: nothing to report on
            now = (live.get("status") or {}).get(field)
            if now != read:
                raise StaleStatusError(f"{kind} {ns}/{name}: status.{field} moved from {read} to {now} while this "
                                       f"reconcile decided to set {patch[field]}; nothing published") from None
            version = live["metadata"]["resourceVersion"]
    raise KubeError(f"patch status of {kind} {ns}/{name}: it kept changing ({_GUARDED_TRIES} tries)")


def publish_status(body: dict[str, Any], old_status: BaseModel, new_status: BaseModel) -> bool:
    """Patch the resource's status if anything changed (one write per reconcile) and post an Event
    when the phase changes. Returns whether a patch was sent. An advance of a guarded field (a run's
    attempt) is published only onto the status it was decided from (StaleStatusError otherwise)."""
    meta = body["metadata"]
    kind, ns, name = body["kind"], meta["namespace"], meta["name"]
    old = old_status.model_dump(mode="json", by_alias=True, exclude_none=True)
    new = new_status.model_dump(mode="json", by_alias=True, exclude_none=True)
    patch = status_patch(old, new)
    if not patch:
        metrics.observe(kind, ns, name, new)
        return False
    guarded = guarded_advance(old, patch)
    if guarded is None:
        runtime().kube.patch_status(API_VERSION, kind, ns, name, patch)
    else:
        _patch_guarded(body, guarded, old[guarded], patch)
    metrics.observe(kind, ns, name, new)
    if old.get("phase") != new.get("phase") and new.get("phase"):
        phase = str(new["phase"])
        metrics.PHASE_TRANSITIONS.labels(kind, phase).inc()
        message = str(new.get("message") or f"phase {phase}")
        post_event(body, phase, message, warning=phase in FAILED)
    return True


def post_event(body: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
    """Post a Kubernetes Event about a resource (what `kubectl describe` shows)."""
    target = cast(kopf.Body, event_target(body))
    if warning:
        kopf.warn(target, reason=reason, message=message)
    else:
        kopf.info(target, reason=reason, message=message)


def event_target(body: dict[str, Any]) -> dict[str, Any]:
    """The minimal body kopf needs to post an Event about a resource."""
    return {"apiVersion": body.get("apiVersion", API_VERSION), "kind": body["kind"],
            "metadata": body["metadata"]}


S = TypeVar("S", bound=BaseModel)
P = TypeVar("P", bound=BaseModel)


def read_progress_checked(uri: str, model: type[P], what: str,
                          store: StoreAccess | None = None) -> tuple[P | None, StoreCheck]:
    """The workload's progress.json under `uri` (None when it has written none, or the store could not be
    read), and how the store answered. The read runs on the store reader's pool: the reconcile waits a few
    seconds at most, and not at all while the store is backing off. `store`: the plan's store access
    (default: this installation's); `what` names the resource in the log."""
    config = runtime().settings.store if store is None else StoreConfig(
        endpoint=store.endpoint, secure=store.secure, region=store.region)
    endpoint = endpoint_of(config)
    try:
        progress, check = runtime().reader.read(endpoint, lambda: read_progress(uri, config, model))
    except StoreAnswered as exc:
        log.warning("%s: cannot read progress: %s", what, exc)
        progress, check = None, StoreCheck(True, endpoint)
    metrics.store_read(endpoint, check.reachable, check.reason if check.attempted else None)
    return progress, check


def parse_status(model: type[S], body: dict[str, Any]) -> S:
    """The resource's current status; an unreadable one (hand-edited, older version) counts as empty."""
    try:
        return model.model_validate(body.get("status") or {})
    except ValidationError:
        return model()
