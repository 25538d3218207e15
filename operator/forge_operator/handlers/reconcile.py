"""One reconcile for every kind: parse -> resolve -> plan -> render -> apply -> observe -> derive ->
publish. A kind contributes a small adapter (handlers/dataset.py, training.py, deployment.py); this
module holds the order of the steps, the waiting policy and the error policy, once."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from forge_operator import metrics
from forge_operator.api.errors import spec_error_message
from forge_operator.handlers.adapter import Adapter, Pass, R, S
from forge_operator.handlers.indexes import cluster_lookup
from forge_operator.handlers.runtime import parse_status, publish_status
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.resolve.lookup import Lookup
from forge_operator.status.conditions import Waiting


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
