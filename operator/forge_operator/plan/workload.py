"""What every planned workload carries: who owns it, where it writes, how it reaches the store."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from forge_operator.api.common import API_VERSION
from forge_operator.settings import NAMESPACE_NAME_LABEL, OperatorSettings
from forge_trainer.config import WireModel


class InvalidSpecError(ValueError):
    """The spec cannot be planned; the message names the field."""


@dataclass(frozen=True)
class OwnerRef:
    """The Forge resource that owns a child object."""

    kind: str
    name: str
    uid: str
    api_version: str = API_VERSION

    @classmethod
    def of(cls, body: dict[str, Any]) -> OwnerRef:
        """The owner reference of a raw resource body."""
        meta = body["metadata"]
        return cls(kind=body["kind"], name=meta["name"], uid=meta["uid"])


@dataclass(frozen=True)
class StoreAccess:
    """How a workload reaches the object store: endpoint settings plus the Secret holding keys."""

    endpoint: str | None
    secure: bool
    region: str | None
    credentials_secret: str

    @classmethod
    def of(cls, settings: OperatorSettings, credentials_secret: str | None = None) -> StoreAccess:
        """The store access of this installation; `credentials_secret` replaces its default Secret."""
        return cls(endpoint=settings.store_endpoint, secure=settings.store_secure, region=settings.store_region,
                   credentials_secret=credentials_secret or settings.credentials_secret)


def _peers(cidrs: list[str], namespace_labels: dict[str, str], pod_labels: dict[str, str]) -> tuple[dict[str, Any], ...]:
    """NetworkPolicy peers: one ipBlock per CIDR, and one selector peer when labels are given."""
    peers: list[dict[str, Any]] = [{"ipBlock": {"cidr": cidr}} for cidr in cidrs]
    selector: dict[str, Any] = {}
    if namespace_labels:
        selector["namespaceSelector"] = {"matchLabels": dict(namespace_labels)}
    if pod_labels:
        selector["podSelector"] = {"matchLabels": dict(pod_labels)}
    return (*peers, selector) if selector else tuple(peers)


@dataclass(frozen=True)
class NetworkFence:
    """Where an installation's workload pods may connect besides their own peers, as NetworkPolicy peers:
    the object store and DNS; and the namespace of the Prometheus that may scrape them. Nothing configured
    for the store means no egress to it at all (deny), never "any address"."""

    store_peers: tuple[dict[str, Any], ...] = ()
    store_port: int | None = None
    """The store pods' port when it differs from the endpoint's."""
    dns_peers: tuple[dict[str, Any], ...] = (
        {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: "kube-system"}},
         "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},)
    prometheus_namespace: str | None = None

    @classmethod
    def of(cls, settings: OperatorSettings) -> NetworkFence:
        """The fence of this installation's settings."""
        return cls(store_peers=_peers(settings.store_peer_cidrs, settings.store_peer_namespace_labels,
                                      settings.store_peer_pod_labels),
                   store_port=settings.store_peer_port,
                   dns_peers=_peers(settings.dns_peer_cidrs, settings.dns_namespace_labels, settings.dns_pod_labels),
                   prometheus_namespace=settings.prometheus_namespace or None)


@dataclass(frozen=True)
class WorkloadMeta:
    """Identity of a workload: namespace, owner, labels."""

    namespace: str
    owner: OwnerRef
    labels: dict[str, str] = field(default_factory=dict)


def config_hash(config: WireModel) -> str:
    """sha256 of a resolved workload config (its wire form, keys sorted): part of a model's lineage, and how
    `forge run` knows a finished resource is up to date."""
    canonical = json.dumps(config.to_wire(), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
