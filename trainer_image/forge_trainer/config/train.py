"""What a ForgeTrainingRun's workload (`forge-trainer train`) is told: `TrainConfig` and its parts."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, model_validator

from forge_trainer.config.model import ModelConfig
from forge_trainer.config.store import StoreConfig
from forge_trainer.config.wire import WireModel


class Stage(StrEnum):
    """Which training stage a run performs."""

    PRETRAIN = "pretrain"
    SFT = "sft"
    RL = "rl"


class SftMethod(StrEnum):
    """Which weights supervised fine-tuning updates."""

    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"


class Precision(StrEnum):
    """Numeric precision of training compute (bf16 autocast on GPU; CPU falls back to fp32)."""

    FP32 = "fp32"
    BF16 = "bf16"


class RlAlgorithm(StrEnum):
    """Reinforcement-learning algorithm."""

    GRPO = "grpo"


class VerifierKind(StrEnum):
    """A built-in task verifier, or `custom` for Python source from a ConfigMap."""

    EXACT_MATCH = "exact_match"
    REGEX = "regex"
    JSON_SCHEMA = "json_schema"
    TOOL_CALL = "tool_call"
    PYTHON_TESTS = "python_tests"
    CUSTOM = "custom"


class Hyperparameters(WireModel):
    """Optimisation settings."""

    learning_rate: Annotated[float, Field(gt=0)] = 3e-4
    """Peak learning rate of the cosine schedule."""
    min_learning_rate: Annotated[float | None, Field(ge=0)] = None
    """Learning rate at the end of the cosine decay (default: learningRate / 10)."""
    warmup_steps: Annotated[int, Field(ge=0)] = 100
    """Linear warm-up steps."""
    max_steps: Annotated[int, Field(ge=1)] = 1000
    """Optimizer steps to train for."""
    global_batch_size: Annotated[int, Field(ge=1)] = 32
    """Sequences per optimizer step across all workers (reached by gradient accumulation)."""
    micro_batch_size: Annotated[int, Field(ge=1)] = 4
    """Sequences per forward/backward pass on one worker."""
    sequence_length: Annotated[int, Field(ge=8)] = 512
    """Tokens per training sequence."""
    weight_decay: Annotated[float, Field(ge=0)] = 0.1
    """AdamW weight decay."""
    beta1: Annotated[float, Field(gt=0, lt=1)] = 0.9
    """AdamW beta1."""
    beta2: Annotated[float, Field(gt=0, lt=1)] = 0.95
    """AdamW beta2."""
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    """Clip the global gradient norm to this value (0 disables clipping)."""
    seed: int = 1234
    """Seed for initialisation, data order and sampling."""
    eval_interval: Annotated[int, Field(ge=0)] = 100
    """Evaluate on the validation split every this many steps (0: only at the end)."""
    eval_batches: Annotated[int, Field(ge=1)] = 8
    """Validation micro-batches per evaluation."""
    activation_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    compile: bool = False
    """Compile the model with torch.compile."""

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.min_learning_rate is None:
            self.min_learning_rate = self.learning_rate / 10
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(f"hyperparameters.minLearningRate ({self.min_learning_rate}) must not exceed "
                             f"hyperparameters.learningRate ({self.learning_rate})")
        if self.micro_batch_size > self.global_batch_size:
            raise ValueError(f"hyperparameters.microBatchSize ({self.micro_batch_size}) must not exceed "
                             f"hyperparameters.globalBatchSize ({self.global_batch_size})")
        return self


class LoraConfig(WireModel):
    """Low-rank adapters for `lora` and `qlora` fine-tuning."""

    rank: Annotated[int, Field(ge=1, le=1024)] = 16
    """Adapter rank r."""
    alpha: Annotated[float, Field(gt=0)] = 32.0
    """Scaling numerator: adapter output is scaled by alpha / rank."""
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    """Dropout on the adapter input."""
    targets: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Names of the linear projections that get adapters."""
    merge: bool = True
    """Merge adapters into the base weights for the final export (the adapter is exported too)."""


