"""The trainer's own configuration models: the ONE definition.

`forge_operator.api` builds the three custom resources out of these models, so a field a user writes
in a ForgeDataset or ForgeTrainingRun manifest is exactly the field the workload reads. Every
model uses camelCase on the wire, forbids unknown fields (a typo is an error that names the field),
and documents each field with a docstring that becomes `kubectl explain` text.

This module is pure: it imports nothing that touches the world.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """Base of every wire model: camelCase aliases, unknown fields refused, docstrings kept."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """This model as the JSON-ready dict a manifest or config file holds (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class DatasetFormat(StrEnum):
    """How to read the source files; `auto` picks by file extension."""

    AUTO = "auto"
    TXT = "txt"
    MD = "md"
    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"
    PDF = "pdf"
    CODE = "code"


class DatasetPurpose(StrEnum):
    """What the dataset is for, which decides the record shape it expects."""

    PRETRAIN = "pretrain"
    SFT = "sft"
    RL = "rl"


class PiiType(StrEnum):
    """A kind of personal data that redaction replaces with a typed placeholder."""

    EMAIL = "email"
    PHONE = "phone"
    IBAN = "iban"
    CREDIT_CARD = "credit_card"
    IP_ADDRESS = "ip_address"


class NearDedupConfig(WireModel):
    """Near-duplicate removal with MinHash signatures and locality-sensitive hashing."""

    enabled: bool = True
    """Remove documents whose estimated Jaccard similarity to a kept one reaches the threshold."""
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    """Estimated Jaccard similarity of word shingles at or above which a document is a near duplicate."""
    num_permutations: Annotated[int, Field(ge=16, le=1024)] = 128
    """MinHash signature length; more is more precise and slower."""
    shingle_size: Annotated[int, Field(ge=1, le=32)] = 5
    """Words per shingle."""


class QualityConfig(WireModel):
    """Heuristic quality filters; a document failing any of them is dropped and counted by reason."""

    min_chars: Annotated[int, Field(ge=0)] = 20
    """Drop documents shorter than this many characters after normalisation."""
    max_chars: Annotated[int, Field(ge=1)] = 1_000_000
    """Drop documents longer than this many characters."""
    min_alpha_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Drop documents where fewer than this fraction of non-space characters are letters."""
    max_symbol_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    """Drop documents where more than this fraction of non-space characters are symbols."""
    max_duplicate_line_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.3
    """Drop documents where more than this fraction of lines repeat an earlier line (repetition)."""

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_chars > self.max_chars:
            raise ValueError(f"minChars ({self.min_chars}) must not exceed maxChars ({self.max_chars})")
        return self


class PiiConfig(WireModel):
    """Redaction of personal data, replaced by typed placeholders such as `<EMAIL>`."""

    enabled: bool = True
    """Redact personal data before tokenization."""
    types: list[PiiType] = Field(default_factory=lambda: list(PiiType))
    """Which kinds of personal data to redact."""


class ProcessingConfig(WireModel):
    """How raw documents are cleaned before tokenization."""

    normalize: bool = True
    """Unicode NFC, whitespace folding and control-character removal."""
    exact_dedup: bool = True
    """Remove documents whose normalised content hash was already seen."""
    near_dedup: NearDedupConfig = Field(default_factory=NearDedupConfig)
    """Near-duplicate removal settings."""
    quality: QualityConfig = Field(default_factory=QualityConfig)
    """Quality filter thresholds."""
    pii: PiiConfig = Field(default_factory=PiiConfig)
    """Personal-data redaction settings."""


class TokenizerConfig(WireModel):
    """Train a byte-level BPE tokenizer on the corpus, or reuse an existing one (set exactly one way)."""

    vocab_size: Annotated[int | None, Field(ge=259, le=1_048_576)] = None
    """Train a new tokenizer with this vocabulary size (special tokens included)."""
    dataset_ref: str | None = None
    """Reuse the tokenizer of another ForgeDataset in the same namespace, by name."""
    uri: str | None = None
    """Reuse the `tokenizer.json` at this object-store URI."""

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        chosen = [n for n, v in (("vocabSize", self.vocab_size), ("datasetRef", self.dataset_ref),
                                 ("uri", self.uri)) if v is not None]
        if len(chosen) > 1:
            raise ValueError(f"set only one of vocabSize, datasetRef, uri (got {', '.join(chosen)})")
        if not chosen:
            self.vocab_size = 32_000
        return self


class SplitConfig(WireModel):
    """How documents are split between training and validation shards."""

    validation_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Fraction of kept documents routed to the validation split (by a stable hash of their content)."""


class ShardingConfig(WireModel):
    """How tokens are packed into binary shards."""

    tokens_per_shard: Annotated[int, Field(ge=1024)] = 16_777_216
    """Tokens per shard file; the last shard of a split may be smaller."""


# ---------------------------------------------------------------------------------------------
# Model and training
# ---------------------------------------------------------------------------------------------


class Stage(StrEnum):
    """Which training stage a run performs."""

    PRETRAIN = "pretrain"
    SFT = "sft"
    RL = "rl"


class Architecture(StrEnum):
    """Decoder-only transformer flavour: dense MLPs, or routed mixture-of-experts MLPs."""

    DENSE = "dense"
    MOE = "moe"


class SizePreset(StrEnum):
    """A named model size; explicit dimensions override the preset's values."""

    TINY = "tiny"
    SMALL = "125m"
    B1 = "1b"
    B7 = "7b"


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


class ModelConfig(WireModel):
    """The transformer's architecture: a size preset, explicit dimensions, or a preset with overrides."""

    architecture: Architecture = Architecture.DENSE
    """`dense` (Llama-compatible export) or `moe` (Mixtral-compatible export)."""
    size: SizePreset | None = None
    """Named size preset; required unless hiddenSize, numLayers and numHeads are all set."""
    hidden_size: Annotated[int | None, Field(ge=8)] = None
    """Width of the residual stream."""
    num_layers: Annotated[int | None, Field(ge=1)] = None
    """Number of transformer blocks."""
    num_heads: Annotated[int | None, Field(ge=1)] = None
    """Attention heads per block."""
    num_kv_heads: Annotated[int | None, Field(ge=1)] = None
    """Key/value heads for grouped-query attention (defaults to numHeads)."""
    intermediate_size: Annotated[int | None, Field(ge=8)] = None
    """Hidden width of each SwiGLU MLP (or expert)."""
    max_seq_len: Annotated[int | None, Field(ge=16)] = None
    """Longest sequence the model is trained on (rotary embeddings extrapolate poorly beyond it)."""
    num_experts: Annotated[int | None, Field(ge=2)] = None
    """Experts per MoE layer (moe only)."""
    experts_per_token: Annotated[int | None, Field(ge=1)] = None
    """Experts each token is routed to (moe only)."""
    rope_theta: Annotated[float | None, Field(gt=0)] = None
    """Rotary embedding base."""

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.size is None and None in (self.hidden_size, self.num_layers, self.num_heads):
            raise ValueError("set model.size, or all of model.hiddenSize, model.numLayers and model.numHeads")
        if self.hidden_size is not None and self.num_heads is not None and self.hidden_size % self.num_heads:
            raise ValueError(f"model.hiddenSize ({self.hidden_size}) must be divisible by model.numHeads "
                             f"({self.num_heads})")
        if self.num_kv_heads is not None and self.num_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.numHeads ({self.num_heads}) must be divisible by model.numKvHeads "
                             f"({self.num_kv_heads})")
        moe_fields = self.num_experts is not None or self.experts_per_token is not None
        if moe_fields and self.architecture is not Architecture.MOE:
            raise ValueError("model.numExperts and model.expertsPerToken need model.architecture: moe")
        if (self.num_experts is not None and self.experts_per_token is not None
                and self.experts_per_token > self.num_experts):
            raise ValueError(f"model.expertsPerToken ({self.experts_per_token}) must not exceed "
                             f"model.numExperts ({self.num_experts})")
        return self


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


