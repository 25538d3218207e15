"""Turn pydantic validation errors into messages that name the field as the user wrote it."""

from __future__ import annotations

from pydantic import ValidationError

from forge_trainer.config.wire import validation_problems


def spec_error_message(exc: ValidationError, root: str = "spec") -> str:
    """One `; `-joined message, each part `spec.<camelCase path>: <problem>`."""
    return "; ".join(validation_problems(exc, root))
