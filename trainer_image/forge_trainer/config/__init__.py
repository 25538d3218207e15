"""The workload contract: what the operator tells a workload and what the workload reports back.

    wire.py      WireModel, the base of every model here (camelCase, unknown fields refused)
    data.py      PrepareConfig: what a ForgeDataset's workload is told
    model.py     ModelConfig: the transformer's architecture (size preset or dimensions)
    train.py     TrainConfig: what a ForgeTrainingRun's workload is told
    store.py     StoreConfig, and the layout of what workloads write under their prefix
    progress.py  DatasetProgress, TrainProgress: the progress.json the operator reads

`forge_operator.api` builds the three custom resources out of these models, so a field a user writes
in a manifest is exactly the field the workload reads: the ONE definition. Every field documents
itself with a docstring that becomes `kubectl explain` text. This package is pure: it imports nothing
that touches the world, and nothing else of the trainer.
"""

from forge_trainer.config.data import (
    DatasetFormat,
    DatasetPurpose,
    NearDedupConfig,
    PiiConfig,
    PiiType,
    PrepareConfig,
    ProcessingConfig,
    QualityConfig,
    ShardingConfig,
    SplitConfig,
    TokenizerConfig,
)
from forge_trainer.config.model import Architecture, ModelConfig, SizePreset
from forge_trainer.config.progress import (
    CheckpointInfo,
    DatasetCounts,
    DatasetProgress,
    TrainProgress,
    WorkerProgress,
)
from forge_trainer.config.store import StoreConfig
from forge_trainer.config.train import (
    CheckpointConfig,
    ConfigMapKeyRef,
    Hyperparameters,
    LoraConfig,
    Precision,
    RewardConfig,
    RlAlgorithm,
    RlConfig,
    SftMethod,
    Stage,
    TrainConfig,
    VerifierKind,
)
from forge_trainer.config.wire import WireModel

__all__ = [
    "Architecture",
    "CheckpointConfig",
    "CheckpointInfo",
    "ConfigMapKeyRef",
    "DatasetCounts",
    "DatasetFormat",
    "DatasetProgress",
    "DatasetPurpose",
    "Hyperparameters",
    "LoraConfig",
    "ModelConfig",
    "NearDedupConfig",
    "PiiConfig",
    "PiiType",
    "Precision",
    "PrepareConfig",
    "ProcessingConfig",
    "QualityConfig",
    "RewardConfig",
    "RlAlgorithm",
    "RlConfig",
    "SftMethod",
    "ShardingConfig",
    "SizePreset",
    "SplitConfig",
    "Stage",
    "StoreConfig",
    "TokenizerConfig",
    "TrainConfig",
    "TrainProgress",
    "VerifierKind",
    "WireModel",
    "WorkerProgress",
]
