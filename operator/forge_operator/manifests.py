"""Read Forge manifests from YAML files and check them against the API models, with errors that
name the file, the document and the field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from forge_operator.api import API_VERSION, KINDS
from forge_operator.api.errors import spec_error_message


class ManifestError(Exception):
    """A manifest is malformed; the message names the file and field."""


@dataclass(frozen=True)
class LoadedManifest:
    """One parsed and validated Forge resource from a file."""

    path: Path
    index: int
    body: dict[str, Any]
    resource: BaseModel

    @property
    def kind(self) -> str:
        """The resource's kind."""
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        """The resource's name."""
        return str(self.body["metadata"]["name"])


def manifest_files(paths: list[Path]) -> list[Path]:
    """YAML files named directly or found (sorted) in named directories."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        elif path.exists():
            out.append(path)
        else:
            raise ManifestError(f"{path}: no such file or directory")
    return out


def load_manifests(paths: list[Path]) -> list[LoadedManifest]:
    """Every Forge resource in `paths`, validated; other kinds (Secrets, ConfigMaps) are skipped.
    All problems are collected and raised together so a user fixes them in one pass."""
    models = {info.kind: info.resource for info in KINDS}
    loaded: list[LoadedManifest] = []
    problems: list[str] = []
    for path in manifest_files(paths):
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except yaml.YAMLError as exc:
            problems.append(f"{path}: not valid YAML: {exc}")
            continue
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            where = f"{path} (document {i + 1})"
            if not isinstance(doc, dict) or "kind" not in doc:
                problems.append(f"{where}: not a Kubernetes object (no kind)")
                continue
            kind = doc["kind"]
            if kind not in models:
                continue
            if doc.get("apiVersion") != API_VERSION:
                problems.append(f"{where}: {kind} needs apiVersion {API_VERSION}, got {doc.get('apiVersion')!r}")
                continue
            name = (doc.get("metadata") or {}).get("name")
            if not name:
                problems.append(f"{where}: {kind} has no metadata.name")
                continue
            try:
                resource = models[kind].model_validate(doc)
            except ValidationError as exc:
                problems.append(f"{where}: {kind} {name}: {spec_error_message(exc, root='spec')}")
                continue
            loaded.append(LoadedManifest(path=path, index=i, body=doc, resource=resource))
    if problems:
        raise ManifestError("\n".join(problems))
    return loaded
