"""A preparation split across workers gives the dataset one process gives: the same kept documents,
redactions, drop counts, tokens, shards and manifest digest at parallelism 1, 2 and 4, on a corpus whose
planted duplicates sit in files (and pieces of one big file) that different workers read."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from forge_trainer.config import DatasetFormat, PrepareConfig
from forge_trainer.data.ingest import list_source, open_source, pieces
from forge_trainer.data.prepare import run_prepare
from forge_trainer.data.shards import load_manifest
from forge_trainer.data.stages import run_prepare_parallel, run_stage
from forge_trainer.data.work import partition
from forge_trainer.errors import WorkloadError
from forge_trainer.store import LocalStore, StoreError, open_uri
from tests.support.raw_corpus import sentence_doc, write_jsonl
from tests.support.s3 import S3Server

EPOCH = "1767225600"  # SOURCE_DATE_EPOCH: the manifest's created_at, so digests can be compared


def _config(source: Path, output: Path, **extra: Any) -> PrepareConfig:
    wire: dict[str, Any] = {"source": str(source), "output": str(output), "tokenizer": {"vocabSize": 400},
                            "sharding": {"tokensPerShard": 1024}, "split": {"validationFraction": 0.2}}
    wire.update(extra)
    return PrepareConfig.model_validate(wire)


def _near(text: str, at: int) -> str:
    words = text.split()
    words[at] = "different"
    return " ".join(words)


def _corpus(src: Path) -> dict[str, str]:
    """Eight files; the planted duplicates' originals are in the first files, their copies in the last."""
    src.mkdir()
    base, chain, pii = sentence_doc(101, 200), sentence_doc(102, 200), sentence_doc(103, 60)
    planted = {"base": base, "chain": chain}
    for f in range(8):
        rows: list[dict[str, Any]] = [{"text": sentence_doc(f * 100 + i, 60 + i)} for i in range(12)]
        if f == 0:
            rows += [{"text": base}, {"text": chain}, {"text": pii + " Mail ann@example.com or call +1 415 555 2671."}]
        if f == 1:
            rows += [{"text": "tiny"}, {"text": "to zed@example.com"}]
        if f == 6:
            rows += [{"text": base + "  "}, {"text": _near(chain, 20)}]  # exact (after normalising) and near
        if f == 7:
            rows += [{"text": _near(base, 150)}, {"text": _near(_near(chain, 20), 120)},  # near, and a chain
                     {"text": "$$$ ### %%% &&& *** @@@ !!! ??? ~~~ ^^^ letters"},
                     {"text": pii + " Mail ann@example.com or call +1 415 555 2671."}]  # exact, with PII
        write_jsonl(src / f"part-{f}.jsonl", rows)
    (src / "part-3.jsonl").write_text((src / "part-3.jsonl").read_text() + "{not json\n")
    (src / "notes.txt").write_text(sentence_doc(900, 120) + "\nCard 4242 4242 4242 4242, IBAN GB82WEST12345698765432.")
    return planted


def _result(out: Path) -> dict[str, bytes]:
    """Every file the dataset consists of (progress and audit carry times: left out)."""
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("progress.json", "audit.jsonl")}


def test_parallelism_1_2_4_give_the_one_process_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    src, out = tmp_path / "src", tmp_path / "out"
    _corpus(src)
    objects = list_source(*open_source(str(src)))
    keys = [o.key for o in objects]
    listing = pieces(objects, DatasetFormat.AUTO, _config(src, out).piece_bytes)
    assert [p.key for p in listing] == keys, "small files are one piece each"
    for workers in (2, 4):  # the originals and their copies are read by different workers
        bounds = partition(listing, workers)
        owner = {k: next(w for w in range(workers) if bounds[w] <= i < bounds[w + 1]) for i, k in enumerate(keys)}
        assert owner["part-0.jsonl"] != owner["part-7.jsonl"] and owner["part-0.jsonl"] != owner["part-6.jsonl"]

    reference = run_prepare(_config(src, out))
    expected = _result(out)
    c = reference.counts
    assert (c.exact_duplicates, c.near_duplicates) == (2, 3)  # the planted copies are gone
    assert c.dropped == {"exact_duplicate": 2, "near_duplicate": 3, "too_short": 2, "low_alpha_ratio": 1,
                         "invalid_json": 1}
    assert c.redactions == {"credit_card": 1, "email": 1, "iban": 1, "phone": 1}
    _, reference_digest = load_manifest(str(out))

    for workers in (1, 2, 4):
        shutil.rmtree(out)
        manifest = run_prepare_parallel(_config(src, out), workers)
        assert manifest.counts == reference.counts, workers
        assert manifest.examples == reference.examples, workers
        assert _result(out) == expected, f"parallelism {workers}: the dataset's files differ"
        assert load_manifest(str(out))[1] == reference_digest
        assert not (out / "_work").exists(), "the working area is deleted once the manifest is written"
        audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
        assert sorted(r["uri"] for r in audit if r["event"] == "read") == sorted((src / k).as_uri() for k in keys)


