"""The Lookup of `forge run`: the records of the resources run so far (what `forge get` shows)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecordLookup:
    """A Lookup over the local runner's records ((kind, name) -> saved record; one namespace)."""

    records: Mapping[tuple[str, str], dict[str, Any]]

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        """The record of `kind`/`name`, or None when it has not run."""
        return self.records.get((kind, name))

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Every record of `kind`."""
        return [record for (k, _), record in self.records.items() if k == kind]
