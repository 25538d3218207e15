"""Turn pydantic validation errors into messages that name the field as the user wrote it."""

from __future__ import annotations

from pydantic import ValidationError


def spec_error_message(exc: ValidationError, root: str = "spec") -> str:
    """One `; `-joined message, each part `spec.<camelCase path>: <problem>`."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] == root:
            loc = loc[1:]
        path = ".".join([root, *loc]) if loc else root
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {msg}")
    return "; ".join(parts)
