"""The ConfigMap that carries a workload's config file (mounted at /etc/forge by config_volume)."""

from __future__ import annotations

from typing import Any

import yaml

from forge_operator.plan.workload import WorkloadMeta
from forge_operator.render.pod import CONFIG_FILE, object_meta


def config_map(name: str, meta: WorkloadMeta, config: dict[str, Any]) -> dict[str, Any]:
    """A ConfigMap holding a workload's config as config.yaml (mounted at /etc/forge)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": object_meta(name, meta),
            "data": {CONFIG_FILE: yaml.safe_dump(config, sort_keys=False)}}