def test_a_tokenizer_sample_smaller_than_the_corpus_is_the_same_at_every_parallelism(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beyond TOKENIZER_SAMPLE_BYTES of kept text the tokenizer trains on an even sample in reading order: the
    workers' undecoded lines are sampled as the one-process spill is, so the tokenizer and shards are equal."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    src, out = tmp_path / "src", tmp_path / "out"
    _corpus(src)
    run_prepare(_config(src, out))
    whole = (out / "tokenizer.json").read_bytes()
    monkeypatch.setattr("forge_trainer.data.prepare.TOKENIZER_SAMPLE_BYTES", 6000)  # about a fifth of the kept text
    shutil.rmtree(out)
    run_prepare(_config(src, out))
    expected = _result(out)
    assert expected["tokenizer.json"] != whole, "the tokenizer was trained on the whole corpus, not a sample"
    for workers in (1, 2, 4):
        shutil.rmtree(out)
        run_prepare_parallel(_config(src, out), workers)
        assert _result(out) == expected, f"parallelism {workers}: the dataset's files differ"


def _big_corpus(src: Path) -> tuple[bytes, int]:
    """One jsonl of about 500 KB (pieces of 64 KiB: eight) whose planted copies lie in other pieces than their
    originals, one line starting exactly on a piece boundary, and a small file; its bytes and line count."""
    src.mkdir()
    rows = [{"text": sentence_doc(5000 + i, 60 + i % 50)} for i in range(700)]
    rows[650] = {"text": rows[3]["text"]}  # an exact copy, five pieces later
    rows[600] = {"text": _near(rows[10]["text"], 40)}  # a near copy
    rows[400] = {"text": rows[399]["text"] + "  "}  # an exact copy (after normalising) in the next line
    lines = [json.dumps(r) for r in rows]
    size = sum(len(line) + 1 for line in lines[:200])
    lines[199] += " " * (3 * 65536 - size)  # line 200 starts exactly where piece 3 does
    data = ("\n".join(lines) + "\n").encode()
    assert data.index(json.dumps(rows[200]).encode()) == 3 * 65536
    (src / "big.jsonl").write_bytes(data)
    write_jsonl(src / "small.jsonl", [{"text": rows[5]["text"]}, {"text": sentence_doc(1, 70)}])
    return data, len(lines)


def test_a_big_file_in_pieces_gives_the_same_dataset_at_every_parallelism(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    src, out = tmp_path / "src", tmp_path / "out"
    data, lines = _big_corpus(src)
    config = _config(src, out, splitBytes=65536)
    listing = pieces(list_source(*open_source(str(src))), DatasetFormat.AUTO, config.piece_bytes)
    assert [(p.key, p.start) for p in listing][:3] == [("big.jsonl", 0), ("big.jsonl", 65536), ("big.jsonl", 131072)]
    assert len(listing) == 9
    bounds = partition(listing, 4)
    assert bounds[1] > 0 and bounds[3] < 8, "the big file's pieces are read by several workers"

    reference = run_prepare(config)
    expected = _result(out)
    c = reference.counts
    assert c.documents_read == lines + 2, "every line is read once, by exactly one piece"
    assert (c.exact_duplicates, c.near_duplicates) == (3, 1)
    _, digest = load_manifest(str(out))
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    reads = sorted(((r["uri"], r["sha256"], r["size"]) for r in audit if r["event"] == "read"), key=lambda r: r[0])
    big = (src / "big.jsonl").as_uri()
    cuts = [*range(0, len(data), 65536), len(data)]
    assert reads == sorted([(f"{big}#bytes={s}-{e}", "sha256:" + hashlib.sha256(data[s:e]).hexdigest(), e - s)
                            for s, e in itertools.pairwise(cuts)]
                           + [((src / "small.jsonl").as_uri(), reads[-1][1], (src / "small.jsonl").stat().st_size)])

    for workers in (1, 2, 4):
        shutil.rmtree(out)
        manifest = run_prepare_parallel(config, workers)
        assert manifest.counts == reference.counts, workers
        assert _result(out) == expected, f"parallelism {workers}: the dataset's files differ"
        assert load_manifest(str(out))[1] == digest
        again = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
        assert sorted(((r["uri"], r["sha256"], r["size"]) for r in again if r["event"] == "read"),
                      key=lambda r: r[0]) == reads


def test_pieces_read_from_s3_by_ranged_gets_give_the_local_dataset(
        s3: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    src = tmp_path / "src"
    _big_corpus(src)
    rows = [f'{i},"{sentence_doc(7000 + i, 40)}"' for i in range(400)]  # about 110 KB: two pieces
    rows[300] = f'300,"{sentence_doc(7003, 40)}"'  # an exact copy, in the second piece
    (src / "table.csv").write_text("id,text\n" + "\n".join(rows) + "\n")
    store, _ = open_uri(s3.uri(), s3.config)
    for path in src.iterdir():
        store.put_bytes(f"raw/{path.name}", path.read_bytes())
    found = {}
    for name, source, workers in (("local", str(src), 1), ("s3", s3.uri("raw"), 2)):
        out = tmp_path / name
        config = _config(src, out, splitBytes=65536, store={"endpoint": s3.endpoint, "secure": False})
        manifest = run_prepare_parallel(config.model_copy(update={"source": source}), workers)
        audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
        reads = sorted((r["uri"].rsplit("/", 1)[1], r["sha256"]) for r in audit if r["event"] == "read")
        found[name] = (manifest.counts, manifest.shards, manifest.tokenizer, reads)
    assert found["s3"] == found["local"]
    assert [u for u, _ in found["s3"][3]] == sorted(["big.jsonl#bytes=0-65536", *[f"big.jsonl#bytes={s}-{s + 65536}"
                                              for s in range(65536, 7 * 65536, 65536)],
                                              f"big.jsonl#bytes={7 * 65536}-{(src / 'big.jsonl').stat().st_size}",
                                              "small.jsonl", "table.csv#bytes=0-65536",
                                              f"table.csv#bytes=65536-{(src / 'table.csv').stat().st_size}"])
    assert found["s3"][0].exact_duplicates == 4 and found["s3"][0].documents_read == 700 + 2 + 400


def test_a_retried_manifest_stage_does_not_double_the_audit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    src, out = tmp_path / "src", tmp_path / "out"
    _corpus(src)
    config = _config(src, out)
    for stage in ("scan", "dedup", "tokenizer", "pack"):
        for worker in range(1 if stage == "tokenizer" else 2):
            run_stage(config, stage, worker, 2)
    real_put = LocalStore.put_file

    def failing_put(self: LocalStore, key: str, path: Path) -> None:  # the store fails mid-way through the shards
        if "shards/" in key and "00001" in key:
            raise StoreError(f"{self.uri(key)}: connection reset")
        real_put(self, key, path)

    monkeypatch.setattr(LocalStore, "put_file", failing_put)
    with pytest.raises(WorkloadError, match="connection reset"):
        run_stage(config, "manifest", 0, 2)
    monkeypatch.setattr(LocalStore, "put_file", real_put)
    run_stage(config, "manifest", 0, 2)
    audit = [json.loads(line) for line in (out / "audit.jsonl").read_text().splitlines()]
    events = [(r["event"], r["uri"]) for r in audit]
    assert len(events) == len(set(events)), "no record twice"
    assert sorted(u for e, u in events if e == "read") == sorted(p.as_uri() for p in src.iterdir())
    assert (out / "manifest.json").as_uri() in {u for e, u in events if e == "write"}


def test_sft_records_are_the_same_in_parallel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for f in range(4):
        write_jsonl(src / f"chat-{f}.jsonl", [
            {"prompt": f"Question {f}.{i}: {sentence_doc(f * 10 + i, 30)}", "response": sentence_doc(i, 20)}
            for i in range(6)] + ([{"prompt": "Question 0.0: " + sentence_doc(0, 30), "response": sentence_doc(0, 20)},
                                   {"prompt": "mail me at bo@example.com", "response": "sure"}] if f == 3 else []))
    config = _config(src, out, purpose="sft")
    run_prepare(config)
    expected = _result(out)
    shutil.rmtree(out)
    run_prepare_parallel(config, 3)
    assert _result(out) == expected


def test_a_retried_worker_skips_committed_work_and_stages_wait(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    _corpus(src)
    config = _config(src, out)
    run_stage(config, "scan", 0, 2)
    with pytest.raises(WorkloadError, match="stage scan is not finished: worker 1 has not committed"):
        run_stage(config, "dedup", 0, 2)
    assert "worker 1 has not committed" in json.loads((out / "progress.json").read_text())["error"]
    run_stage(config, "scan", 1, 2)
    progress = json.loads((out / "progress.json").read_text())  # what the operator mirrors into status
    # every worker's state merged: worker 0's failed dedup attempt stays its last word until it is retried
    assert progress["stage"] == "failed" and "dedup worker 0" in progress["error"]
    assert [(w["worker"], w["stage"], w["committed"]) for w in progress["workers"]] == [(0, "dedup", False),
                                                                                         (1, "scan", True)]
    assert progress["counts"]["documentsRead"] == 8 * 12 + 3 + 2 + 2 + 4 + 1 + 1  # the invalid JSON line too
    assert progress["counts"]["dropped"] == {"too_short": 2, "low_alpha_ratio": 1, "invalid_json": 1}
    docs = out / "_work" / "scan" / "00001" / "docs.jsonl"
    docs.write_bytes(b"")  # a retried worker whose commit exists does not redo its work
    run_stage(config, "scan", 1, 2)
    assert docs.read_bytes() == b""
    with pytest.raises(WorkloadError, match="scan"):  # another parallelism never reuses these outputs
        run_stage(config, "dedup", 0, 3)
    with pytest.raises(WorkloadError, match="--worker 1 is out of range"):
        run_stage(config, "tokenizer", 1, 2)
    with pytest.raises(WorkloadError, match="--workers 0 must be between 1 and 256"):
        run_stage(config, "scan", 0, 0)


def test_workers_as_processes_through_the_cli(tmp_path: Path) -> None:
    """Two worker processes started at once, each running all its stages (what a pod runs), wait for each
    other between stages and give the one-process dataset."""
    src, out = tmp_path / "src", tmp_path / "out"
    _corpus(src)
    cfg = tmp_path / "prepare.json"
    cfg.write_text(json.dumps(_config(src, out).to_wire()))
    env = {**os.environ, "SOURCE_DATE_EPOCH": EPOCH}
    procs = [subprocess.Popen([sys.executable, "-m", "forge_trainer.cli", "prepare", "--config", str(cfg),
                               "--stage", "all", "--worker", str(w), "--workers", "2", "--poll-seconds", "0.2"],
                              env=env, stderr=subprocess.PIPE, text=True) for w in (1, 0)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    parallel = _result(out)
    shutil.rmtree(out)
    subprocess.run([sys.executable, "-m", "forge_trainer.cli", "prepare", "--config", str(cfg)], env=env, check=True)
    assert parallel == _result(out)


def test_forge_run_prepares_with_worker_processes(tmp_path: Path) -> None:
    """`forge run` honours spec.parallelism (worker processes, stage by stage) and gets the same shards,
    tokenizer and counts as a dataset prepared in one process."""
    from forge_operator.local.command import run_local
    from forge_operator.local.runner import RunOptions

    _corpus(tmp_path / "src")
    docs = []
    for name, parallelism in (("one", 1), ("three", 3)):
        docs.append(f"""apiVersion: forge.ai/v1alpha1
kind: ForgeDataset
metadata:
  name: {name}
spec:
  source:
    uri: src/
  parallelism: {parallelism}
  tokenizer:
    vocabSize: 400
  sharding:
    tokensPerShard: 1024
  split:
    validationFraction: 0.2
""")
    (tmp_path / "datasets.yaml").write_text("---\n".join(docs))
    root = tmp_path / ".forge"
    assert run_local([tmp_path / "datasets.yaml"], RunOptions(root=root, serve=False), plain=True) == 0
    found = {}
    for name in ("one", "three"):
        [manifest_file] = [p for p in root.rglob("manifest.json") if f"/{name}/" in p.as_posix()]
        manifest = json.loads(manifest_file.read_text())
        found[name] = (manifest["shards"], manifest["tokenizer"], manifest["counts"], manifest["examples"])
        assert not (manifest_file.parent / "_work").exists(), "the working area is gone, empty directories too"
    assert found["one"] == found["three"]
    assert found["three"][2]["nearDuplicates"] == 3


def test_a_manifest_stage_killed_while_clearing_is_finished_by_its_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pod dies after manifest.json is written, half-way through deleting `_work/`: the retry sees a
    finished dataset (no stage runs again over a half-deleted area) and deletes what is left."""
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    src, out = tmp_path / "src", tmp_path / "out"
    _corpus(src)
    config = _config(src, out)
    run_prepare_parallel(config, 1)
    expected = _result(out)
    shutil.rmtree(out)
    for stage in ("scan", "dedup", "tokenizer", "pack"):
        for worker in range(1 if stage == "tokenizer" else 2):
            run_stage(config, stage, worker, 2)
    real_delete, deleted = LocalStore.delete, []

    def dying_delete(self: LocalStore, key: str) -> None:
        if len(deleted) == 3:
            raise StoreError(f"{self.uri(key)}: connection reset")
        deleted.append(key)
        real_delete(self, key)

    monkeypatch.setattr(LocalStore, "delete", dying_delete)
    with pytest.raises(WorkloadError, match="connection reset"):
        run_stage(config, "manifest", 0, 2)
    assert (out / "manifest.json").exists() and (out / "_work").exists()
    monkeypatch.setattr(LocalStore, "delete", real_delete)
    run_stage(config, "manifest", 0, 2)
    assert not (out / "_work").exists()
    assert _result(out) == expected
