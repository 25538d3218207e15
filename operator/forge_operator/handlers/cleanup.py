"""What every finalizer does: wait while something still uses the resource, then remove its artifacts as
its retention says, audit, tell. While the object store cannot be reached the resource stays, with a
DeletionBlocked condition and Event saying why and how to let it go anyway: the annotation
`forge.ai/abandon-artifacts: "<reason>"` approves leaving the artifacts in place, and is recorded."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kopf

from forge_operator import metrics
from forge_operator.api import kind_info
from forge_operator.api.common import API_VERSION, Condition, ConditionStatus, RetentionPolicy, now_rfc3339
from forge_operator.handlers.indexes import cluster_lookup
from forge_operator.handlers.reconcile import gate
from forge_operator.handlers.runtime import log, post_event, runtime
from forge_operator.plan.naming import audit_uri
from forge_operator.resolve.usage import usage
from forge_operator.status.conditions import DELETION_BLOCKED, set_condition
from forge_operator.status.deletion import (
    ABANDON_ANNOTATION,
    abandonment_approver,
    abandonment_reason,
    store_blocked,
)
from forge_operator.store import StoreError
from forge_operator.store.connection import StoreTimeouts, endpoint_of, open_store, scrub
from forge_operator.store.deletion import DeletionJournal, DeletionReport, delete_artifacts

SLICE_BATCHES = 50
"""Batches (of 1000 objects) one finalizer call deletes before it hands back to Kopf and continues."""
# recording an abandonment must not hold the finalizer long when the store is the reason for it
_ABANDON_TIMEOUTS = StoreTimeouts(connect=3.0, read=5.0, retries=0)


def _journal(report: DeletionReport, timeouts: StoreTimeouts | None = None) -> DeletionJournal:
    settings = runtime().settings
    store, key = open_store(audit_uri(settings.store_bucket, report.namespace), settings.store, timeouts)
    return DeletionJournal(store, key, report)


def release_artifacts(body: dict[str, Any], kind: str, default_policy: str) -> DeletionReport | None:
    """Delete (part of) the resource's store prefix as spec.retention.onDelete says, recording every batch
    in the audit log before deleting it. Returns the report once the prefix is done (summary written,
    Event posted), None when more is left for the next call."""
    report = DeletionReport.of(body, kind, default_policy, runtime().settings.store_bucket)
    journal = _journal(report)
    journal.resume()  # what an earlier pass (before a restart or an error) already recorded
    store, prefix = open_store(report.output_uri, runtime().settings.store)
    if not delete_artifacts(store, prefix, RetentionPolicy(report.policy), journal, max_batches=SLICE_BATCHES):
        return None
    where = journal.finish()
    post_event(body, "ArtifactsDeleted",
               f"{report.deleted_objects} objects ({report.deleted_bytes} bytes) deleted, {report.kept_objects} "
               f"kept ({report.policy}); report at {where}")
    metrics.forget(kind, report.namespace, report.name)
    return report


def abandon_artifacts(body: dict[str, Any], kind: str, default_policy: str, reason: str) -> None:
    """Let the resource go without deleting its artifacts, as the abandonment annotation approves: recorded
    in the audit log, or, when the store cannot take the record, in a Warning Event and the operator log."""
    report = DeletionReport.of(body, kind, default_policy, runtime().settings.store_bucket)
    record = {"reason": reason, "approvedBy": abandonment_approver(body), "artifactsLeftAt": report.output_uri}
    try:
        journal = _journal(report, _ABANDON_TIMEOUTS)
        journal.resume()
        where = journal.finish("abandoned", **record)
        message = (f"artifacts under {report.output_uri} left in place as {ABANDON_ANNOTATION} approves "
                   f"({reason!r}); {report.deleted_objects} objects had been deleted; recorded at {where}")
    except StoreError as exc:
        message = (f"artifacts under {report.output_uri} left in place as {ABANDON_ANNOTATION} approves "
                   f"({reason!r}); the object store could not record it ({scrub(str(exc))})")
        log.warning("%s %s/%s: abandonment not recorded in the store: %s", kind, report.namespace, report.name,
                    json.dumps(report.to_dict("abandoned", **record), sort_keys=True))
    post_event(body, "ArtifactsAbandoned", message, warning=True)
    metrics.ARTIFACTS_ABANDONED.labels(kind).inc()
    metrics.forget(kind, report.namespace, report.name)


def finalize(body: kopf.Body, kind: str, default_policy: str, handler_kwargs: Mapping[str, Any]) -> None:
    """The finalizer of a resource: while another resource still uses it, say why and retry after a
    reconcile interval; then release its artifacts (or abandon them, when annotated). A store that fails
    blocks the deletion with a condition and an Event naming the error and the way out. Runs under the
    object's reconcile lock: a reconcile that started before the deletion finishes first."""
    with gate(str(body["metadata"]["uid"])).lock:
        _finalize(body, kind, default_policy, handler_kwargs)


def _finalize(body: kopf.Body, kind: str, default_policy: str, handler_kwargs: Mapping[str, Any]) -> None:
    meta = body["metadata"]
    interval = runtime().settings.reconcile_interval
    users = usage(kind, meta["name"], cluster_lookup(meta["namespace"], handler_kwargs))
    if users:
        message = f"still used by {', '.join(users)}; deletion waits until it is gone"
        _block(dict(body), kind, "InUse", message)
        raise kopf.TemporaryError(message, delay=interval)
    reason = abandonment_reason(dict(body))
    if reason:
        abandon_artifacts(dict(body), kind, default_policy, reason)
        return
    try:
        report = release_artifacts(dict(body), kind, default_policy)
    except StoreError as exc:
        message, delay = store_blocked(kind_info(kind).plural, meta["name"], meta["namespace"],
                                       endpoint_of(runtime().settings.store), scrub(str(exc)),
                                       int(handler_kwargs.get("retry") or 0), interval)
        _block(dict(body), kind, "StoreUnavailable", message)
        raise kopf.TemporaryError(message, delay=delay) from exc
    if report is None:
        raise kopf.TemporaryError("deleting artifacts: continuing with the next batches", delay=0.1)


def _block(body: dict[str, Any], kind: str, reason: str, message: str) -> None:
    """Say why the deletion waits: a Warning Event and the DeletionBlocked condition on the resource."""
    metrics.DELETIONS_BLOCKED.labels(kind, reason).inc()
    post_event(body, "DeletionBlocked", message, warning=True)
    meta = body["metadata"]
    status = body.get("status") or {}
    conditions = [Condition.model_validate(c) for c in status.get("conditions") or []]
    updated = set_condition(conditions, DELETION_BLOCKED, ConditionStatus.TRUE, reason, message,
                            status.get("observedGeneration"), now_rfc3339())
    if updated == conditions:
        return  # a wait that says the same thing again costs no write
    runtime().kube.patch_status(API_VERSION, kind, meta["namespace"], meta["name"],
                                {"conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True)
                                                for c in updated]})

