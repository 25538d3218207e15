"""Names and places derived from a resource: never random, so every step is safe to repeat."""

from __future__ import annotations

import hashlib

from forge_operator.api.common import LABEL_PREFIX


def child_name(parent: str, suffix: str) -> str:
    """`<parent>-<suffix>`, shortened with a stable hash when it would exceed 63 characters."""
    name = f"{parent}-{suffix}"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{parent[: 63 - len(suffix) - 10]}-{digest}-{suffix}"


def output_uri(bucket: str, namespace: str, kind: str, name: str, uid: str) -> str:
    """Where a resource's artifacts live: one prefix per resource, never shared across namespaces."""
    return f"s3://{bucket}/forge/{namespace}/{kind.lower()}/{name}/{uid}"


def audit_uri(bucket: str, namespace: str) -> str:
    """Prefix of a namespace's deletion reports (outside any one resource's prefix)."""
    return f"s3://{bucket}/forge/{namespace}/_audit"


def selector_labels(kind: str, name: str) -> dict[str, str]:
    """Labels that identify the children of one resource."""
    return {f"{LABEL_PREFIX}/{kind.lower()}": name}


def common_labels(kind: str, name: str, component: str) -> dict[str, str]:
    """Labels every child carries."""
    return {
        "app.kubernetes.io/name": "forge",
        "app.kubernetes.io/managed-by": "forge-operator",
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": name,
        **selector_labels(kind, name),
    }