# ---------------------------------------------------------------------------------------------
# Where workloads read and write
# ---------------------------------------------------------------------------------------------


class StoreConfig(WireModel):
    """Object store a workload talks to. Credentials never live here: they come from the environment
    (FORGE_S3_ACCESS_KEY / FORGE_S3_SECRET_KEY, filled from a Secret)."""

    endpoint: str | None = None
    """S3 endpoint host[:port]; unset for a local directory store."""
    secure: bool = True
    """Use HTTPS for the S3 endpoint."""
    region: str | None = None
    """S3 region, if the endpoint needs one."""


class PrepareConfig(WireModel):
    """Everything `forge-trainer prepare` needs: written by the operator into a ConfigMap (or by the
    local runner into a file) and read by the workload."""

    source: str
    """Where the raw corpus is: `s3://bucket/prefix` or a local directory path."""
    output: str
    """URI prefix the dataset writes under (shards/, tokenizer.json, manifest.json, progress.json)."""
    format: DatasetFormat = DatasetFormat.AUTO
    """How to read source files."""
    purpose: DatasetPurpose = DatasetPurpose.PRETRAIN
    """Record shape expected."""
    text_field: str = "text"
    """Field holding the text in json/jsonl/csv/parquet records."""
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    """Cleaning settings."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Tokenizer to train or reuse (a datasetRef is resolved to a uri by the operator)."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """Train/validation split."""
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    """Shard packing."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Object store connection (no credentials)."""
    seed: int = 1234
    """Seed for anything random (MinHash permutations)."""


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


