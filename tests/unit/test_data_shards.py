"""Reading a prepared dataset verifies every artifact against the manifest's digests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from forge_trainer.config import DatasetPurpose
from forge_trainer.data.manifest import Manifest, ShardFormat, ShardInfo, Split, TokenizerInfo
from forge_trainer.data.shards import (
    IntegrityError,
    fetch_tokenizer,
    iter_records,
    load_manifest,
    read_token_shard,
)
from forge_trainer.store import sha256_bytes


def _write_dataset(root: Path) -> Manifest:
    (root / "shards").mkdir(parents=True)
    (root / "records").mkdir()
    tokens = np.arange(10, dtype="<u2").tobytes()
    (root / "shards" / "train-00000.bin").write_bytes(tokens)
    records = b'{"prompt": "2+2?", "answer": "4"}\n{"prompt": "3+3?", "answer": "6"}\n'
    (root / "records" / "train-00000.jsonl").write_bytes(records)
    tok = b'{"fake": "tokenizer"}'
    (root / "tokenizer.json").write_bytes(tok)
    manifest = Manifest(
        purpose=DatasetPurpose.PRETRAIN, dtype="uint16", created_at="2026-01-01T00:00:00Z",
        tokenizer=TokenizerInfo(path="tokenizer.json", sha256=sha256_bytes(tok), vocab_size=300,
                                eos_token_id=0),
        shards=[
            ShardInfo(path="shards/train-00000.bin", split=Split.TRAIN, format=ShardFormat.TOKENS,
                      bytes=len(tokens), tokens=10, records=1, sha256=sha256_bytes(tokens)),
            ShardInfo(path="records/train-00000.jsonl", split=Split.TRAIN, format=ShardFormat.JSONL,
                      bytes=len(records), records=2, sha256=sha256_bytes(records)),
        ])
    (root / "manifest.json").write_text(json.dumps(manifest.to_wire()))
    return manifest


def test_reads_verified_tokens_records_and_tokenizer(tmp_path: Path) -> None:
    _write_dataset(tmp_path / "ds")
    for uri in (str(tmp_path / "ds"), str(tmp_path / "ds" / "manifest.json")):
        manifest, digest = load_manifest(uri)
        assert digest == sha256_bytes((tmp_path / "ds" / "manifest.json").read_bytes())
        tokens = read_token_shard(uri, manifest.shards[0])
        assert tokens.tolist() == list(range(10))
        assert [r["answer"] for r in iter_records(uri, manifest.shards[1])] == ["4", "6"]
        assert fetch_tokenizer(uri).read_bytes() == b'{"fake": "tokenizer"}'


def test_corrupt_shard_is_an_error_naming_the_shard(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    shard = tmp_path / "shards" / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[0] ^= 1
    shard.write_bytes(bytes(data))
    manifest, _ = load_manifest(str(tmp_path))
    with pytest.raises(IntegrityError, match=r"train-00000\.bin: sha256 mismatch"):
        read_token_shard(str(tmp_path), manifest.shards[0])
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(IntegrityError, match=r"train-00000\.bin: 18 bytes, manifest says 20"):
        read_token_shard(str(tmp_path), manifest.shards[0])


def test_tampered_tokenizer_is_refused(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(IntegrityError, match=r"tokenizer\.json"):
        fetch_tokenizer(str(tmp_path))
