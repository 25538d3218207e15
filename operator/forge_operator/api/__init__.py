"""The API of Forge, defined once: pydantic models of the three resources. CRDs are generated from
these (`forge crds`), and the operator, the local runner and the tests all parse with them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from forge_operator.api.common import API_VERSION, GROUP, VERSION, Condition, ConditionStatus
from forge_operator.api.dataset import ForgeDataset, ForgeDatasetSpec, ForgeDatasetStatus
from forge_operator.api.deployment import ForgeDeployment, ForgeDeploymentSpec, ForgeDeploymentStatus
from forge_operator.api.training import ForgeTrainingRun, ForgeTrainingRunSpec, ForgeTrainingRunStatus

__all__ = [
    "API_VERSION", "DATASET", "DEPLOYMENT", "GROUP", "KINDS", "TRAINING_RUN", "VERSION", "Condition", "ConditionStatus", "ForgeDataset",
    "ForgeDatasetSpec", "ForgeDatasetStatus", "ForgeDeployment", "ForgeDeploymentSpec",
    "ForgeDeploymentStatus", "ForgeTrainingRun", "ForgeTrainingRunSpec", "ForgeTrainingRunStatus",
    "KindInfo", "kind_info",
]


@dataclass(frozen=True)
class KindInfo:
    """Everything the CRD generator and the operator need to know about one kind."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    resource: type[BaseModel]
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: list[dict[str, Any]] = field(default_factory=list)
    categories: list[str] = field(default_factory=lambda: ["forge"])

    @property
    def crd_name(self) -> str:
        """metadata.name of the CRD."""
        return f"{self.plural}.{GROUP}"


def _col(name: str, type_: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": type_, "jsonPath": path, "description": description}
    if priority:
        column["priority"] = priority
    return column


_AGE = _col("Age", "date", ".metadata.creationTimestamp", "Time since creation")

DATASET = KindInfo(
    kind="ForgeDataset", plural="forgedatasets", singular="forgedataset", short_names=["fds"],
    resource=ForgeDataset, spec=ForgeDatasetSpec, status=ForgeDatasetStatus,
    printer_columns=[
        _col("Purpose", "string", ".spec.purpose", "What the dataset is for"),
        _col("Phase", "string", ".status.phase", "Lifecycle phase"),
        _col("Kept", "integer", ".status.counts.documentsKept", "Documents kept"),
        _col("Tokens", "integer", ".status.counts.tokens", "Tokens in all shards"),
        _col("Digest", "string", ".status.digest", "Manifest digest", priority=1),
        _AGE,
    ],
)
TRAINING_RUN = KindInfo(
    kind="ForgeTrainingRun", plural="forgetrainingruns", singular="forgetrainingrun",
    short_names=["ftr"], resource=ForgeTrainingRun, spec=ForgeTrainingRunSpec,
    status=ForgeTrainingRunStatus,
    printer_columns=[
        _col("Stage", "string", ".spec.stage", "Training stage"),
        _col("Phase", "string", ".status.phase", "Lifecycle phase"),
        _col("Progress", "string", ".status.progress", "Step / total steps"),
        _col("Loss", "number", ".status.loss", "Latest training loss"),
        _col("Workers", "integer", ".status.worldSize", "Workers in the current group"),
        _col("Tokens/s", "number", ".status.tokensPerSecond", "Recent throughput", priority=1),
        _col("Restarts", "integer", ".status.restarts", "Job restarts", priority=1),
        _AGE,
    ],
)
DEPLOYMENT = KindInfo(
    kind="ForgeDeployment", plural="forgedeployments", singular="forgedeployment",
    short_names=["fdep"], resource=ForgeDeployment, spec=ForgeDeploymentSpec,
    status=ForgeDeploymentStatus,
    printer_columns=[
        _col("Model", "string", ".spec.modelRef", "Training run served"),
        _col("Runtime", "string", ".spec.runtime", "Serving runtime"),
        _col("Phase", "string", ".status.phase", "Lifecycle phase"),
        _col("Ready", "integer", ".status.readyReplicas", "Ready replicas"),
        _col("Endpoint", "string", ".status.endpoint", "OpenAI-compatible endpoint", priority=1),
        _AGE,
    ],
)
KINDS: list[KindInfo] = [DATASET, TRAINING_RUN, DEPLOYMENT]
"""Every kind, in reference order (datasets, runs, deployments)."""


def kind_info(kind: str) -> KindInfo:
    """The KindInfo of `kind` (e.g. "ForgeDataset")."""
    for info in KINDS:
        if info.kind == kind:
            return info
    raise KeyError(kind)
