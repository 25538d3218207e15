"""ForgeTrainingRun (`ftr`): one training stage (pretrain, sft or rl) run as a PyTorch elastic job."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from forge_operator.api.common import (
    DNS1123_LABEL,
    ResourceStatus,
    RetentionPolicy,
    RetentionSpec,
    StoreUri,
    Toleration,
)
from forge_operator.api.network import NetworkSpec
from forge_trainer.config import (
    CheckpointConfig,
    CheckpointInfo,
    Hyperparameters,
    LoraConfig,
    ModelConfig,
    Precision,
    RlConfig,
    SftMethod,
    Stage,
    WireModel,
)

DEFAULT_GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
IMMUTABLE = {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "is immutable"}]}

Name = Annotated[str, Field(pattern=DNS1123_LABEL, max_length=63)]


class InitSpec(WireModel):
    """Where the weights start: scratch (nothing set), another run's final model, or a URI."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "(has(self.baseRun) ? 1 : 0) + (has(self.modelUri) ? 1 : 0) + "
                 "(has(self.checkpointUri) ? 1 : 0) <= 1",
         "message": "init: set at most one of baseRun, modelUri, checkpointUri"},
    ]})

    base_run: Name | None = None
    """Name of a ForgeTrainingRun in this namespace whose final model this run starts from."""
    model_uri: StoreUri | None = None
    """URI of a Hugging Face–format model directory produced by Forge."""
    checkpoint_uri: StoreUri | None = None
    """URI of a checkpoint directory to continue from."""

    @model_validator(mode="after")
    def _one(self) -> Self:
        chosen = [n for n, v in (("baseRun", self.base_run), ("modelUri", self.model_uri),
                                 ("checkpointUri", self.checkpoint_uri)) if v is not None]
        if len(chosen) > 1:
            raise ValueError(f"init: set at most one of baseRun, modelUri, checkpointUri (got {', '.join(chosen)})")
        return self

    @property
    def is_scratch(self) -> bool:
        """Nothing to start from: random initialisation."""
        return self.base_run is None and self.model_uri is None and self.checkpoint_uri is None


class TrainingResources(WireModel):
    """Where and on how much hardware the run executes."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.minNodes <= self.maxNodes", "message": "resources.minNodes must not exceed resources.maxNodes"},
    ]})

    min_nodes: Annotated[int, Field(ge=1, le=1024)] = 1
    """Fewest nodes the elastic job keeps running with."""
    max_nodes: Annotated[int, Field(ge=1, le=1024)] = 1
    """Most nodes the elastic job uses."""
    gpus_per_node: Annotated[int, Field(ge=0, le=16)] = 8
    """GPUs (and worker processes) per node; 0 runs one CPU worker per node."""
    cpu: str | None = None
    """CPU request per node (Kubernetes quantity)."""
    memory: str | None = None
    """Memory request per node (Kubernetes quantity)."""
    shm_size: str | None = None
    """Size of /dev/shm for NCCL and data loaders. It is memory-backed and counts against the memory limit,
    so it is capped at `memory`; unset: half of `memory` (at most 16Gi), or 16Gi when no memory is set."""
    scratch_size: str | None = None
    """Size limit of each pod's /tmp (an emptyDir on the node's disk: the initial model's download,
    checkpoint staging, the exported model); unset: 200Gi. A pod that writes more is evicted."""
    node_selector: dict[str, str] | None = None
    """Node pool selector; unset: H100 nodes (`nvidia.com/gpu.product`) when gpusPerNode > 0, any node for a
    CPU run (gpusPerNode 0). `{}` places GPU pods on any node with free GPUs."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for tainted GPU node pools."""
    priority_class_name: str | None = None
    """PriorityClass of the pods."""
    queue: str | None = None
    """Kueue LocalQueue name: the job is created suspended and admitted by Kueue."""

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_nodes > self.max_nodes:
            raise ValueError(f"resources.minNodes ({self.min_nodes}) must not exceed resources.maxNodes "
                             f"({self.max_nodes})")
        return self

    @model_validator(mode="after")
    def _default_placement(self) -> Self:
        # filled here rather than as a CRD default, so that it follows gpusPerNode: a CPU run pinned to
        # GPU nodes would never schedule
        if self.node_selector is None:
            self.node_selector = {GPU_PRODUCT_LABEL: DEFAULT_GPU_PRODUCT} if self.gpus_per_node else {}
        return self


class BudgetSpec(WireModel):
    """Spending limits."""

    max_gpu_hours: Annotated[float | None, Field(gt=0)] = None
    """Stop the run (checkpoint first) once it has used this many GPU-hours (status.gpuHours): its job
    is suspended or deleted, so the pods save a checkpoint on SIGTERM, and the run shows phase
    Suspended with reason BudgetExceeded. Raising the limit resumes it from the latest checkpoint."""


