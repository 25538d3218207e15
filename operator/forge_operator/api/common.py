"""What the three resources share: group/version, conditions, references, scheduling."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import ConfigDict, Field

from forge_trainer.config import WireModel
from forge_trainer.config.wire import (
    rfc3339 as rfc3339,  # re-exported: status times are written as the contract writes them
)

GROUP = "forge.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
FIELD_MANAGER = "forge-operator"
LABEL_PREFIX = "forge.ai"

# Kubernetes object names: DNS-1123 subdomain for most objects, label for those used as hostnames.
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
NAME_MAX = 52  # leaves room for the suffixes children get ("-prepare", "-config", ...)

STORE_URI_PATTERN = r"^(s3://[a-z0-9][-a-z0-9.]*(/[^/]+)*/?|file:///[^:]*|[^:]+)$"
"""A store URI as a spec may write it: `s3://bucket/key` in lowercase with no empty path segment, or a local
path (`/abs`, `./rel`, `data/`, `file:///abs`; `forge run` only). Anything else (`S3://`, `s3://b//key`,
another scheme) is refused by the API server; resolve/ then keeps keys inside the namespace's prefix."""
StoreUri = Annotated[str, Field(min_length=1, max_length=2048, pattern=STORE_URI_PATTERN)]


def now_rfc3339() -> str:
    """The current time as Kubernetes writes it."""
    return rfc3339(datetime.now(UTC))


def parse_time(value: object) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339 text, or a datetime from a client) as an aware datetime; None if
    absent or unreadable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class ConditionStatus(StrEnum):
    """Standard condition status."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(WireModel):
    """A standard Kubernetes condition, as kubectl, ArgoCD and kstatus read it."""

    type: str
    """Condition type, e.g. Ready, InvalidSpec, DatasetReady."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str
    """One CamelCase word saying why."""
    message: str = ""
    """A sentence for a person."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""
    observed_generation: int | None = None
    """The metadata.generation this condition was computed for."""


class ResourceStatus(WireModel):
    """Fields every Forge status has."""

    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    """The metadata.generation the operator last acted on."""
    conditions: list[Condition] = Field(default_factory=list)
    """Standard conditions; Ready is the summary."""
    message: str | None = None
    """The latest notable thing that happened, for a person."""


class SecretRef(WireModel):
    """A Secret in the same namespace."""

    name: Annotated[str, Field(pattern=DNS1123_SUBDOMAIN, max_length=253)]
    """Secret name."""


class Toleration(WireModel):
    """A pod toleration (the fields of core/v1 Toleration)."""

    key: str | None = None
    """Taint key the toleration applies to; empty matches all keys."""
    operator: str | None = None
    """Exists or Equal."""
    value: str | None = None
    """Taint value to match."""
    effect: str | None = None
    """NoSchedule, PreferNoSchedule or NoExecute."""
    toleration_seconds: int | None = None
    """How long a NoExecute taint is tolerated."""


class ComputeResources(WireModel):
    """CPU and memory for each pod (Kubernetes quantities)."""

    cpu: str | None = None
    """CPU request and limit, e.g. "8" or "500m"."""
    memory: str | None = None
    """Memory request and limit, e.g. "64Gi"."""


class RetentionPolicy(StrEnum):
    """What deleting the resource removes from the object store."""

    DELETE = "Delete"
    """Remove everything the resource produced."""
    RETAIN = "Retain"
    """Leave everything in place (an audit record is still written)."""
    KEEP_FINAL = "KeepFinal"
    """Remove intermediate artifacts (checkpoints, progress) but keep the final output."""


class RetentionSpec(WireModel):
    """What happens to produced artifacts when the resource is deleted."""

    on_delete: RetentionPolicy = RetentionPolicy.DELETE
    """Delete, Retain, or KeepFinal."""
