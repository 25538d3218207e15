"""What every finalizer does: wait while something still uses the resource, then remove its artifacts
as its retention says, audit, tell."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from forge_operator import metrics
from forge_operator.api.common import RetentionPolicy
from forge_operator.handlers.indexes import cluster_lookup
from forge_operator.handlers.runtime import post_event, runtime
from forge_operator.plan.naming import audit_uri, output_uri
from forge_operator.resolve.usage import usage
from forge_operator.store import open_uri
from forge_operator.store.artifacts import DeletionReport, delete_artifacts, write_deletion_report


def release_artifacts(body: dict[str, Any], kind: str, default_policy: str) -> DeletionReport:
    """Delete the resource's store prefix as spec.retention.onDelete says, write the deletion report
    (objects, bytes, sha256) to the namespace's audit prefix, and post an Event."""
    rt = runtime()
    meta = body["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    raw_policy = ((body.get("spec") or {}).get("retention") or {}).get("onDelete", default_policy)
    policy = RetentionPolicy(raw_policy)
    out = output_uri(rt.settings.store_bucket, ns, kind, name, uid)
    store, prefix = open_uri(out, rt.settings.store)
    report = delete_artifacts(store, prefix, policy, DeletionReport(
        kind=kind, namespace=ns, name=name, uid=uid, policy=policy.value, output_uri=out))
    where = write_deletion_report(audit_uri(rt.settings.store_bucket, ns), rt.settings.store, report)
    post_event(body, "ArtifactsDeleted",
               f"{len(report.deleted)} objects ({report.deleted_bytes} bytes) deleted, {len(report.kept)} kept "
               f"({policy.value}); report at {where}")
    metrics.forget(kind, ns, name)
    return report


def finalize(body: kopf.Body, kind: str, default_policy: str, handler_kwargs: Mapping[str, Any]) -> None:
    """The finalizer of a resource: while another resource still uses it, post why and retry after a
    reconcile interval (kopf.TemporaryError); then release its artifacts."""
    meta = body["metadata"]
    users = usage(kind, meta["name"], cluster_lookup(meta["namespace"], handler_kwargs))
    if users:
        message = f"still used by {', '.join(users)}; deletion waits until it is gone"
        post_event(dict(body), "DeletionBlocked", message, warning=True)
        raise kopf.TemporaryError(message, delay=runtime().settings.reconcile_interval)
    release_artifacts(dict(body), kind, default_policy)