class ForgeTrainingRunSpec(WireModel):
    """Desired state of a ForgeTrainingRun."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.stage != 'rl' || (has(self.rl) && has(self.rl.reward))",
         "message": "rl.reward is required when stage is rl"},
        {"rule": "!has(self.method) || self.method != 'qlora' || self.stage == 'sft'",
         "message": "method qlora is only allowed with stage sft"},
        {"rule": "!has(self.method) || self.method == 'full' || self.stage != 'pretrain'",
         "message": "method lora/qlora is not allowed with stage pretrain"},
        {"rule": "self.stage == 'pretrain' || (has(self.init) && (has(self.init.baseRun) || "
                 "has(self.init.modelUri) || has(self.init.checkpointUri)))",
         "message": "stage sft and rl need init.baseRun, init.modelUri or init.checkpointUri"},
    ]})

    stage: Annotated[Stage, Field(json_schema_extra=IMMUTABLE)]
    """pretrain, sft or rl (immutable)."""
    dataset_ref: Annotated[Name, Field(json_schema_extra=IMMUTABLE)]
    """Name of the ForgeDataset (same namespace) to train on (immutable)."""
    eval_dataset_ref: Name | None = None
    """Name of a ForgeDataset (same namespace) to evaluate on."""
    model: ModelConfig | None = None
    """Architecture; required from scratch, taken from the base model otherwise."""
    init: InitSpec = Field(default_factory=InitSpec)
    """Where the weights start."""
    method: SftMethod = SftMethod.FULL
    """Which weights are trained: full, lora or qlora (sft only)."""
    lora: LoraConfig | None = None
    """Adapter settings for lora/qlora."""
    rl: RlConfig | None = None
    """RL settings; required for stage rl."""
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    """Optimisation settings."""
    precision: Precision = Precision.BF16
    """Compute precision."""
    checkpointing: CheckpointConfig = Field(default_factory=CheckpointConfig)
    """Checkpoint cadence and retention."""
    resources: TrainingResources = Field(default_factory=TrainingResources)
    """Nodes, GPUs, node pool, tolerations, priority and queue."""
    suspend: bool = False
    """Suspend the run: it checkpoints and its pods stop; set false to resume."""
    max_restarts: Annotated[int, Field(ge=0, le=100)] = 3
    """Times the operator recreates a failed job before the run fails."""
    stall_timeout_seconds: Annotated[int, Field(ge=10)] = 1800
    """Restart the job if the step counter does not advance for this long."""
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    """Spending limits."""
    retention: RetentionSpec = Field(default_factory=lambda: RetentionSpec(on_delete=RetentionPolicy.KEEP_FINAL))
    """What deleting the run removes from the object store (default: keep the final model)."""
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    """Extra egress for the run's pods; by default they reach only DNS, the object store and their peers."""

    @model_validator(mode="after")
    def _stage_rules(self) -> Self:
        if self.stage is Stage.RL and (self.rl is None or self.rl.reward is None):
            raise ValueError("rl.reward is required when stage is rl")
        if self.stage is not Stage.RL and self.rl is not None:
            raise ValueError(f"rl is only used with stage rl (stage is {self.stage.value})")
        if self.method is SftMethod.QLORA and self.stage is not Stage.SFT:
            raise ValueError(f"method qlora is only allowed with stage sft (stage is {self.stage.value})")
        if self.method is not SftMethod.FULL and self.stage is Stage.PRETRAIN:
            raise ValueError(f"method {self.method.value} is not allowed with stage pretrain")
        if self.stage is not Stage.PRETRAIN and self.init.is_scratch:
            raise ValueError(f"stage {self.stage.value} needs init.baseRun, init.modelUri or init.checkpointUri")
        if self.init.is_scratch and self.model is None:
            raise ValueError("model is required when training from scratch (no init)")
        if self.lora is not None and self.method is SftMethod.FULL:
            raise ValueError("lora settings are only used with method lora or qlora")
        return self


class RunPhase(StrEnum):
    """Lifecycle of a ForgeTrainingRun."""

    PENDING = "Pending"
    """Accepted; waiting for its dataset or base run, or for its job to start."""
    RUNNING = "Running"
    """The training job runs."""
    SUSPENDED = "Suspended"
    """spec.suspend is true (or Kueue has not admitted the job)."""
    SUCCEEDED = "Succeeded"
    """Training finished and the final model is exported."""
    FAILED = "Failed"
    """The spec is invalid, or the job failed more than maxRestarts times."""


class RunReason(StrEnum):
    """Reasons a ForgeTrainingRun's conditions give."""

    INVALID_SPEC = "InvalidSpec"
    WAITING = "Waiting"
    CROSS_NAMESPACE = "CrossNamespaceReference"
    JOB_CREATED = "JobCreated"
    JOB_RUNNING = "JobRunning"
    JOB_RESTARTED = "JobRestarted"
    JOB_FAILED = "JobFailed"
    STALLED = "Stalled"
    SUSPENDED = "Suspended"
    TRAINED = "Trained"
    BUDGET_EXCEEDED = "BudgetExceeded"
    JOB_ROLLED = "JobRolled"
    QUEUED = "Queued"


