"""The dataset manifest: the contract between `forge-trainer prepare` (writer) and training (reader).

A prepared dataset lives under one prefix (the names are `forge_trainer.config.store`'s):

    <prefix>/manifest.json          this model; its own sha256 is the dataset digest
    <prefix>/tokenizer.json         Hugging Face `tokenizers` file (PreTrainedTokenizerFast loads it)
    <prefix>/shards/train-00000.bin tokens: little-endian uint16/uint32, documents separated by eos
    <prefix>/shards/validation-00000.bin
    <prefix>/records/train-00000.jsonl   sft/rl: cleaned conversations or tasks, tokenized by the trainer
    <prefix>/progress.json          DatasetProgress, written while the workload runs
    <prefix>/audit.jsonl            one record per object read and artifact written

Shard paths are relative to the prefix, so a dataset can be copied between stores unchanged.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from forge_trainer.config import DatasetCounts, DatasetPurpose, WireModel
from forge_trainer.config.store import AUDIT_NAME as AUDIT_NAME
from forge_trainer.config.store import MANIFEST_NAME as MANIFEST_NAME
from forge_trainer.config.store import PROGRESS_NAME as PROGRESS_NAME
from forge_trainer.config.store import TOKENIZER_NAME as TOKENIZER_NAME


class ShardFormat(StrEnum):
    """What a shard file holds."""

    TOKENS = "tokens"
    """Packed token ids (pretrain)."""
    JSONL = "jsonl"
    """Cleaned records, one JSON object per line (sft conversations, rl tasks)."""


class Split(StrEnum):
    """Which split a shard belongs to."""

    TRAIN = "train"
    VALIDATION = "validation"


class ShardInfo(WireModel):
    """One shard file."""

    path: str
    """Path relative to the dataset prefix."""
    split: Split
    """Train or validation."""
    format: ShardFormat
    """Tokens or JSONL records."""
    bytes: int
    """File size in bytes."""
    tokens: int = 0
    """Tokens in the shard (tokens format)."""
    records: int = 0
    """Documents or records in the shard."""
    sha256: str
    """`sha256:<hex>` of the file; readers verify it."""


class TokenizerInfo(WireModel):
    """The tokenizer the shards were made with."""

    path: str | None = None
    """Path relative to the dataset prefix, when the tokenizer was trained here."""
    uri: str | None = None
    """Absolute URI, when an existing tokenizer was reused."""
    sha256: str
    """`sha256:<hex>` of tokenizer.json."""
    vocab_size: int
    """Vocabulary size, special tokens included."""
    eos_token_id: int
    """Id of the end-of-sequence token that separates packed documents."""
    pad_token_id: int | None = None
    """Id of the padding token."""


class Manifest(WireModel):
    """manifest.json of a prepared dataset."""

    version: int = 1
    """Manifest format version."""
    purpose: DatasetPurpose
    """pretrain (token shards) or sft/rl (JSONL record shards)."""
    dtype: str | None = None
    """numpy dtype of token shards: uint16 when the vocabulary fits, else uint32."""
    tokenizer: TokenizerInfo
    """Tokenizer used."""
    shards: list[ShardInfo] = Field(default_factory=list)
    """Every shard, train first."""
    counts: DatasetCounts = Field(default_factory=DatasetCounts)
    """Counts of documents read, kept and dropped."""
    examples: dict[str, list[str]] = Field(default_factory=dict)
    """First few dropped examples per reason (truncated), to see why things were dropped."""
    spec: dict[str, Any] = Field(default_factory=dict)
    """The PrepareConfig the dataset was made from."""
    created_at: str
    """When the manifest was written (RFC 3339)."""
