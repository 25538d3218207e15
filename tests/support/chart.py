"""The Helm chart rendered by Helm itself (helm-python-sdk embeds it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "forge-operator"


def render(values: dict[str, Any] | None = None, namespace: str = "forge-system",
           release: str = "forge") -> list[dict[str, Any]]:
    """Every object `helm template` would print for these values."""
    rendered = helm.Chart.load(CHART).render(values or {}, name=release, namespace=namespace, is_install=True)
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]
