"""ForgeDataset (`fds`): a raw corpus in the object store becomes training-ready shards."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from forge_operator.api.common import (
    DNS1123_LABEL,
    STORE_URI_PATTERN,
    ComputeResources,
    ResourceStatus,
    RetentionSpec,
    SecretRef,
    StoreUri,
)
from forge_operator.api.network import NetworkSpec
from forge_trainer.config import (
    DatasetCounts,
    DatasetFormat,
    DatasetPurpose,
    ProcessingConfig,
    ShardingConfig,
    SplitConfig,
    TokenizerConfig,
    WireModel,
    WorkerProgress,
)
from forge_trainer.config.data import SPLIT_BYTES_MIN


class DatasetSource(WireModel):
    """Where the raw corpus is."""

    uri: StoreUri
    """`s3://bucket/prefix` in the company's object store, or a local directory (local mode only)."""
    credentials_secret: SecretRef | None = None
    """Secret in this namespace with `accessKey` and `secretKey` for the source bucket; defaults to
    the operator's object-store credentials."""
    split_bytes: Annotated[int | None, Field(ge=SPLIT_BYTES_MIN)] = None
    """A JSON Lines or CSV source file larger than this many bytes is read as pieces of this size, on record
    boundaries, so several workers share it (at least 65536; unset: 256 MiB). Independent of parallelism:
    every parallelism gives the same dataset."""


class ForgeDatasetSpec(WireModel):
    """Desired state of a ForgeDataset."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "!has(self.tokenizer) || (has(self.tokenizer.vocabSize) ? 1 : 0) + "
                 "(has(self.tokenizer.datasetRef) ? 1 : 0) + (has(self.tokenizer.uri) ? 1 : 0) <= 1",
         "message": "tokenizer: set only one of vocabSize, datasetRef, uri"},
        {"rule": f"!has(self.tokenizer) || !has(self.tokenizer.uri) || self.tokenizer.uri.matches('{STORE_URI_PATTERN}')",
         "message": "tokenizer.uri: must be s3://bucket/key (lowercase, no empty path segment) or a local path"},
    ]})

    source: DatasetSource
    """Where the raw corpus is."""
    format: DatasetFormat = DatasetFormat.AUTO
    """How to read source files; auto picks by extension."""
    text_field: str = "text"
    """Field holding the text in json/jsonl/csv/parquet records."""
    purpose: DatasetPurpose = DatasetPurpose.PRETRAIN
    """pretrain (plain text), sft (conversations or prompt/response), rl (tasks with a verifier)."""
    processing: ProcessingConfig = Field(default_factory=ProcessingConfig)
    """Normalisation, deduplication, quality filters and PII redaction."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Train a BPE tokenizer (vocabSize) or reuse one (datasetRef or uri)."""
    split: SplitConfig = Field(default_factory=SplitConfig)
    """Validation split."""
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    """Shard packing."""
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    """What deleting the dataset removes from the object store."""
    resources: ComputeResources = Field(default_factory=ComputeResources)
    """CPU and memory for the preparation job (each worker's, when parallelism is above 1)."""
    network: NetworkSpec = Field(default_factory=NetworkSpec)
    """Extra egress for the preparation pod; by default it reaches only DNS and the object store."""
    parallelism: Annotated[int, Field(ge=1, le=256)] = 1
    """Workers the preparation is split across (pods on Kubernetes, processes under `forge run`). The
    dataset is the same whatever the number: the same documents, tokens, shards and digest."""

    @model_validator(mode="after")
    def _tokenizer_ref(self) -> Self:
        uri = self.tokenizer.uri
        if uri is not None and not re.match(STORE_URI_PATTERN, uri):
            raise ValueError(f"tokenizer.uri {uri!r} must be s3://bucket/key (lowercase, no empty path segment) "
                             "or a local path")
        ref = self.tokenizer.dataset_ref
        if ref is not None and not _is_dns_label(ref):
            raise ValueError(f"tokenizer.datasetRef {ref!r} is not a valid resource name")
        return self


def _is_dns_label(name: str) -> bool:
    return bool(re.match(DNS1123_LABEL, name)) and len(name) <= 253


class DatasetPhase(StrEnum):
    """Lifecycle of a ForgeDataset."""

    PENDING = "Pending"
    """Accepted; the preparation job is not running yet (or waits for a referenced tokenizer)."""
    RUNNING = "Running"
    """The preparation job runs."""
    READY = "Ready"
    """Shards and manifest are written; training runs may use the dataset."""
    FAILED = "Failed"
    """The spec is invalid or the job failed; conditions say why."""


class DatasetReason(StrEnum):
    """Reasons a ForgeDataset's conditions give."""

    INVALID_SPEC = "InvalidSpec"
    WAITING_FOR_TOKENIZER = "WaitingForTokenizer"
    JOB_CREATED = "JobCreated"
    JOB_RUNNING = "JobRunning"
    JOB_SUCCEEDED = "JobSucceeded"
    JOB_FAILED = "JobFailed"
    RESULT_MISSING = "ResultMissing"
    PREPARED = "Prepared"


class ForgeDatasetStatus(ResourceStatus):
    """Observed state of a ForgeDataset."""

    phase: DatasetPhase | None = None
    """Pending, Running, Ready or Failed."""
    job_name: str | None = None
    """Name of the preparation Job."""
    stage: str | None = None
    """What the preparation job is doing now (reading, tokenizer, packing, done)."""
    documents_done: int | None = None
    """Records processed so far."""
    bytes_done: int | None = None
    """Source bytes read so far."""
    counts: DatasetCounts | None = None
    """Documents read, kept and dropped (per reason), duplicates, redactions, tokens."""
    workers: list[WorkerProgress] | None = None
    """With spec.parallelism above 1, until Ready: each worker's stage, reads and failure as it last reported
    them (at most 64: the failed and running ones first; workersSummary then counts them all)."""
    workers_summary: str | None = None
    """How many workers are committed, running and failed, when status.workers leaves some out."""
    manifest_uri: str | None = None
    """URI of the shard manifest."""
    digest: str | None = None
    """sha256 of the manifest: the dataset's identity (`sha256:<hex>`)."""
    tokenizer_uri: str | None = None
    """URI of tokenizer.json."""
    output_uri: str | None = None
    """Prefix in the object store that holds everything this dataset produced."""
    started_at: str | None = None
    """When the preparation job was created."""
    completed_at: str | None = None
    """When the dataset became Ready or Failed."""


class ForgeDataset(WireModel):
    """A ForgeDataset resource as the API server stores it."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["forge.ai/v1alpha1"] = "forge.ai/v1alpha1"
    """API version."""
    kind: Literal["ForgeDataset"] = "ForgeDataset"
    """Kind."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Standard object metadata."""
    spec: ForgeDatasetSpec
    """Desired state."""
    status: ForgeDatasetStatus = Field(default_factory=ForgeDatasetStatus)
    """Observed state."""