# ---------------------------------------------------------------------------------------------
# What workloads report back (progress.json, next to their outputs)
# ---------------------------------------------------------------------------------------------


class DatasetCounts(WireModel):
    """Document and token counts of a prepared dataset."""

    documents_read: int = 0
    """Records read from the source."""
    documents_kept: int = 0
    """Records that made it into the shards."""
    dropped: dict[str, int] = Field(default_factory=dict)
    """Records dropped, by reason (e.g. invalid_utf8, too_short, exact_duplicate)."""
    exact_duplicates: int = 0
    """Records removed as exact duplicates."""
    near_duplicates: int = 0
    """Records removed as near duplicates."""
    redactions: dict[str, int] = Field(default_factory=dict)
    """Personal-data redactions, by type."""
    tokens: int = 0
    """Tokens written to all shards."""
    train_tokens: int = 0
    """Tokens in the training split."""
    validation_tokens: int = 0
    """Tokens in the validation split."""


class DatasetProgress(WireModel):
    """The data workload's progress.json."""

    model_config = ConfigDict(extra="ignore")

    stage: str = "starting"
    """Current step of the pipeline (reading, tokenizer, packing, done, failed)."""
    documents_done: int = 0
    """Records processed so far."""
    bytes_done: int = 0
    """Source bytes read so far."""
    bytes_total: int | None = None
    """Source bytes in all, when known."""
    counts: DatasetCounts = Field(default_factory=DatasetCounts)
    """Counts so far (final once stage is done)."""
    manifest_uri: str | None = None
    """URI of manifest.json once written."""
    manifest_digest: str | None = None
    """sha256 of manifest.json once written (`sha256:<hex>`)."""
    tokenizer_uri: str | None = None
    """URI of tokenizer.json once written."""
    error: str | None = None
    """One-line reason when the workload failed."""
    updated_at: str | None = None
    """When this file was written (RFC 3339)."""


class CheckpointInfo(WireModel):
    """One checkpoint a run wrote."""

    step: int
    """Optimizer step of the checkpoint."""
    uri: str
    """Where it is."""
    digest: str | None = None
    """sha256 over its files (`sha256:<hex>`)."""


class TrainProgress(WireModel):
    """The training workload's progress.json (rank 0 writes it)."""

    model_config = ConfigDict(extra="ignore")

    step: int = 0
    """Optimizer steps completed."""
    total_steps: int = 0
    """Steps the run will take."""
    tokens_seen: int = 0
    """Training tokens consumed."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest validation loss."""
    tokens_per_second: float | None = None
    """Recent training throughput across all workers."""
    mfu: float | None = None
    """Model FLOPs utilisation estimate (0..1)."""
    world_size: int = 0
    """Workers in the current group."""
    restarts: int = 0
    """Times the worker group re-formed."""
    mean_reward: float | None = None
    """Mean reward of the latest RL step."""
    success_rate: float | None = None
    """Fraction of completions with reward 1 in the latest RL step."""
    kl: float | None = None
    """KL to the reference model in the latest RL step."""
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    """Checkpoints kept."""
    final_model_uri: str | None = None
    """URI of the Hugging Face–format export once written."""
    final_model_digest: str | None = None
    """sha256 over the export's files once written."""
    eval_metrics: dict[str, float] = Field(default_factory=dict)
    """Final evaluation metrics (loss, perplexity, pass rates per verifier)."""
    done: bool = False
    """The workload finished successfully."""
    error: str | None = None
    """One-line reason when the workload failed."""
    updated_at: str | None = None
    """When this file was written (RFC 3339)."""
