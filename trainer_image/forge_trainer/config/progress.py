"""What workloads report back in `progress.json` next to their outputs (the operator mirrors it into
status): `DatasetProgress` and `TrainProgress`."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from forge_trainer.config.wire import WireModel


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


class WorkerProgress(WireModel):
    """One worker of a preparation split across workers, as the dataset's progress.json shows it."""

    model_config = ConfigDict(extra="ignore")

    worker: int
    """The worker's index (0 also runs the tokenizer and manifest stages)."""
    stage: str = "starting"
    """The stage it is in, or the last one it committed while it waits for the others."""
    committed: bool = False
    """It committed that stage (its outputs are in the store; a retry skips them)."""
    documents_read: int = 0
    """Records it read in its scan so far."""
    bytes_done: int = 0
    """Source bytes it read so far."""
    bytes_total: int | None = None
    """Source bytes it reads in all, once it listed the source."""
    error: str | None = None
    """One-line reason when its last attempt failed."""


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
    workers: list[WorkerProgress] = Field(default_factory=list)
    """With the preparation split across workers: each worker's live view (empty for one process)."""


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
    completion_length: float | None = None
    """Mean completion length in tokens in the latest RL step."""
    clip_fraction: float | None = None
    """Share of the latest RL step's completion tokens whose probability ratio was clipped."""
    checkpoints: list[CheckpointInfo] = Field(default_factory=list)
    """Checkpoints kept."""
    final_model_uri: str | None = None
    """URI of the Hugging Face–format export once written."""
    final_model_digest: str | None = None
    """sha256 over the export's files once written."""
    base_model_digest: str | None = None
    """sha256 over the files of the base model directory (`initModel`) the run read (`sha256:<hex>`, as
    `finalModelDigest` is computed), for the run's lineage."""
    eval_metrics: dict[str, float] = Field(default_factory=dict)
    """Final evaluation metrics (loss, perplexity, pass rates per verifier)."""
    initial_eval_metrics: dict[str, float] = Field(default_factory=dict)
    """The run's first evaluation (rl: the starting model, before the first step), for comparison."""
    done: bool = False
    """The workload finished successfully."""
    error: str | None = None
    """One-line reason when the workload failed."""
    updated_at: str | None = None
    """When this file was written (RFC 3339)."""