class ConfigMapKeyRef(WireModel):
    """A key of a ConfigMap in the same namespace."""

    name: str
    """ConfigMap name."""
    key: str = "verifier.py"
    """Key whose value is used."""


class RewardConfig(WireModel):
    """How a completion is scored: a built-in verifier or custom Python source."""

    verifier: VerifierKind
    """Verifier used for every task (a task may carry its own expected answer, pattern, schema or tests)."""
    custom_source: ConfigMapKeyRef | None = None
    """ConfigMap key holding the custom verifier's Python source (verifier: custom)."""
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 5.0
    """Wall-clock limit per verification; a verifier that exceeds it scores 0."""
    memory_mb: Annotated[int, Field(ge=16, le=65536)] = 256
    """Memory limit per verification subprocess."""

    @model_validator(mode="after")
    def _custom(self) -> Self:
        if self.verifier is VerifierKind.CUSTOM and self.custom_source is None:
            raise ValueError("rl.reward.customSource is required when rl.reward.verifier is custom")
        if self.verifier is not VerifierKind.CUSTOM and self.custom_source is not None:
            raise ValueError("rl.reward.customSource is only used with rl.reward.verifier: custom")
        return self


class RlConfig(WireModel):
    """Reinforcement learning with task-completion rewards."""

    algorithm: RlAlgorithm = RlAlgorithm.GRPO
    """RL algorithm."""
    reward: RewardConfig | None = None
    """How completions are scored; required for stage rl."""
    group_size: Annotated[int, Field(ge=2, le=256)] = 8
    """Completions sampled per prompt; advantages are relative within the group."""
    kl_coefficient: Annotated[float, Field(ge=0)] = 0.04
    """Weight of the KL penalty to the frozen reference model."""
    clip_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.2
    """PPO-style clip of the policy ratio."""
    temperature: Annotated[float, Field(gt=0, le=5)] = 1.0
    """Sampling temperature for completions."""
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 64
    """Longest completion sampled."""


class CheckpointConfig(WireModel):
    """How often checkpoints are written and how many are kept."""

    interval: Annotated[int, Field(ge=1)] = 100
    """Write a checkpoint every this many steps (and on SIGTERM, and at the end)."""
    keep: Annotated[int, Field(ge=1)] = 3
    """Keep the newest this many checkpoints; older ones are deleted."""


class TrainConfig(WireModel):
    """Everything a training workload needs: written by the operator into a ConfigMap."""

    stage: Stage
    """Training stage."""
    model: ModelConfig | None = None
    """Model architecture; required unless the run starts from initModel or initCheckpoint."""
    dataset: str
    """URI of the training dataset's manifest.json."""
    output: str
    """URI prefix the run writes under (checkpoints/, model/, progress.json, eval.json)."""
    eval_dataset: str | None = None
    """URI of an evaluation dataset's manifest.json."""
    init_model: str | None = None
    """URI of a Hugging Face–format model directory to start from (sft/rl, or pretrain from a base)."""
    init_checkpoint: str | None = None
    """URI of a checkpoint directory to start from."""
    method: SftMethod = SftMethod.FULL
    """Which weights sft/rl update."""
    lora: LoraConfig = Field(default_factory=LoraConfig)
    """Adapter settings for lora/qlora."""
    rl: RlConfig = Field(default_factory=RlConfig)
    """RL settings (stage rl)."""
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    """Optimisation settings."""
    precision: Precision = Precision.BF16
    """Compute precision."""
    checkpointing: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoint cadence and retention."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Object store connection (no credentials)."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9400
    """Port rank 0 serves Prometheus metrics on (0 disables)."""

    @model_validator(mode="after")
    def _model_source(self) -> Self:
        if self.model is None and self.init_model is None and self.init_checkpoint is None:
            raise ValueError("model is required when the run starts from scratch (no initModel or initCheckpoint)")
        return self
