"""Network fencing every Forge workload shares: the operator gives each workload a NetworkPolicy
allowing egress only to the object store, DNS and (for training) its own rendezvous peers, each named as a
peer; a spec widens it explicitly with `network.extraEgress`, rules in the shape of Kubernetes'
NetworkPolicyEgressRule that are appended to the defaults and never narrow them. A deployment names the
clients outside its namespace that may call it with `network.allowFrom`."""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Annotated, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from forge_trainer.config import WireModel

Port = Annotated[int, Field(ge=1, le=65535)]



def checked_cidr(value: str) -> str:
    """`value` if it is a CIDR with its prefix length (10.0.0.0/8, 2001:db8::/32); a ValueError naming it else."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8") from None
    if "/" not in value:
        raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8 (the prefix length is missing)")
    return value

class NetworkProtocol(StrEnum):
    """Transport protocol of a port."""

    TCP = "TCP"
    UDP = "UDP"
    SCTP = "SCTP"


class SelectorOperator(StrEnum):
    """How a label selector requirement matches."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


class SelectorRequirement(WireModel):
    """One requirement of a label selector (the fields of meta/v1 LabelSelectorRequirement)."""

    key: Annotated[str, Field(min_length=1, max_length=317)]
    """Label key."""
    operator: SelectorOperator
    """In, NotIn, Exists or DoesNotExist."""
    values: list[str] | None = None
    """Values for In and NotIn; empty for Exists and DoesNotExist."""


class LabelSelector(WireModel):
    """A label selector (the fields of meta/v1 LabelSelector); an empty one selects everything."""

    match_labels: dict[str, str] | None = None
    """Labels that must all match."""
    match_expressions: list[SelectorRequirement] | None = None
    """Requirements that must all hold."""


class IpBlock(WireModel):
    """A range of IP addresses (the fields of networking/v1 IPBlock)."""

    model_config = ConfigDict(populate_by_name=True)

    cidr: Annotated[str, Field(min_length=1, max_length=64)]
    """Addresses allowed, in CIDR notation, e.g. 10.20.0.0/16 or 2001:db8::/32."""
    except_: list[str] | None = Field(default=None, alias="except")
    """Sub-ranges of cidr that stay blocked."""

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        return checked_cidr(value)

    @model_validator(mode="after")
    def _excepts(self) -> Self:
        outer = ipaddress.ip_network(self.cidr, strict=False)
        for sub in self.except_ or []:
            try:
                inner = ipaddress.ip_network(sub, strict=False)
            except ValueError:
                raise ValueError(f"except: {sub!r} is not a CIDR") from None
            if inner.version != outer.version or not inner.subnet_of(outer):  # type: ignore[arg-type]
                raise ValueError(f"except: {sub} is not inside cidr {self.cidr}")
        return self


class NetworkPeer(WireModel):
    """One peer (a Kubernetes NetworkPolicyPeer): either an IP block, or pods chosen by namespace and/or
    pod labels."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.ipBlock) != (has(self.namespaceSelector) || has(self.podSelector))",
         "message": "set either ipBlock, or namespaceSelector and/or podSelector"},
    ]})

    ip_block: IpBlock | None = None
    """Addresses outside the cluster (or any CIDR)."""
    namespace_selector: LabelSelector | None = None
    """Namespaces of the peer pods ({} is every namespace); with podSelector, only those pods."""
    pod_selector: LabelSelector | None = None
    """Peer pods, in the workload's namespace unless namespaceSelector is set."""

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        selectors = self.namespace_selector is not None or self.pod_selector is not None
        if self.ip_block is not None and selectors:
            raise ValueError("set either ipBlock or namespaceSelector/podSelector, not both")
        if self.ip_block is None and not selectors:
            raise ValueError("name a destination: ipBlock, namespaceSelector or podSelector")
        return self


class EgressPort(WireModel):
    """A destination port (or port range)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!has(self.endPort) || self.endPort >= self.port", "message": "endPort must not be below port"},
    ]})

    protocol: NetworkProtocol = NetworkProtocol.TCP
    """TCP, UDP or SCTP."""
    port: Port
    """Destination port number."""
    end_port: Port | None = None
    """Last port of a range starting at port."""

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.end_port is not None and self.end_port < self.port:
            raise ValueError(f"endPort ({self.end_port}) must not be below port ({self.port})")
        return self


class EgressRule(WireModel):
    """Extra destinations the workload may reach (a Kubernetes NetworkPolicyEgressRule)."""

    to: Annotated[list[NetworkPeer], Field(min_length=1, max_length=32)]
    """Destinations; at least one (allowing every destination must be written out, e.g. ipBlock 0.0.0.0/0)."""
    ports: Annotated[list[EgressPort], Field(max_length=32)] | None = None
    """Ports on those destinations; left out, every port."""


class NetworkSpec(WireModel):
    """How the workload's NetworkPolicy is widened beyond the defaults."""

    extra_egress: Annotated[list[EgressRule], Field(max_length=32)] = Field(default_factory=list)
    """Egress rules appended to the workload's NetworkPolicy; the defaults always stay, these only add."""

    def egress_rules(self) -> list[dict[str, object]]:
        """The extra rules as NetworkPolicy egress entries."""
        return [rule.to_wire() for rule in self.extra_egress]


class ServingNetworkSpec(NetworkSpec):
    """How a serving workload's NetworkPolicy is widened: extra egress, and the clients that may call it."""

    allow_from: Annotated[list[NetworkPeer], Field(max_length=32)] = Field(default_factory=list)
    """Clients that may call the serving port (8000) besides the pods of the deployment's namespace and the
    operator's Prometheus namespace (NetworkPolicyPeer shape: ipBlock, or namespaceSelector and/or
    podSelector; namespaceSelector {} is every namespace)."""

    def ingress_peers(self) -> list[dict[str, object]]:
        """The allowed clients as NetworkPolicy ingress peers."""
        return [peer.to_wire() for peer in self.allow_from]