class Lineage(WireModel):
    """What a model was made from, so a deployed model traces back to its exact data."""

    dataset_digest: str | None = None
    """Digest of the training dataset's manifest."""
    eval_dataset_digest: str | None = None
    """Digest of the evaluation dataset's manifest."""
    base_model_digest: str | None = None
    """Digest of the model this run started from: the base run's finalModelDigest, or init.modelUri's (trainer)."""
    trainer_image: str | None = None
    """Container image of the trainer."""
    config_hash: str | None = None
    """sha256 of the resolved trainer configuration."""


class ForgeTrainingRunStatus(ResourceStatus):
    """Observed state of a ForgeTrainingRun."""

    phase: RunPhase | None = None
    """Pending, Running, Suspended, Succeeded or Failed."""
    job_name: str | None = None
    """Name of the current training Job."""
    world_size: int | None = None
    """Workers in the current group."""
    worker_group_restarts: int | None = None
    """Times the elastic worker group re-formed and resumed from its latest checkpoint without the operator
    recreating the Job: a pod was lost (or came back) and training went on. Job recreations are counted in
    restarts and attempt instead."""
    step: int | None = None
    """Optimizer steps completed."""
    total_steps: int | None = None
    """Steps the run will take."""
    progress: str | None = None
    """step/total, for kubectl get."""
    tokens_seen: int | None = None
    """Training tokens consumed."""
    loss: float | None = None
    """Latest training loss."""
    eval_loss: float | None = None
    """Latest validation loss."""
    eval_metrics: dict[str, float] | None = None
    """Final evaluation metrics: loss, perplexity, pass rates per verifier."""
    initial_eval_metrics: dict[str, float] | None = None
    """The run's first evaluation (rl: the starting model, before the first step), beside evalMetrics."""
    tokens_per_second: float | None = None
    """Recent throughput across all workers."""
    mfu: float | None = None
    """Model FLOPs utilisation estimate."""
    mean_reward: float | None = None
    """Mean reward of the latest RL step."""
    success_rate: float | None = None
    """Share of the latest RL step's sampled completions that passed their verifier."""
    kl: float | None = None
    """KL to the reference model in the latest RL step."""
    completion_length: float | None = None
    """Mean completion length in tokens in the latest RL step."""
    clip_fraction: float | None = None
    """Share of the latest RL step's completion tokens whose probability ratio was clipped."""
    restarts: int | None = None
    """Times the job was recreated by the operator because it failed or stalled (spec.maxRestarts)."""
    attempt: int | None = None
    """Index of the current training Job (named <run>-train-<attempt>): failure restarts plus deliberate
    recreations that resume from the latest checkpoint (resuming after a suspend on an API server
    without Job suspend, a change of spec.resources); only restarts count against maxRestarts."""
    gpu_hours: float | None = None
    """GPU-hours used: spec.resources.gpusPerNode times the run's pods that hold their node (the Job's
    ready pods where the API server reports them, else its active pods), integrated over wall-clock
    time between the operator's observations. Suspended, pending-only (where readiness is reported)
    and finished jobs accrue nothing; a CPU-only run (gpusPerNode 0) uses none. Folded in at least
    once a minute while GPUs are in use; spec.budget.maxGpuHours is checked on every reconcile."""
    gpus_in_use: int | None = None
    """GPUs the run's pods held at the last observation (the rate gpuHours grows at)."""
    gpu_hours_updated_at: str | None = None
    """When gpuHours was last brought up to date (RFC 3339)."""
    last_progress_time: str | None = None
    """When the step counter last advanced (for stall detection)."""
    eta: str | None = None
    """Estimated completion time (RFC 3339)."""
    checkpoints: list[CheckpointInfo] | None = None
    """Checkpoints kept."""
    final_model_uri: str | None = None
    """URI of the Hugging Face–format final model."""
    final_model_digest: str | None = None
    """Digest of the final model."""
    lineage: Lineage | None = None
    """What the model was made from."""
    output_uri: str | None = None
    """Prefix in the object store that holds everything this run produced."""
    started_at: str | None = None
    """When the first job was created."""
    completed_at: str | None = None
    """When the run Succeeded or Failed."""


class ForgeTrainingRun(WireModel):
    """A ForgeTrainingRun resource as the API server stores it."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["forge.ai/v1alpha1"] = "forge.ai/v1alpha1"
    """API version."""
    kind: Literal["ForgeTrainingRun"] = "ForgeTrainingRun"
    """Kind."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Standard object metadata."""
    spec: ForgeTrainingRunSpec
    """Desired state."""
    status: ForgeTrainingRunStatus = Field(default_factory=ForgeTrainingRunStatus)
    """Observed state."""
