"""Resolve what a resource refers to, always inside its own namespace."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from forge_operator.api.common import API_VERSION
from forge_operator.api.training import ForgeTrainingRun
from forge_operator.kube.client import Kube
from forge_trainer.config import ModelConfig


@dataclass(frozen=True)
class Waiting:
    """A reference is not ready yet: which condition to set False, and why."""

    condition: str
    message: str


DatasetIndex = Mapping[tuple[str, str], Iterable[dict[str, Any]]]
"""(namespace, name) -> [status] of the ForgeDatasets the operator watches (Kopf's index)."""


def ready_dataset(known: DatasetIndex, namespace: str, name: str, field: str) -> dict[str, Any] | Waiting:
    """The status of a Ready ForgeDataset, or what we wait for. `known` is the operator's in-memory view
    of the ForgeDatasets it watches ((namespace, name) -> [status]; Kopf's index, kept current by the
    watch), so a reconcile costs no API read however many runs wait on one dataset."""
    found = list(known.get((namespace, name)) or [])
    status = found[0] if found else {}
    if not found:
        return Waiting("DatasetReady", f"waiting for ForgeDataset {name} ({field}): it does not exist yet")
    if status.get("phase") != "Ready" or not status.get("manifestUri"):
        return Waiting("DatasetReady", f"waiting for ForgeDataset {name} ({field}) to be Ready "
                                       f"(phase {status.get('phase') or 'Pending'})")
    return dict(status)


def succeeded_run(kube: Kube, namespace: str, name: str, field: str) -> dict[str, Any] | Waiting:
    """The body of a Succeeded ForgeTrainingRun with a final model, or what we wait for."""
    obj = kube.get(API_VERSION, "ForgeTrainingRun", namespace, name)
    status = (obj or {}).get("status") or {}
    if obj is None:
        return Waiting("BaseModelReady", f"waiting for ForgeTrainingRun {name} ({field}): it does not exist yet")
    if status.get("phase") != "Succeeded" or not status.get("finalModelUri"):
        return Waiting("BaseModelReady", f"waiting for ForgeTrainingRun {name} ({field}) to succeed "
                                         f"(phase {status.get('phase') or 'Pending'})")
    return dict(obj)


def model_of_chain(kube: Kube, namespace: str, run: dict[str, Any], depth: int = 8) -> ModelConfig | None:
    """The architecture a run trains: its own spec.model, else that of the run it starts from."""
    for _ in range(depth):
        spec = run.get("spec") or {}
        if spec.get("model"):
            return ModelConfig.model_validate(spec["model"])
        base = (spec.get("init") or {}).get("baseRun")
        nxt = kube.get(API_VERSION, "ForgeTrainingRun", namespace, base) if base else None
        if nxt is None:
            return None
        run = nxt
    return None


def foreign_namespace(uri: str | None, bucket: str, namespace: str) -> str | None:
    """The other namespace a Forge store URI belongs to, if it is not `namespace`."""
    prefix = f"s3://{bucket}/forge/"
    if not uri or not uri.startswith(prefix):
        return None
    owner = uri[len(prefix):].split("/", 1)[0]
    return owner if owner != namespace else None


def immutable_fields(run: ForgeTrainingRun) -> dict[str, Any]:
    """The spec fields that may not change once a run started."""
    spec = run.spec
    return {"stage": spec.stage.value, "datasetRef": spec.dataset_ref,
            "model": spec.model.to_wire() if spec.model else None}
