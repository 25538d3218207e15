"""What references are resolved against: the Forge resources of one namespace."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

Index = Mapping[tuple[str | None, str], Iterable[dict[str, Any]]]
"""(namespace, name) -> [summary] of the resources of one kind (the shape of a Kopf index)."""


class Lookup(Protocol):
    """The Forge resources of one namespace as the resolver reads them: bodies with `metadata` (name,
    deletionTimestamp), `spec` and `status` in their wire form (camelCase)."""

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The resource of `kind` named `name`, or None when there is none."""
        ...

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Every resource of `kind`."""
        ...


def spec_of(body: dict[str, Any] | None) -> dict[str, Any]:
    """The body's spec (empty when absent)."""
    return dict((body or {}).get("spec") or {})


def status_of(body: dict[str, Any] | None) -> dict[str, Any]:
    """The body's status (empty when absent)."""
    return dict((body or {}).get("status") or {})


def deleting(body: dict[str, Any]) -> bool:
    """Whether the resource is being deleted (it no longer counts as a user of anything)."""
    return bool((body.get("metadata") or {}).get("deletionTimestamp"))


def summary(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the resolver reads of a resource body (what an index keeps of it)."""
    meta = body.get("metadata") or {}
    return {"metadata": {"name": meta.get("name"), "deletionTimestamp": meta.get("deletionTimestamp")},
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


@dataclass(frozen=True)
class IndexLookup:
    """A Lookup over the operator's indexes (kind -> Kopf index of summaries), kept current by the watch:
    a reconcile costs no API read however many resources wait on one another."""

    namespace: str
    indexes: Mapping[str, Index]

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The resource of `kind` named `name` in this namespace, or None."""
        found = list(self.indexes[kind].get((self.namespace, name)) or [])
        return found[0] if found else None

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Every resource of `kind` in this namespace."""
        return [body for (namespace, _), bodies in self.indexes[kind].items() if namespace == self.namespace
                for body in bodies]
