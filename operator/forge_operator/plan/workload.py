"""What every planned workload carries: who owns it, where it writes, how it reaches the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forge_operator.api.common import API_VERSION


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


@dataclass(frozen=True)
class WorkloadMeta:
    """Identity of a workload: namespace, owner, labels."""

    namespace: str
    owner: OwnerRef
    labels: dict[str, str] = field(default_factory=dict)
