"""One reconcile for every kind: parse -> resolve -> plan -> render -> apply -> observe -> derive ->
publish. A kind contributes a small adapter (handlers/dataset.py, training.py, deployment.py); this
module holds the order of the steps, the waiting policy and the error policy, once.

An object being deleted is not reconciled: from its deletionTimestamp on, the finalizer owns it (a timer's
reconcile must not start a new Job attempt or rewrite status while the artifacts are being released).

One reconcile at a time per object: Kopf runs a timer concurrently with the change handlers of the same
object, and both hand over a body whose status may predate the last one the operator wrote. Every entry
point therefore takes the object's lock and reconciles the object as the API server holds it then."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from forge_operator import metrics
from forge_operator.api.errors import spec_error_message
from forge_operator.handlers.adapter import Adapter, Pass, R, S
from forge_operator.handlers.indexes import cluster_lookup
from forge_operator.handlers.runtime import StaleStatusError, parse_status, publish_status, read_current
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.resolve.lookup import Lookup, deleting
from forge_operator.status.conditions import Waiting

log = logging.getLogger("forge.operator")


class _Gate:
    """The lock of one object's reconciles (an object, so the registry can hold it weakly and forget it
    once no reconcile of that object runs or waits)."""

    __slots__ = ("__weakref__", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()


_gates: weakref.WeakValueDictionary[str, _Gate] = weakref.WeakValueDictionary()
_gates_lock = threading.Lock()


def gate(uid: str) -> _Gate:
    """The reconcile lock of the object with this uid (the same one for every caller while any holds it)."""
    with _gates_lock:
        found = _gates.get(uid)
        if found is None:
            found = _Gate()
            _gates[uid] = found
        return found


def reconcile(adapter: Adapter[R, S], body: dict[str, Any], lookup: Lookup) -> str:
    """One reconcile of `body` (the object as it is now, under its lock: see on_event); the result as
    metrics count it (ok, waiting). An invalid spec is published and raised as kopf.PermanentError; API
    and store errors propagate (Kopf retries)."""
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
    """A change handler's reconcile (creation, spec change, operator start), counted and timed: it waits
    for a reconcile of the same object that is running, then reconciles the object as it is now."""
    _reconcile_alone(adapter, dict(body), handler_kwargs, wait=True)


def on_tick(adapter: Adapter[R, S], body: kopf.Body, handler_kwargs: Mapping[str, Any]) -> None:
    """A timer's reconcile, the same for every kind: skipped while another reconcile of the object runs
    (that one sees what the tick would); an invalid spec is already in status and is not retried; every
    other error propagates, so Kopf logs it and the next tick tries again."""
    with contextlib.suppress(kopf.PermanentError):
        _reconcile_alone(adapter, dict(body), handler_kwargs, wait=False)


def _reconcile_alone(adapter: Adapter[R, S], body: dict[str, Any], handler_kwargs: Mapping[str, Any], *,
                     wait: bool) -> None:
    """Reconcile under the object's lock (returns at once if `wait` is false and the lock is taken), from
    the object re-read after taking it: the body handed over may carry a status written before the last
    reconcile's. Counted and timed; a reconcile that found its view stale (StaleStatusError) is retried."""
    held = gate(str(body["metadata"]["uid"]))
    if not held.lock.acquire(blocking=wait):
        return
    try:
        current = read_current(body)
        if current is None:
            return  # deleted (or replaced by a new object of that name, which its own handlers reconcile)
        if deleting(current):
            return  # being deleted: the finalizer (cleanup.finalize, under this lock too) owns it from now on
        started = time.monotonic()
        result = "error"
        try:
            result = reconcile(adapter, current, cluster_lookup(current["metadata"]["namespace"], handler_kwargs))
        except kopf.PermanentError:
            result = "invalid"
            raise
        except StaleStatusError as exc:
            # another writer (an operator replica outside this lock) moved on: act again on what it wrote
            log.info("%s: %s", adapter.info.kind, exc)
            raise kopf.TemporaryError(str(exc), delay=1) from exc
        finally:
            metrics.RECONCILES.labels(adapter.info.kind, result).inc()
            metrics.RECONCILE_SECONDS.labels(adapter.info.kind).observe(time.monotonic() - started)
    finally:
        held.lock.release()
