"""The Helm chart rendered by Helm itself (helm-python-sdk embeds it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "forge-operator"


def render(values: dict[str, Any] | None = None, namespace: str = "forge-system",
           release: str = "forge", kube_version: str | None = None) -> list[dict[str, Any]]:
    """Every object `helm template` would print for these values (`--kube-version`: e.g. "v1.20.0")."""
    chart = helm.Chart.load(CHART)
    if kube_version is None:
        rendered = chart.render(values or {}, name=release, namespace=namespace, is_install=True)
    else:
        # the SDK's Chart.render has no kube_version keyword; its native call takes the option as helm does
        opts = {"name": release, "namespace": namespace, "is_install": True, "kube_version": kube_version}
        rendered = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values or {}),
                                                  json.dumps(opts)))
    return [doc for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]
