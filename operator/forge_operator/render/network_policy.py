"""The NetworkPolicy that fences a workload's pods."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from forge_operator.plan.workload import StoreAccess, WorkloadMeta
from forge_operator.render.pod import object_meta

DNS_EGRESS: dict[str, Any] = {"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}


def store_port(endpoint: str | None, secure: bool) -> int:
    """TCP port of the object store endpoint."""
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
        if parsed.port:
            return parsed.port
    return 443 if secure else 80


def network_policy(name: str, meta: WorkloadMeta, store: StoreAccess, *, ingress: list[dict[str, Any]],
                   peers: bool = False, extra_egress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The NetworkPolicy fencing a workload's pods (those carrying its labels): ingress only as
    `ingress` says (empty: none), egress only to DNS, the object-store port and, with `peers`, the
    workload's own pods; then the spec's `network.extraEgress` rules, appended (they only widen)."""
    own = {"podSelector": {"matchLabels": dict(meta.labels)}}
    egress: list[dict[str, Any]] = [{"to": [own]}] if peers else []
    egress += [DNS_EGRESS, {"ports": [{"protocol": "TCP", "port": store_port(store.endpoint, store.secure)}]}]
    egress += list(extra_egress or [])
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(name, meta),
        "spec": {
            "podSelector": {"matchLabels": dict(meta.labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": egress,
        },
    }
