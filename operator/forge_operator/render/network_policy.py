"""The NetworkPolicy that fences a workload's pods: every rule names its peers, so nothing in it means
"any address". Egress goes to DNS (kube-dns only), the object store (the peers the installation
configured; none configured: no store egress at all) and, for training, the workload's own pods and its
rendezvous store; then the spec's `network.extraEgress`, appended. A training run's rendezvous store
answers only the run's pods and connects nowhere. Ingress on a port comes only from the resource's namespace
and the configured Prometheus namespace (a deployment adds its `network.allowFrom`)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from forge_operator.plan.workload import NetworkFence, StoreAccess, WorkloadMeta
from forge_operator.render.pod import object_meta
from forge_operator.settings import NAMESPACE_NAME_LABEL

DNS_PORTS: list[dict[str, Any]] = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
STORE_EGRESS_ANNOTATION = "forge.ai/store-egress"
"""Set on a NetworkPolicy that grants no egress to the store because the installation named no store peer."""
NO_STORE_PEER = ("denied: the operator has no store peer configured (chart values networkPolicy.store.*, "
                 "FORGE_STORE_PEER_CIDRS / FORGE_STORE_PEER_NAMESPACE_LABELS / FORGE_STORE_PEER_POD_LABELS)")


def store_port(endpoint: str | None, secure: bool) -> int:
    """TCP port of the object store endpoint."""
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"//{endpoint}")
        if parsed.port:
            return parsed.port
    return 443 if secure else 80


def same_namespace() -> dict[str, Any]:
    """The peer "every pod of the policy's own namespace"."""
    return {"podSelector": {}}


def scrapers(fence: NetworkFence) -> list[dict[str, Any]]:
    """The peers that may reach a metrics or serving port: the resource's namespace and Prometheus's."""
    peers = [same_namespace()]
    if fence.prometheus_namespace:
        peers.append({"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: fence.prometheus_namespace}}})
    return peers


def port_ingress(port: int, peers: list[dict[str, Any]]) -> dict[str, Any]:
    """An ingress rule: `peers` may reach TCP `port`."""
    return {"from": peers, "ports": [{"protocol": "TCP", "port": port}]}


def port_egress(port: int, peers: list[dict[str, Any]]) -> dict[str, Any]:
    """An egress rule: the pods may reach `peers` on TCP `port`."""
    return {"to": peers, "ports": [{"protocol": "TCP", "port": port}]}


def default_egress(meta: WorkloadMeta, store: StoreAccess, fence: NetworkFence, *, peers: bool) -> list[dict[str, Any]]:
    """The egress rules every workload gets: its own pods (with `peers`), DNS, the store."""
    egress: list[dict[str, Any]] = []
    if peers:
        egress.append({"to": [{"podSelector": {"matchLabels": dict(meta.labels)}}]})
    if fence.dns_peers:
        egress.append({"to": [dict(p) for p in fence.dns_peers], "ports": [dict(p) for p in DNS_PORTS]})
    if fence.store_peers:
        port = fence.store_port or store_port(store.endpoint, store.secure)
        egress.append({"to": [dict(p) for p in fence.store_peers], "ports": [{"protocol": "TCP", "port": port}]})
    return egress


def network_policy(name: str, meta: WorkloadMeta, store: StoreAccess, fence: NetworkFence, *,
                   ingress: list[dict[str, Any]], peers: bool = False,
                   extra_egress: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The NetworkPolicy fencing a workload's pods (those carrying its labels): ingress only as `ingress`
    says (empty: none), egress as `default_egress` says, then the spec's `network.extraEgress` rules,
    appended (they only widen)."""
    metadata = object_meta(name, meta)
    if not fence.store_peers:
        metadata["annotations"] = {STORE_EGRESS_ANNOTATION: NO_STORE_PEER}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": dict(meta.labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": default_egress(meta, store, fence, peers=peers) + list(extra_egress or []),
        },
    }


def sealed_network_policy(name: str, meta: WorkloadMeta, *, ingress: list[dict[str, Any]]) -> dict[str, Any]:
    """A NetworkPolicy for pods that only answer (a training run's rendezvous store): ingress only as
    `ingress` says, no egress at all, not even DNS."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_meta(name, meta),
        "spec": {
            "podSelector": {"matchLabels": dict(meta.labels)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [],
        },
    }
