"""What every handler shares: settings, the API facade, Events, and publishing a new status once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import kopf
from pydantic import BaseModel, ValidationError

from forge_operator import metrics
from forge_operator.api.common import API_VERSION
from forge_operator.api.dataset import DatasetPhase
from forge_operator.api.deployment import DeploymentPhase
from forge_operator.api.training import RunPhase
from forge_operator.kube.client import Kube
from forge_operator.settings import OperatorSettings
from forge_operator.store import StoreError
from forge_operator.store.artifacts import read_progress

log = logging.getLogger("forge.operator")
FAILED = {DatasetPhase.FAILED, RunPhase.FAILED, DeploymentPhase.FAILED}


@dataclass
class OperatorRuntime:
    """The operator's process-wide state: its settings and its API facade."""

    settings: OperatorSettings
    kube: Kube


_runtime: OperatorRuntime | None = None


def runtime() -> OperatorRuntime:
    """The runtime, created on first use from the environment."""
    global _runtime
    if _runtime is None:
        _runtime = OperatorRuntime(settings=OperatorSettings.from_env(), kube=Kube())
    return _runtime


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch turning `old` into `new`: changed keys, plus None for keys that went away."""
    patch: dict[str, Any] = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new})
    return patch


def publish_status(body: dict[str, Any], old_status: BaseModel, new_status: BaseModel) -> bool:
    """Patch the resource's status if anything changed (one write per reconcile) and post an Event
    when the phase changes. Returns whether a patch was sent."""
    meta = body["metadata"]
    kind, ns, name = body["kind"], meta["namespace"], meta["name"]
    old = old_status.model_dump(mode="json", by_alias=True, exclude_none=True)
    new = new_status.model_dump(mode="json", by_alias=True, exclude_none=True)
    metrics.observe(kind, ns, name, new)
    patch = status_patch(old, new)
    if not patch:
        return False
    runtime().kube.patch_status(API_VERSION, kind, ns, name, patch)
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


def progress_or_none(uri: str, model: type[P], what: str) -> P | None:
    """The workload's progress.json under `uri`; None (logged, the next reconcile reads again) when the
    store cannot be read. `what` names the resource in the log."""
    try:
        return read_progress(uri, runtime().settings.store, model)
    except StoreError as exc:
        log.warning("%s: cannot read progress: %s", what, exc)
        return None


def parse_status(model: type[S], body: dict[str, Any]) -> S:
    """The resource's current status; an unreadable one (hand-edited, older version) counts as empty."""
    try:
        return model.model_validate(body.get("status") or {})
    except ValidationError:
        return model()
