"""The base of every model of the workload contract (camelCase on the wire, unknown fields refused), and
how a time is written in it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """Base of every wire model: camelCase aliases, unknown fields refused, docstrings kept."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """This model as the JSON-ready dict a manifest or config file holds (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


RFC3339 = "%Y-%m-%dT%H:%M:%SZ"
"""How a time is written on the wire (RFC 3339, seconds, UTC), as Kubernetes writes its timestamps."""


def rfc3339(when: datetime) -> str:
    """`when` as the wire writes a time (a naive `when` is taken to be UTC)."""
    return when.astimezone(UTC).strftime(RFC3339) if when.tzinfo else when.strftime(RFC3339)


def validation_problems(exc: ValidationError, root: str = "") -> list[str]:
    """Each problem in `exc` as `<field path>: <message>`, the path as the user wrote it (wire names joined by
    dots, under `root` when given: `spec.resources.minNodes: ...`)."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if root and loc and loc[0] == root:
            loc = loc[1:]
        path = ".".join([root, *loc] if root else loc) or "(root)"
        parts.append(f"{path}: {err['msg'].removeprefix('Value error, ')}")
    return parts
