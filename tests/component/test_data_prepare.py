"""`run_prepare` end to end on small generated corpora: every format, broken input, the S3 path,
sft/rl records, tokenizer training and reuse, shard and manifest integrity, progress and audit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from forge_trainer.cli import main
from forge_trainer.config import DatasetProgress, PrepareConfig
from forge_trainer.data.manifest import Manifest, ShardFormat, Split
from forge_trainer.data.prepare import run_prepare
from forge_trainer.data.shards import (
    IntegrityError,
    fetch_tokenizer,
    iter_records,
    load_manifest,
    read_token_shard,
)
from forge_trainer.errors import WorkloadError
from forge_trainer.store import open_uri
from tests.support.raw_corpus import corrupt_corpus, mixed_corpus, sentence_doc, write_jsonl
from tests.support.s3 import S3Server


def _config(source: Path | str, output: Path | str, **extra: Any) -> PrepareConfig:
    wire: dict[str, Any] = {"source": str(source), "output": str(output), "tokenizer": {"vocabSize": 400},
                            "sharding": {"tokensPerShard": 1024}, "split": {"validationFraction": 0.2}}
    wire.update(extra)
    return PrepareConfig.model_validate(wire)


def _decoded_documents(uri: str) -> list[str]:
    from transformers import PreTrainedTokenizerFast

    manifest, _ = load_manifest(uri)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(fetch_tokenizer(uri)))
    ids = np.concatenate([read_token_shard(uri, s) for s in manifest.shards if s.split is Split.TRAIN]
                         + [read_token_shard(uri, s) for s in manifest.shards if s.split is Split.VALIDATION])
    docs, start = [], 0
    for end in np.flatnonzero(ids == manifest.tokenizer.eos_token_id):
        docs.append(tok.decode(ids[start:end].tolist()))
        start = end + 1
    assert start == len(ids), "every document ends with eos"
    return docs


def test_every_format_becomes_verified_token_shards(tmp_path: Path) -> None:
    expected = mixed_corpus(tmp_path / "src")
    out = tmp_path / "out"
    manifest = run_prepare(_config(tmp_path / "src", out))

    total = sum(expected.values())
    assert manifest.counts.documents_read == total
    assert manifest.counts.documents_kept == total
    assert manifest.counts.dropped == {}
    docs = _decoded_documents(str(out))
    assert len(docs) == total
    for seed in (1, 3, 4, 5, 6, 7, 8):  # txt, jsonl, json, csv, parquet
        assert sentence_doc(seed) in docs
    assert any(d.startswith("# Title") for d in docs)  # markdown
    assert sentence_doc(9, 40) in docs  # text extracted from the PDF
    assert "def area(w, h):\n    return w * h" in "\n".join(docs)  # code keeps its indentation

    loaded, digest = load_manifest(str(out))
    assert loaded == manifest
    assert digest == "sha256:" + hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert manifest.dtype == "uint16"
    assert manifest.counts.tokens == sum(s.tokens for s in manifest.shards)
    assert manifest.counts.train_tokens + manifest.counts.validation_tokens == manifest.counts.tokens
    train = [s for s in manifest.shards if s.split is Split.TRAIN]
    assert len(train) > 1
    assert all(s.tokens == 1024 and s.bytes == 2048 for s in train[:-1])  # fixed size; the last may be short
    assert 0 < train[-1].tokens <= 1024
    assert manifest.spec["source"] == str(tmp_path / "src")


def test_manifest_progress_and_audit_agree(tmp_path: Path) -> None:
    mixed_corpus(tmp_path / "src")
    out = tmp_path / "out"
    manifest = run_prepare(_config(tmp_path / "src", out))
    _, digest = load_manifest(str(out))
    progress = DatasetProgress.model_validate_json((out / "progress.json").read_text())
    assert progress.stage == "done"
    assert progress.manifest_digest == digest
    assert progress.manifest_uri == (out / "manifest.json").as_uri()
    assert progress.tokenizer_uri == (out / "tokenizer.json").as_uri()
    assert progress.counts == manifest.counts
    assert progress.bytes_done == progress.bytes_total == sum(p.stat().st_size for p in (tmp_path / "src").iterdir())

    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    reads = {a["uri"] for a in audit if a["event"] == "read"}
    writes = {a["uri"]: a for a in audit if a["event"] == "write"}
    assert reads == {p.as_uri() for p in (tmp_path / "src").iterdir()}
    assert manifest.shards
    for shard in manifest.shards:
        assert writes[(out / shard.path).as_uri()]["sha256"] == shard.sha256
    assert writes[(out / "manifest.json").as_uri()]["sha256"] == digest
    assert set(audit[0]) == {"time", "event", "uri", "sha256", "size"}


def test_corrupt_corpus_is_counted_never_a_crash(tmp_path: Path) -> None:
    expected_drops = corrupt_corpus(tmp_path / "src")
    manifest = run_prepare(_config(tmp_path / "src", tmp_path / "out"))
    counts = manifest.counts
    assert counts.dropped == expected_drops
    assert counts.documents_kept == 4  # good.txt, the two good JSON lines, the good CSV row
    assert counts.documents_read == counts.documents_kept + sum(counts.dropped.values())
    assert set(manifest.examples) == set(expected_drops)
    assert any("unterminated" in e for e in manifest.examples["invalid_json"])
    assert all(len(e) <= 200 for ex in manifest.examples.values() for e in ex)


def test_dedup_filters_and_pii_counts(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    base = sentence_doc(1, 200)
    near = base.split()
    near[50] = "different"
    rows = [
        {"text": base},
        {"text": base},  # exact
        {"text": base.replace("  ", " ") + "  "},  # exact after normalisation
        {"text": " ".join(near)},  # near
        {"text": "tiny"},
        {"text": "to zed@example.com"},
        {"text": "$$$ ### %%% &&& *** @@@ !!! ??? ~~~ ^^^ letters"},
        {"text": sentence_doc(2) + " Mail ann@example.com or call +1 415 555 2671 from 192.168.0.1."},
        {"text": sentence_doc(3) + " Card 4242 4242 4242 4242, IBAN GB82WEST12345698765432."},
    ]
    write_jsonl(src / "d.jsonl", rows)
    manifest = run_prepare(_config(src, tmp_path / "out"))
    c = manifest.counts
    assert (c.exact_duplicates, c.near_duplicates) == (2, 1)
    assert c.dropped == {"exact_duplicate": 2, "near_duplicate": 1, "too_short": 2, "low_alpha_ratio": 1}
    assert c.redactions == {"credit_card": 1, "email": 1, "iban": 1, "ip_address": 1, "phone": 1}
    text = "\n".join(_decoded_documents(str(tmp_path / "out")))
    assert "<EMAIL>" in text and "ann@example.com" not in text
    manifest_text = (tmp_path / "out" / "manifest.json").read_text()
    assert "zed@example.com" not in manifest_text  # a dropped example is redacted too
    assert "<CREDIT_CARD>" in text and "4242 4242" not in text


def test_processing_switches_turn_steps_off(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "d.jsonl", [{"text": sentence_doc(1) + " a@b.example"}] * 2)
    manifest = run_prepare(_config(src, tmp_path / "out", processing={
        "exactDedup": False, "nearDedup": {"enabled": False}, "pii": {"enabled": False}}))
    assert manifest.counts.documents_kept == 2
    assert manifest.counts.redactions == {}


def test_tokenizer_round_trips_through_transformers(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    mixed_corpus(tmp_path / "src")
    manifest = run_prepare(_config(tmp_path / "src", tmp_path / "out"))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "out" / "tokenizer.json"))
    text = "Grüße, 世界! <|im_start|>user\nhi<|im_end|>\n\tindented code()  "
    assert tok.decode(tok.encode(text)) == text
    for special in ("<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(special)) == 1
    assert tok.convert_tokens_to_ids("<|endoftext|>") == manifest.tokenizer.eos_token_id
    assert tok.convert_tokens_to_ids("<|pad|>") == manifest.tokenizer.pad_token_id
    assert manifest.tokenizer.vocab_size == len(tok) <= 400


def test_reused_tokenizer_gives_identical_ids(tmp_path: Path) -> None:
    mixed_corpus(tmp_path / "src")
    first = run_prepare(_config(tmp_path / "src", tmp_path / "a"))
    for ref in (str(tmp_path / "a" / "tokenizer.json"), str(tmp_path / "a" / "manifest.json")):
        out = tmp_path / ("b" + str(len(ref)))
        second = run_prepare(_config(tmp_path / "src", out, tokenizer={"uri": ref}))
        assert second.tokenizer.sha256 == first.tokenizer.sha256
        assert second.tokenizer.uri == ref
        assert [s.sha256 for s in second.shards] == [s.sha256 for s in first.shards]


def test_tampered_shard_is_detected_on_read(tmp_path: Path) -> None:
    mixed_corpus(tmp_path / "src")
    manifest = run_prepare(_config(tmp_path / "src", tmp_path / "out"))
    shard = manifest.shards[0]
    path = tmp_path / "out" / shard.path
    data = bytearray(path.read_bytes())
    data[5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=shard.path):
        read_token_shard(str(tmp_path / "out"), shard)


def test_sft_conversations_become_record_shards(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "chat.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi, I am bo@x.example"},
                      {"role": "assistant", "content": "Hello!\n    indented"}]},
        {"prompt": "What is two plus two?", "response": "Four."},
        {"conversations": [{"from": "human", "value": "Name a color."}, {"from": "gpt", "value": "Blue."}]},
        {"messages": [{"role": "user", "content": "no answer"}]},
        {"prompt": "What is two plus two?", "response": "Four."},
        {"text": "plain text is not a conversation"},
    ])
    manifest = run_prepare(_config(src, tmp_path / "out", purpose="sft", split={"validationFraction": 0.0}))
    assert manifest.counts.dropped == {"invalid_record": 2, "exact_duplicate": 1}
    assert {s.format for s in manifest.shards} == {ShardFormat.JSONL}
    records = [r for s in manifest.shards for r in iter_records(str(tmp_path / "out"), s)]
    assert records[0]["messages"][1]["content"] == "Hi, I am <EMAIL>"
    assert records[0]["messages"][2]["content"] == "Hello!\n    indented"
    assert records[1] == {"messages": [{"role": "user", "content": "What is two plus two?"},
                                       {"role": "assistant", "content": "Four."}]}
    assert records[2]["messages"][0] == {"role": "user", "content": "Name a color."}
    assert manifest.counts.tokens == sum(s.tokens for s in manifest.shards) > 0
    assert manifest.dtype is None


def test_rl_tasks_keep_their_verifier_fields(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "tasks.jsonl", [
        {"prompt": "2+2=?", "answer": "4"},
        {"prompt": "Give a date", "pattern": r"\d{4}-\d{2}-\d{2}", "difficulty": "easy"},
        {"prompt": "Call the tool", "tool": "get_weather", "arguments": {"city": "Paris"}},
        {"prompt": "Write f", "tests": "assert f(1) == 2"},
        {"prompt": "Bad regex", "pattern": "("},
        {"answer": "no prompt"},
    ])
    manifest = run_prepare(_config(src, tmp_path / "out", purpose="rl", split={"validationFraction": 0.0}))
    assert manifest.counts.dropped == {"invalid_record": 2}
    records = [r for s in manifest.shards for r in iter_records(str(tmp_path / "out"), s)]
    assert records[0] == {"prompt": "2+2=?", "answer": "4"}
    assert records[1]["difficulty"] == "easy"
    assert records[2]["arguments"] == {"city": "Paris"}
    assert records[3]["tests"] == "assert f(1) == 2"


def test_s3_source_and_output_against_moto(s3: S3Server, tmp_path: Path) -> None:
    expected = mixed_corpus(tmp_path / "src")
    store, _ = open_uri(s3.uri(), s3.config)
    for path in (tmp_path / "src").iterdir():
        store.put_bytes(f"raw/corpus/{path.name}", path.read_bytes())
    store.put_bytes("raw/corpus-other/ignored.txt", sentence_doc(50).encode())  # a sibling prefix
    out = s3.uri("forge/ns/forgedataset/docs/uid1")
    manifest = run_prepare(PrepareConfig.model_validate({
        "source": s3.uri("raw/corpus"), "output": out, "store": {"endpoint": s3.endpoint, "secure": False},
        "tokenizer": {"vocabSize": 400}, "sharding": {"tokensPerShard": 1024}}))
    assert manifest.counts.documents_kept == sum(expected.values())
    loaded, digest = load_manifest(out + "/manifest.json", s3.config)
    assert loaded == manifest
    progress = json.loads(store.get_bytes("forge/ns/forgedataset/docs/uid1/progress.json"))
    assert progress["stage"] == "done" and progress["manifestDigest"] == digest
    tokens = np.concatenate([read_token_shard(out, s, s3.config) for s in manifest.shards])
    assert len(tokens) == manifest.counts.tokens
    assert store.exists("forge/ns/forgedataset/docs/uid1/audit.jsonl")


def test_empty_or_missing_source_fails_naming_the_uri(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(WorkloadError, match=str(source)):
            run_prepare(_config(source, tmp_path / "out"))
        progress = json.loads((tmp_path / "out" / "progress.json").read_text())
        assert progress["stage"] == "failed" and str(source) in progress["error"]
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.slow  # the S3 client retries a refused connection for a few seconds
def test_unreachable_s3_source_fails_naming_the_uri(tmp_path: Path) -> None:
    config = PrepareConfig.model_validate({
        "source": "s3://nobucket/raw", "output": str(tmp_path / "out"),
        "store": {"endpoint": "127.0.0.1:9", "secure": False}})
    with pytest.raises(WorkloadError, match="s3://nobucket/raw"):
        run_prepare(config)


def test_cli_prepare_exits_1_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "prepare.yaml"
    cfg.write_text(json.dumps({"source": str(tmp_path / "nothing"), "output": str(tmp_path / "out")}))
    assert main(["prepare", "--config", str(cfg)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(tmp_path / "nothing") in err


def test_manifest_is_valid_for_readers(tmp_path: Path) -> None:
    mixed_corpus(tmp_path / "src")
    run_prepare(_config(tmp_path / "src", tmp_path / "out"))
    raw = json.loads((tmp_path / "out" / "manifest.json").read_text())
    manifest = Manifest.model_validate(raw)
    assert manifest.shards[0].split is Split.TRAIN
    assert [s.split for s in manifest.shards] == sorted((s.split for s in manifest.shards),
                                                        key=lambda s: s is Split.VALIDATION)


def test_small_corpus_still_gets_a_validation_split(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_jsonl(src / "d.jsonl", [{"text": sentence_doc(i)} for i in range(3)])
    manifest = run_prepare(_config(src, tmp_path / "out", split={"validationFraction": 0.001}))
    assert {s.split for s in manifest.shards} == {Split.TRAIN, Split.VALIDATION}
    assert manifest.counts.validation_tokens > 0
    none = run_prepare(_config(src, tmp_path / "out2", split={"validationFraction": 0.0}))
    assert {s.split for s in none.shards} == {Split.TRAIN}


def test_unusable_tokenizer_reference_fails_naming_it(tmp_path: Path) -> None:
    mixed_corpus(tmp_path / "src")
    missing = str(tmp_path / "elsewhere" / "tokenizer.json")
    with pytest.raises(WorkloadError, match=missing):
        run_prepare(_config(tmp_path / "src", tmp_path / "out", tokenizer={"uri": missing}))
    with pytest.raises(WorkloadError, match="datasetRef"):
        run_prepare(_config(tmp_path / "src", tmp_path / "out", tokenizer={"datasetRef": "other"}))
    assert not (tmp_path / "out" / "manifest.json").exists()
