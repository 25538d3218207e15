"""`forge render` run as a user runs it: a subprocess with only the FORGE_* settings a test gives."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
ACME_PIPELINE = sorted((EXAMPLES / "pipeline").glob("*.yaml"))
"""The acme chain of examples/pipeline/ (its sub-folders hold other chains, e.g. from-mistral/)."""


@dataclass(frozen=True)
class Rendered:
    """What one `forge render` printed."""

    returncode: int
    objects: list[dict[str, Any]]
    stderr: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        """The printed objects of `kind`."""
        return [o for o in self.objects if o["kind"] == kind]

    def policy(self, name: str) -> dict[str, Any]:
        """The NetworkPolicy named `name`."""
        (found,) = [o for o in self.of_kind("NetworkPolicy") if o["metadata"]["name"] == name]
        return found


def forge_render(*paths: Path | str, settings: dict[str, str] | None = None, namespace: str | None = None) -> Rendered:
    """`forge render PATHS [-n NAMESPACE]` with the operator settings `settings` (FORGE_* variables; any
    FORGE_* of this process's environment is left out)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env.update(settings or {})
    args = [sys.executable, "-m", "forge_operator.cli", "render", *map(str, paths)]
    if namespace:
        args += ["--namespace", namespace]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    return Rendered(done.returncode, [o for o in yaml.safe_load_all(done.stdout) if o], done.stderr)
