"""One reconcile for every kind: parse -> resolve -> plan -> render -> apply -> observe -> derive ->
publish. A kind contributes a small adapter (handlers/dataset.py, training.py, deployment.py); this
module holds the order of the steps, the waiting policy and the error policy, once."""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, NoReturn, TypeVar

import kopf
from pydantic import BaseModel, ValidationError

from forge_operator import metrics
from forge_operator.api import KindInfo
from forge_operator.api.common import ResourceStatus
from forge_operator.api.errors import spec_error_message
from forge_operator.handlers.indexes import cluster_lookup
from forge_operator.handlers.runtime import parse_status, publish_status
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.resolve.lookup import Lookup
from forge_operator.status.conditions import Action, Waiting

R = TypeVar("R", bound=BaseModel)
S = TypeVar("S", bound=ResourceStatus)


@dataclass(frozen=True)
class Pass(Generic[R, S]):
    """What one reconcile knows once the body is parsed."""

    body: dict[str, Any]
    resource: R
    prev: S
    generation: int
    now: datetime

    @property
    def namespace(self) -> str:
        """The resource's namespace."""
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        """The resource's name."""
        return str(self.body["metadata"]["name"])


class Adapter(ABC, Generic[R, S]):
    """What a kind contributes to the reconcile: each step for its own resource. `resolve` and `plan` may
    raise InvalidSpecError (the spec cannot work: reported, never retried)."""

    info: KindInfo
    resource_model: type[R]
    status_model: type[S]
    settled: frozenset[str]
    """Phases after which nothing happens until the spec changes."""

    @abstractmethod
    def resolve(self, rc: Pass[R, S], lookup: Lookup) -> Any:
        """What the resource refers to, or the Waiting it is held by."""

    @abstractmethod
    def plan(self, rc: Pass[R, S], resolved: Any) -> Any:
        """The workload (pure)."""

    @abstractmethod
    def render(self, plan: Any) -> list[dict[str, Any]]:
        """The workload's manifests (pure)."""

    @abstractmethod
    def apply(self, rc: Pass[R, S], plan: Any, manifests: list[dict[str, Any]]) -> Any:
        """Bring the children in line with the manifests; what was done and seen."""

    @abstractmethod
    def observe(self, rc: Pass[R, S], resolved: Any, plan: Any, applied: Any) -> Any:
        """The observation derive reads (children, progress file)."""

    @abstractmethod
    def derive(self, prev: S, observed: Any, now: datetime) -> tuple[S, Action]:
        """The new status and the action it asks for (pure)."""

    @abstractmethod
    def early(self, generation: int, *, spec_error: str | None = None, waiting: Waiting | None = None) -> Any:
        """The observation of a reconcile that stopped before planning: an invalid spec, or a wait."""

    def carry_out(self, rc: Pass[R, S], plan: Any, applied: Any, status: S, action: Action) -> None:
        """Do what derive asked for and post the Events it deserves (most kinds: nothing)."""


def reconcile(adapter: Adapter[R, S], body: dict[str, Any], lookup: Lookup) -> str:
    """One reconcile of `body`; the result as metrics count it (ok, waiting). An invalid spec is
    published and raised as kopf.PermanentError; API and store errors propagate (Kopf retries)."""
    meta = body["metadata"]
    generation = int(meta.get("generation") or 1)
    prev = parse_status(adapter.status_model, body)
    now = datetime.now(UTC)
    if getattr(prev, "phase", None) in adapter.settled and prev.observed_generation == generation:
        return "ok"
    try:
        # parse: the body into the API model (field errors name the field as the user wrote it)
        rc = Pass(body, adapter.resource_model.model_validate(body), prev, generation, now)
        # resolve: references through the lookup; waiting is a state with a condition, not an error
        resolved = adapter.resolve(rc, lookup)
        if isinstance(resolved, Waiting):
            status, _ = adapter.derive(prev, adapter.early(generation, waiting=resolved), now)
            publish_status(body, prev, status)
            return "waiting"
        # plan: the workload the spec asks for (pure)
        plan = adapter.plan(rc, resolved)
    except ValidationError as exc:
        _fail_invalid(adapter, body, prev, generation, spec_error_message(exc), now)
    except InvalidSpecError as exc:
        _fail_invalid(adapter, body, prev, generation, str(exc), now)
    # render: the manifests (pure)
    manifests = adapter.render(plan)
    # apply: server-side apply, and what the kind decides about its live children
    applied = adapter.apply(rc, plan, manifests)
    # observe: the children and the progress file as they are now
    observed = adapter.observe(rc, resolved, plan, applied)
    # derive: phase, conditions and the action asked for (pure), then carry the action out
    status, action = adapter.derive(prev, observed, now)
    adapter.carry_out(rc, plan, applied, status, action)
    # publish: one status patch, only when something changed
    publish_status(body, prev, status)
    return "ok"


def _fail_invalid(adapter: Adapter[R, S], body: dict[str, Any], prev: S, generation: int, message: str,
                  now: datetime) -> NoReturn:
    """Publish the InvalidSpec status and stop retrying (the next spec change reconciles again)."""
    status, _ = adapter.derive(prev, adapter.early(generation, spec_error=message), now)
    publish_status(body, prev, status)
    raise kopf.PermanentError(message)


def on_event(adapter: Adapter[R, S], body: kopf.Body, handler_kwargs: Mapping[str, Any]) -> None:
    """A change handler's reconcile (creation, spec change, operator start), counted and timed."""
    started = time.monotonic()
    result = "error"
    try:
        result = reconcile(adapter, dict(body), cluster_lookup(body["metadata"]["namespace"], handler_kwargs))
    except kopf.PermanentError:
        result = "invalid"
        raise
    finally:
        metrics.RECONCILES.labels(adapter.info.kind, result).inc()
        metrics.RECONCILE_SECONDS.labels(adapter.info.kind).observe(time.monotonic() - started)


def on_tick(adapter: Adapter[R, S], body: kopf.Body, handler_kwargs: Mapping[str, Any]) -> None:
    """A timer's reconcile, the same for every kind: an invalid spec is already in status and is not
    retried; every other error propagates, so Kopf logs it and the next tick tries again."""
    with contextlib.suppress(kopf.PermanentError):
        on_event(adapter, body, handler_kwargs)
