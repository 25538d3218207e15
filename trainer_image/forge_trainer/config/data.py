"""What a ForgeDataset's workload (`forge-trainer prepare`) is told: `PrepareConfig` and its parts."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, model_validator

from forge_trainer.config.store import StoreConfig
from forge_trainer.config.wire import WireModel

PREPARE_STAGES = ("scan", "dedup", "tokenizer", "pack", "manifest")
"""The stages of a preparation split across workers (`forge-trainer prepare --stage`), in the order they run;
each starts once every worker of the one before has committed."""
PREPARE_SINGLE_WORKER_STAGES = frozenset({"tokenizer", "manifest"})
"""Stages that one worker (index 0) runs whatever the parallelism."""
MAX_PREPARE_WORKERS = 256
"""Most workers one preparation may be split across."""
SPLIT_BYTES_DEFAULT = 256 << 20
"""Size of the pieces a large JSON Lines or CSV source object is read in when `splitBytes` is not set."""
SPLIT_BYTES_MIN = 64 << 10
"""Smallest piece size: below it the ranged reads cost more than the records they carry."""


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
    split_bytes: Annotated[int | None, Field(ge=SPLIT_BYTES_MIN)] = None
    """A JSON Lines or CSV source object larger than this is read as byte ranges of this size (pieces), so
    several workers can share one huge file; unset: 256 MiB. It never depends on the parallelism, so every
    parallelism reads the same pieces and gives the same dataset."""

    @property
    def piece_bytes(self) -> int:
        """The piece size in effect (`split_bytes`, or its default)."""
        return self.split_bytes if self.split_bytes is not None else SPLIT_BYTES_DEFAULT
