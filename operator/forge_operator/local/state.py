"""Where `forge run` keeps each resource's derived status and (with a local store) its artifacts:
`<root>/<namespace>/<kind>/<name>/status.json` next to `artifacts/`."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge_operator.api import KINDS

DEFAULT_ROOT = Path(".forge")
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True)
class ResourceDir:
    """The local directory of one resource."""

    root: Path
    namespace: str
    kind: str
    name: str

    @property
    def path(self) -> Path:
        """`<root>/<namespace>/<kind>/<name>`."""
        return self.root / self.namespace / self.kind.lower() / self.name

    @property
    def status_file(self) -> Path:
        """The derived status (the same model the operator writes into the resource)."""
        return self.path / "status.json"

    @property
    def artifacts(self) -> Path:
        """Where the workload writes with a local directory store."""
        return self.path / "artifacts"

    def read(self) -> dict[str, Any] | None:
        """The saved record (`{"kind", "metadata", "spec", "status", ...}`), or None."""
        try:
            data = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write(self, record: dict[str, Any]) -> None:
        """Save the record atomically (a reader never sees half a file)."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".status.", suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(record, fh, indent=2, sort_keys=True)
        os.replace(tmp, self.status_file)


def saved_records(root: Path) -> list[dict[str, Any]]:
    """Every saved resource record under `root`, in kind order (datasets, runs, deployments)."""
    order = {info.kind.lower(): i for i, info in enumerate(KINDS)}
    out: list[tuple[int, str, str, dict[str, Any]]] = []
    for status in root.glob("*/*/*/status.json"):
        kind_dir = status.parent.parent.name
        rd = ResourceDir(root, status.parent.parent.parent.name, kind_dir, status.parent.name)
        record = rd.read()
        if record is not None and kind_dir in order:
            out.append((order[kind_dir], rd.namespace, rd.name, record))
    return [r for *_, r in sorted(out, key=lambda t: (t[0], t[1], t[2]))]
