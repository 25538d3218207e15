"""JSON Schema validation whose regular expressions run on a clock. jsonschema matches `pattern`,
`patternProperties` and the `additionalProperties` that depends on them with `re`, which has no
timeout: a task schema such as `{"pattern": "^(a+)+$"}` takes exponential time on a completion of
a few dozen characters. Here those three keywords match through the `regex` module (the regex
verifier's engine, same syntax) against one deadline for the whole validation; past it, TimeoutError.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import jsonschema
import regex as regex_module
from jsonschema import ValidationError

_DEADLINE: ContextVar[float] = ContextVar("forge_schema_pattern_deadline", default=0.0)


def _search(pattern: str, text: str) -> bool:
    """`re.search(pattern, text)` through the regex module, within what is left of the deadline."""
    remaining = _DEADLINE.get() - time.monotonic()
    if remaining <= 0:
        raise TimeoutError(f"pattern {pattern!r} ran past the time limit")
    return regex_module.search(pattern, text, timeout=remaining) is not None


def _pattern(validator: Any, pattern: str, instance: Any, _schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator: Any, patterns: dict[str, Any], instance: Any,
                        _schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(validator: Any, additional: Any, instance: Any,
                           schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = [k for k in instance if k not in properties and not any(_search(p, k) for p in patterns)]
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield ValidationError(f"additional properties are not allowed ({', '.join(map(repr, sorted(extras)))} "
                              f"{'was' if len(extras) == 1 else 'were'} unexpected)")


@functools.cache
def _timed(validator_cls: Any) -> Any:
    return jsonschema.validators.extend(validator_cls, {
        "pattern": _pattern, "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
    })


def untimed_patterns(schema: Any) -> str | None:
    """Why `schema` would still run a pattern through `re`, or None. jsonschema's `unevaluatedProperties`
    re-matches `patternProperties` internally, so a schema using both cannot be bounded here."""
    stack = [schema]
    seen_unevaluated = seen_patterns = False
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            seen_unevaluated |= "unevaluatedProperties" in node
            seen_patterns |= isinstance(node.get("patternProperties"), dict) and bool(node["patternProperties"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if seen_unevaluated and seen_patterns:
        return ("unevaluatedProperties together with patternProperties is not supported "
                "(jsonschema would match those patterns without a time limit)")
    return None


def best_error(validator_cls: Any, schema: Any, value: Any, seconds: float) -> ValidationError | None:
    """jsonschema's most relevant error of `value` against `schema` (None when valid), every pattern
    matched within `seconds` in all; TimeoutError past them, regex.error for a pattern it cannot compile."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        errors = _timed(validator_cls)(schema).iter_errors(value)
        error: ValidationError | None = jsonschema.exceptions.best_match(errors)
        return error
    finally:
        _DEADLINE.reset(token)
