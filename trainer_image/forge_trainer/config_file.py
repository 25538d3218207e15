"""Reading a workload's config file (YAML or JSON) into its model, with errors that name the file
and the field: used by the command line and by a running training loop that re-reads its config."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from forge_trainer.config.wire import validation_problems
from forge_trainer.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def format_validation_error(exc: ValidationError, where: str) -> str:
    """One line per problem, each naming `where` (the file) and the field by its wire path."""
    return "\n".join(f"{where}: {problem}" for problem in validation_problems(exc))


def load_config(path: Path, model: type[M]) -> M:
    """Read a YAML or JSON config file into `model`; errors name the file and field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML/JSON: {exc}") from exc
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path))) from exc
