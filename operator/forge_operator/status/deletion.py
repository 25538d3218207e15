"""What a blocked deletion says (pure): when to try again, the message naming the store's error and the way
out, and who approved leaving the artifacts in place."""

from __future__ import annotations

from typing import Any

ABANDON_ANNOTATION = "forge.ai/abandon-artifacts"
"""Set to a reason, it approves letting the resource go with its artifacts left in the store (recorded)."""
MAX_RETRY_DELAY = 60.0
"""The longest pause between deletion attempts while the store is down (the abandonment annotation is
seen at the next attempt, so this is also how long it may take to act)."""


def abandonment_reason(body: dict[str, Any]) -> str:
    """The reason given in the abandonment annotation; empty when the resource does not carry it."""
    return str((body["metadata"].get("annotations") or {}).get(ABANDON_ANNOTATION) or "").strip()


def store_blocked(plural: str, name: str, namespace: str, endpoint: str, error: str, retry: int,
                  interval: float) -> tuple[str, float]:
    """The DeletionBlocked message for a store that failed on attempt `retry` (from 0), and the delay before
    the next attempt (doubling from the reconcile interval, at most MAX_RETRY_DELAY)."""
    delay = min(interval * 2 ** retry, max(MAX_RETRY_DELAY, interval))
    message = (f"cannot delete the artifacts: object store {endpoint}: {error}; attempt {retry + 1}, "
               f"next in {delay:.0f}s. To let it go and leave the artifacts in place: kubectl annotate "
               f"{plural}/{name} -n {namespace} {ABANDON_ANNOTATION}='<reason>'")
    return message, delay


def abandonment_approver(body: dict[str, Any]) -> str:
    """Who set the abandonment annotation, as the API server's managedFields say (e.g. kubectl-annotate)."""
    for entry in body["metadata"].get("managedFields") or []:
        annotations = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get("f:annotations") or {}
        if f"f:{ABANDON_ANNOTATION}" in annotations:
            return f"{entry.get('manager', 'unknown')} ({entry.get('operation', '?')} at {entry.get('time', '?')})"
    return "unknown"
