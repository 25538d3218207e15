"""`forge-trainer prepare --stage S --worker I --workers N`: the preparation split across N workers (pods
or local processes), giving the dataset the one-process `prepare` gives, byte for byte.

    scan       (N)  worker i reads its contiguous run of the source listing's pieces (whole objects, and byte
                    ranges of large JSON Lines / CSV objects, cut alike whatever N is: `ingest`): normalise,
                    filter, exact hash, MinHash band keys and PII redaction of every record; the candidates
                    go to docs.jsonl, their keys to one bucket file per dedup worker (key mod N)
    dedup      (N)  worker j takes bucket j of every scan worker: a record is a duplicate when a key of it is
                    held by an earlier position (exact keys first, then band keys), the rule the streaming
                    indexes of the one-process run apply; the drops go back to each scan worker's records
    tokenizer  (1)  the kept counts of all workers, the validation fallback, and the tokenizer trained on the
                    same even sample of the kept texts in reading order (or the reused one fetched)
    pack       (N)  worker i tokenizes its kept records into one token (or record) stream per split
    manifest   (1)  the streams, concatenated in worker order (the reading order), are cut into the shards the
                    one-process run cuts; counts, examples and audit are merged; manifest.json is written last
                    and the working area deleted

Each worker commits with a marker written after its outputs (`work.WorkArea`), so a retried worker whose
commit exists skips its work, and a stage refuses to start until every worker of the one before committed.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from forge_trainer.config import DatasetCounts, DatasetPurpose, PrepareConfig
from forge_trainer.config.store import AUDIT_NAME, MANIFEST_NAME, TOKENIZER_NAME
from forge_trainer.data import ingest
from forge_trainer.data.clean import CLEAN_ERROR, EXACT_DUPLICATE, NEAR_DUPLICATE, Candidate, Scanner
from forge_trainer.data.dedup import later_positions
from forge_trainer.data.encode import FastEncoder
from forge_trainer.data.manifest import Manifest, ShardInfo, Split, TokenizerInfo
from forge_trainer.data.pii import Redactor
from forge_trainer.data.prepare import (
    ENCODE_BATCH,
    Preparation,
    prepare_tokenizer,
    publisher,
    record_failure,
    sample_texts,
    source_pieces,
    spill_text,
    write_manifest,
)
from forge_trainer.data.progress_merge import LiveProgress, publish_merged
from forge_trainer.data.report import MAX_EXAMPLES, Reporter
from forge_trainer.data.shard_writers import SPLITS, RecordShardWriter, TokenShardWriter
from forge_trainer.data.tokenizer import load_tokenizer, token_dtype
from forge_trainer.data.work import MAX_WORKERS, SINGLE_WORKER_STAGES, STAGES, WorkArea, partition, position
from forge_trainer.data.work import listing_digest as digest_listing
from forge_trainer.errors import WorkloadError
from forge_trainer.store import StoreError, join_key, open_uri, sha256_file

log = logging.getLogger(__name__)

U64 = npt.NDArray[np.uint64]
_KEY_FLUSH = 1 << 20  # key pairs buffered before they are appended to the bucket files
_TOKEN_CHUNK = 1 << 22  # tokens read at a time when the shards are cut
Examples = dict[str, list[list[Any]]]  # reason -> [[position, example], ...], first MAX_EXAMPLES by position


def run_stage(config: PrepareConfig, stage: str, worker: int, workers: int, progress_interval: float = 5.0) -> None:
    """Run worker `worker` of `stage` (skipped when it already committed); WorkloadError naming what failed."""
    if stage not in STAGES:
        raise WorkloadError(f"--stage {stage!r} is not one of {', '.join(STAGES)}")
    if not 1 <= workers <= MAX_WORKERS:
        raise WorkloadError(f"--workers {workers} must be between 1 and {MAX_WORKERS}")
    count = 1 if stage in SINGLE_WORKER_STAGES else workers
    if not 0 <= worker < count:
        raise WorkloadError(f"--worker {worker} is out of range: stage {stage} has workers 0..{count - 1}")
    out, prefix = open_uri(config.output, config.store)
    area = WorkArea(out, prefix, config, workers)
    if stage == "manifest" and out.exists(join_key(prefix, MANIFEST_NAME)) and area.done("scan", 0) is None:
        left = area.clear()  # what a clear cut short left behind (its first delete was scan 0's marker)
        log.info("prepare manifest: manifest.json is written, nothing to do (%d leftover working files deleted)",
                 left)
        return
    if area.done(stage, worker) is not None:
        log.info("prepare %s %d/%d: already committed, skipped", stage, worker, workers)
        return
    pii = config.processing.pii
    scrub = Redactor(pii.types).redact if pii.enabled else None
    progress_prefix = prefix if stage == "manifest" else area.progress_prefix(stage, worker)
    report = Reporter(out, progress_prefix, progress_interval, scrub)
    try:
        with tempfile.TemporaryDirectory(prefix=f"forge-prepare-{stage}-") as tmp:
            run = Preparation(config, out, prefix, report, Path(tmp))
            report.stage(stage)
            if worker == 0 and stage != "manifest":
                _publish_progress(run, area, stage)
            summary = _STAGES[stage](run, area, worker)
            if stage != "manifest":  # the manifest stage's commit is manifest.json itself
                report.flush()
                area.commit(stage, worker, summary)
                _publish_progress(run, area, stage)
    except (WorkloadError, StoreError) as exc:
        message = f"{stage} worker {worker}: {exc}"
        record_failure(report, message)
        if progress_prefix != prefix:  # the dataset's own progress.json says so too
            record_failure(Reporter(out, prefix, progress_interval), message)
        if isinstance(exc, WorkloadError):
            raise
        raise WorkloadError(message) from exc


def run_worker(config: PrepareConfig, worker: int, workers: int, poll_seconds: float = 5.0,
               progress_interval: float = 5.0) -> None:
    """Every stage of one worker (one pod per worker on Kubernetes), each started once every worker of the
    stage before has committed; worker 0 also runs the single-worker stages and, until its manifest stage,
    keeps the dataset's progress.json live with every worker's progress (`LiveProgress`). A retried worker
    skips what it committed. Returns once this worker's last stage is committed."""
    out, prefix = open_uri(config.output, config.store)
    area = WorkArea(out, prefix, config, workers)
    live = LiveProgress(out, prefix, area, _merged_counts, progress_interval) if worker == 0 else None
    if live is not None:
        live.start()
    try:
        for before, stage in zip((None, *STAGES), STAGES, strict=False):
            if stage in SINGLE_WORKER_STAGES and worker != 0:
                continue
            if before is not None:
                _wait_for(area, before, poll_seconds)
            if stage == "manifest" and live is not None:
                live.stop()  # the manifest stage writes the dataset's progress.json itself
            run_stage(config, stage, worker, workers, progress_interval)
    finally:
        if live is not None:
            live.stop()


def _wait_for(area: WorkArea, stage: str, poll_seconds: float) -> None:
    """Wait until every worker of `stage` has committed (a failed worker is retried by its own Job)."""
    said = False
    while True:
        try:
            area.committed(stage)
            return
        except WorkloadError as exc:
            if not said:
                log.info("prepare: waiting: %s", exc)
                said = True
        time.sleep(poll_seconds)


def run_prepare_parallel(config: PrepareConfig, workers: int, progress_interval: float = 5.0) -> Manifest:
    """Every stage and worker in turn in this process (what `forge run` does with processes); the manifest."""
    for stage in STAGES:
        for worker in range(1 if stage in SINGLE_WORKER_STAGES else workers):
            run_stage(config, stage, worker, workers, progress_interval)
    out, prefix = open_uri(config.output, config.store)
    return Manifest.model_validate_json(out.get_bytes(join_key(prefix, MANIFEST_NAME)))


class _Drops:
    """Counts per drop reason and the first examples by position (scrubbed like the one-process report)."""

    def __init__(self, scrub: Callable[[str], str] | None) -> None:
        self.scrub = scrub
        self.counts: dict[str, int] = {}
        self.examples: Examples = {}

    def add(self, reason: str, example: str, pos: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < MAX_EXAMPLES:  # this worker reads in position order: the first are the smallest
            kept.append([pos, (self.scrub(example[:400]) if self.scrub else example)[:200]])


def _publish_progress(run: Preparation, area: WorkArea, stage: str) -> None:
    """The dataset's progress.json merged from every worker's commits and live progress
    (`progress_merge`), written when a worker enters or commits `stage`; worker 0's `LiveProgress`
    rewrites it in between. Each write is one atomic put of a complete snapshot: the last one wins."""
    log.debug("prepare %s: publishing the merged progress", stage)
    publish_merged(run.out, run.prefix, area, _merged_counts)


# ---- scan ---------------------------------------------------------------------------------------------------

def _scan(run: Preparation, area: WorkArea, worker: int) -> dict[str, Any]:
    cfg, report = run.config, run.report
    src, _, pieces = source_pieces(cfg)
    bounds = partition(pieces, area.workers)
    first, last = bounds[worker], bounds[worker + 1]
    report.progress.bytes_total = sum(p.length for p in pieces[first:last])
    buckets = _KeyBuckets(run.tmp, area.workers)
    index = _Index()
    drops = _Drops(report.scrub)
    docs = run.tmp / "docs.jsonl"
    try:
        with docs.open("wb") as fh:
            _scan_pieces(run, src, pieces[first:last], first, fh, buckets, index, drops)
    except StoreError as exc:
        raise WorkloadError(f"reading source {cfg.source} failed: {exc}") from exc
    buckets.flush()
    _put(run, area.key("scan", worker, "docs.jsonl"), docs)
    _put_arrays(run, area.key("scan", worker, "index.npz"), index.arrays())
    for kind in ("exact", "near"):
        for j in range(area.workers):
            _put(run, area.key("scan", worker, f"{kind}-{j:05d}.u64"), buckets.path(kind, j))
    return {"listing": digest_listing(pieces), "bounds": bounds, "read": report.counts.documents_read,
            "bytes": report.progress.bytes_done, "dropped": drops.counts, "examples": drops.examples,
            "candidates": len(index.pos)}


def _scan_pieces(run: Preparation, src: Any, pieces: list[ingest.Piece], first: int, out: Any,
                 buckets: _KeyBuckets, index: _Index, drops: _Drops) -> None:
    cfg, report = run.config, run.report
    structured = cfg.purpose is not DatasetPurpose.PRETRAIN
    reader = ingest.CorpusReader(src, cfg.format, cfg.text_field, structured, cfg.processing.quality.max_chars)
    scanner = Scanner(cfg.processing, cfg.purpose, cfg.seed)
    threshold = int(cfg.split.validation_fraction * 2**64)
    piece, record = first, 0
    for item in reader.read(pieces):
        if isinstance(item, ingest.ObjectRead):
            report.progress.bytes_done += item.size
            report.audit("read" if item.sha256 else "skipped", item.uri, item.sha256, item.size)
            report.tick()
            piece, record = piece + 1, 0
            continue
        pos = position(piece, record)
        record += 1
        report.counts.documents_read += 1
        report.progress.documents_done += 1
        result = item if isinstance(item, ingest.Rejected) else scanner.process(item)
        if isinstance(result, ingest.Rejected):
            drops.add(result.reason, result.example, pos)
            continue
        split = 1 if int.from_bytes(result.digest[8:], "little") < threshold else 0
        out.write(json.dumps(_doc_line(pos, split, result), ensure_ascii=False).encode() + b"\n")
        index.add(pos, split, len(result.text), result.error is not None)
        if result.exact_key is not None:
            buckets.add("exact", result.exact_key, pos)
        for key in result.band_keys:
            buckets.add("near", key, pos)
        report.tick()


def _doc_line(pos: int, split: int, c: Candidate) -> dict[str, Any]:
    line: dict[str, Any] = {"p": pos, "s": split, "t": c.text}
    if c.record is not None:
        line["r"] = c.record
    if c.original is not None:  # what a duplicate's example shows (scrubbed) is the unredacted text
        line["h"] = c.original[:400]
    if c.redactions:
        line["c"] = c.redactions
    if c.error is not None:
        line["e"] = c.error
    return line


class _KeyBuckets:
    """(key, position) pairs in one local file per kind and dedup worker, appended in batches."""

    def __init__(self, tmp: Path, workers: int) -> None:
        self.tmp, self.workers = tmp, workers
        self.pending: dict[tuple[str, int], list[int]] = {}
        self.size = 0
        for kind in ("exact", "near"):
            for j in range(workers):
                self.path(kind, j).write_bytes(b"")

    def path(self, kind: str, bucket: int) -> Path:
        return self.tmp / f"{kind}-{bucket:05d}.u64"

    def add(self, kind: str, key: int, pos: int) -> None:
        self.pending.setdefault((kind, key % self.workers), []).extend((key, pos))
        self.size += 1
        if self.size >= _KEY_FLUSH:
            self.flush()

    def flush(self) -> None:
        for (kind, bucket), values in self.pending.items():
            with self.path(kind, bucket).open("ab") as fh:
                fh.write(np.array(values, dtype="<u8").tobytes())
        self.pending, self.size = {}, 0


class _Index:
    """Per candidate: position, split, redacted length, and whether its redaction failed."""

    def __init__(self) -> None:
        self.pos, self.flags, self.length = array("Q"), array("B"), array("Q")

    def add(self, pos: int, split: int, length: int, failed: bool) -> None:
        self.pos.append(pos)
        self.flags.append(split | (2 if failed else 0))
        self.length.append(length)

    def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return {"pos": np.frombuffer(self.pos, dtype=np.uint64), "flags": np.frombuffer(self.flags, dtype=np.uint8),
                "length": np.frombuffer(self.length, dtype=np.uint64)}


# ---- dedup --------------------------------------------------------------------------------------------------

def _dedup(run: Preparation, area: WorkArea, bucket: int) -> dict[str, Any]:
    scans = _same_source(area)
    keys = {kind: _bucket_pairs(run, area, kind, bucket) for kind in ("exact", "near")}
    exact = later_positions(keys["exact"][:, 0], keys["exact"][:, 1])
    near = later_positions(keys["near"][:, 0], keys["near"][:, 1])
    starts = np.array(scans[0]["bounds"][:-1], dtype=np.uint64)
    for worker in range(area.workers):
        mine = {name: found[np.searchsorted(starts, found >> np.uint64(32), side="right") - 1 == worker]
                for name, found in (("exact", exact), ("near", near))}
        _put_arrays(run, area.key("dedup", bucket, f"for-{worker:05d}.npz"), mine)
    run.report.progress.documents_done = int(len(keys["exact"]) + len(keys["near"]))
    return {"exact": len(exact), "near": len(near)}


def _bucket_pairs(run: Preparation, area: WorkArea, kind: str, bucket: int) -> U64:
    parts = [np.frombuffer(run.out.get_bytes(area.key("scan", w, f"{kind}-{bucket:05d}.u64")), dtype="<u8")
             for w in range(area.workers)]
    return np.concatenate(parts).astype(np.uint64).reshape(-1, 2)


def _same_source(area: WorkArea) -> list[dict[str, Any]]:
    scans = area.committed("scan")
    for worker, summary in enumerate(scans):
        if summary["listing"] != scans[0]["listing"]:
            raise WorkloadError(f"the source changed while it was being prepared: scan worker {worker} listed "
                                "other objects than worker 0; delete the dataset's _work/ prefix to start over")
    return scans


# ---- what each candidate became -----------------------------------------------------------------------------

KEPT, EXACT, NEAR, FAILED = 0, 1, 2, 3


def _statuses(run: Preparation, area: WorkArea, worker: int) -> tuple[dict[str, npt.NDArray[Any]], npt.NDArray[Any]]:
    """The scan index of `worker` and each candidate's fate: KEPT, EXACT, NEAR or FAILED (redaction)."""
    with np.load(io.BytesIO(run.out.get_bytes(area.key("scan", worker, "index.npz")))) as data:
        index = {name: data[name] for name in ("pos", "flags", "length")}
    exact: list[U64] = [np.zeros(0, dtype=np.uint64)]
    near: list[U64] = [np.zeros(0, dtype=np.uint64)]
    for bucket in range(area.workers):
        with np.load(io.BytesIO(run.out.get_bytes(area.key("dedup", bucket, f"for-{worker:05d}.npz")))) as data:
            exact.append(data["exact"])
            near.append(data["near"])
    pos = index["pos"]
    status = np.full(len(pos), KEPT, dtype=np.uint8)
    status[(index["flags"] & 2) != 0] = FAILED
    status[np.isin(pos, np.concatenate(near))] = NEAR
    status[np.isin(pos, np.concatenate(exact))] = EXACT  # an exact duplicate never reaches the near index
    return index, status


def _raw_doc_lines(run: Preparation, area: WorkArea, worker: int) -> Iterator[bytes]:
    """The undecoded lines of `worker`'s docs.jsonl, in order."""
    with run.out.open_read(area.key("scan", worker, "docs.jsonl")) as fh:
        yield from fh


def _doc_lines(run: Preparation, area: WorkArea, worker: int) -> Iterator[dict[str, Any]]:
    return map(json.loads, _raw_doc_lines(run, area, worker))


# ---- tokenizer ----------------------------------------------------------------------------------------------

def _tokenizer(run: Preparation, area: WorkArea, worker: int) -> dict[str, Any]:
    scans = _same_source(area)
    area.committed("dedup")
    statuses = [_statuses(run, area, w) for w in range(area.workers)]
    kept = sum(int(np.count_nonzero(s == KEPT)) for _, s in statuses)
    if kept == 0:
        read = sum(s["read"] for s in scans)
        raise WorkloadError(f"no document of {run.config.source} survived cleaning ({read} read, dropped: "
                            f"{json.dumps(_dropped_before_pack(scans, statuses), sort_keys=True)})")
    kept_bytes = sum(int(index["length"][s == KEPT].sum()) for index, s in statuses)
    validation = sum(int(np.count_nonzero((index["flags"][s == KEPT] & 1) != 0)) for index, s in statuses)
    fallback = None
    if validation == 0 and run.config.split.validation_fraction > 0 and kept >= 2:
        # as in one process: a small corpus whose hashes all fell on the train side gives its last kept
        # document to validation
        fallback = max(int(index["pos"][s == KEPT].max()) for index, s in statuses if (s == KEPT).any())

    def kept_lines() -> Iterator[bytes]:  # undecoded: only the sampled ones are decoded
        for w, (_, status) in enumerate(statuses):
            for line, fate in zip(_raw_doc_lines(run, area, w), status, strict=True):
                if fate == KEPT:
                    yield line

    _, info = prepare_tokenizer(run, map(spill_text, sample_texts(kept_lines(), kept_bytes)))
    return {"tokenizer": info.to_wire(), "validation_fallback": fallback, "kept": kept}


def _dropped_before_pack(scans: list[dict[str, Any]], statuses: list[Any]) -> dict[str, int]:
    dropped: dict[str, int] = {}
    for summary in scans:
        for reason, n in summary["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    for reason, fate in ((EXACT_DUPLICATE, EXACT), (NEAR_DUPLICATE, NEAR), (CLEAN_ERROR, FAILED)):
        n = sum(int(np.count_nonzero(s == fate)) for _, s in statuses)
        if n:
            dropped[reason] = dropped.get(reason, 0) + n
    return dropped


# ---- pack ---------------------------------------------------------------------------------------------------

def _pack(run: Preparation, area: WorkArea, worker: int) -> dict[str, Any]:
    plan = area.committed("tokenizer")[0]
    info = TokenizerInfo.model_validate(plan["tokenizer"])
    tok_path = run.tmp / TOKENIZER_NAME
    run.out.get_file(join_key(run.prefix, TOKENIZER_NAME), tok_path)
    if sha256_file(tok_path) != info.sha256:
        raise WorkloadError(f"{run.out.uri(join_key(run.prefix, TOKENIZER_NAME))} changed after the tokenizer stage")
    _, status = _statuses(run, area, worker)
    drops = _Drops(run.report.scrub)
    redactions: dict[str, int] = {}
    fallback = plan["validation_fallback"]
    pretrain = run.config.purpose is DatasetPurpose.PRETRAIN
    encoder = FastEncoder(load_tokenizer(tok_path), info.eos_token_id if pretrain else None)
    dtype = token_dtype(info.vocab_size)
    files = [run.tmp / f"{s.value}.{'bin' if pretrain else 'jsonl'}" for s in SPLITS]
    counts_files = [run.tmp / f"{s.value}.tokens" for s in SPLITS]
    tokens = [0, 0]
    kept = 0
    batch: list[dict[str, Any]] = []

    def flush(handles: list[Any], token_handles: list[Any]) -> None:
        for split in (0, 1):
            docs = [d for d in batch if d["s"] == split]
            if not docs:
                continue
            if pretrain:
                ids = encoder.encode_flat([d["t"] for d in docs], dtype)
                handles[split].write(ids.astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes())
                tokens[split] += len(ids)
            else:
                counted = encoder.count([d["t"] for d in docs])
                for d in docs:
                    handles[split].write(json.dumps(d["r"], ensure_ascii=False, sort_keys=True).encode() + b"\n")
                token_handles[split].write(np.array(counted, dtype="<u8").tobytes())
                tokens[split] += sum(counted)
        batch.clear()
        run.report.tick()

    with files[0].open("wb") as f0, files[1].open("wb") as f1, \
            counts_files[0].open("wb") as c0, counts_files[1].open("wb") as c1:
        for line, fate in zip(_doc_lines(run, area, worker), status, strict=True):
            if fate in (EXACT, NEAR):
                drops.add(EXACT_DUPLICATE if fate == EXACT else NEAR_DUPLICATE, line.get("h", line["t"]), line["p"])
                continue
            for kind, n in line.get("c", {}).items():  # as in one process: a failed redaction's counts stay
                redactions[kind] = redactions.get(kind, 0) + n
            if fate == FAILED:
                drops.add(CLEAN_ERROR, line["e"], line["p"])
                continue
            kept += 1
            if line["p"] == fallback:
                line["s"] = 1
            batch.append(line)
            if len(batch) >= ENCODE_BATCH:
                flush([f0, f1], [c0, c1])
        flush([f0, f1], [c0, c1])
    for split, path in enumerate(files):
        _put(run, area.key("pack", worker, path.name), path)
        if not pretrain:
            _put(run, area.key("pack", worker, counts_files[split].name), counts_files[split])
    return {"kept": kept, "tokens": tokens, "redactions": redactions, "dropped": drops.counts,
            "examples": drops.examples}


# ---- manifest -----------------------------------------------------------------------------------------------

def _manifest(run: Preparation, area: WorkArea, worker: int) -> dict[str, Any]:
    scans = _same_source(area)
    area.committed("dedup")
    plan = area.committed("tokenizer")[0]
    packs = area.committed("pack")
    info = TokenizerInfo.model_validate(plan["tokenizer"])
    run.report.progress.counts = _merged_counts(scans, packs)
    run.report.examples = _merged_examples([*scans, *packs])
    run.report.progress.bytes_done = run.report.progress.bytes_total = sum(s["bytes"] for s in scans)
    run.report.progress.documents_done = run.report.counts.documents_read
    run.report.progress.tokenizer_uri = run.out.uri(join_key(run.prefix, TOKENIZER_NAME))
    _merge_audit(run, area)
    shards = _cut_shards(run, area, info)
    counts = run.report.counts
    counts.train_tokens = sum(s.tokens for s in shards if s.split is Split.TRAIN)
    counts.validation_tokens = sum(s.tokens for s in shards if s.split is Split.VALIDATION)
    counts.tokens = counts.train_tokens + counts.validation_tokens
    write_manifest(run, shards, info)
    removed = area.clear()
    log.info("prepare: removed %d objects of the working area", removed)
    return {}


def _merged_counts(scans: list[dict[str, Any]], packs: list[dict[str, Any]]) -> DatasetCounts:
    counts = DatasetCounts(documents_read=sum(s["read"] for s in scans), documents_kept=sum(p["kept"] for p in packs))
    for summary in [*scans, *packs]:
        for reason, n in summary["dropped"].items():
            counts.dropped[reason] = counts.dropped.get(reason, 0) + n
    counts.exact_duplicates = counts.dropped.get(EXACT_DUPLICATE, 0)
    counts.near_duplicates = counts.dropped.get(NEAR_DUPLICATE, 0)
    redactions: dict[str, int] = {}
    for p in packs:
        for kind, n in p["redactions"].items():
            redactions[kind] = redactions.get(kind, 0) + n
    counts.redactions = dict(sorted(redactions.items()))
    return counts


def _merged_examples(summaries: list[dict[str, Any]]) -> dict[str, list[str]]:
    found: dict[str, list[tuple[int, str]]] = {}
    for summary in summaries:
        for reason, items in summary["examples"].items():
            found.setdefault(reason, []).extend((int(pos), text) for pos, text in items)
    return {reason: [text for _, text in sorted(items)[:MAX_EXAMPLES]] for reason, items in found.items()}


def _merge_audit(run: Preparation, area: WorkArea) -> None:
    """Every worker's audit records, stage by stage and worker by worker, into the dataset's audit log, in
    one put. Idempotent: the first attempt of the stage keeps what the log held before it, and every
    attempt writes that plus the workers' records, so a retried manifest stage neither doubles the
    workers' records nor keeps the shard writes of a failed attempt (they are written again)."""
    log_key = join_key(run.prefix, AUDIT_NAME)
    before_key = area.key("manifest", 0, "audit-before.jsonl")
    if not run.out.exists(before_key):
        run.out.put_bytes(before_key, run.out.get_bytes(log_key) if run.out.exists(log_key) else b"")
    parts = [run.out.get_bytes(before_key)]
    for stage in STAGES[:-1]:
        for w in range(1 if stage in SINGLE_WORKER_STAGES else area.workers):
            key = join_key(area.progress_prefix(stage, w), AUDIT_NAME)
            if run.out.exists(key):
                parts.append(run.out.get_bytes(key))
    run.out.put_bytes(log_key, b"".join(p if p.endswith(b"\n") or not p else p + b"\n" for p in parts),
                      content_type="application/x-ndjson")


def _cut_shards(run: Preparation, area: WorkArea, info: TokenizerInfo) -> list[ShardInfo]:
    """The workers' streams, in worker order, cut into the shards one process would have cut."""
    publish = publisher(run)
    shards: list[ShardInfo] = []
    if run.config.purpose is DatasetPurpose.PRETRAIN:
        dtype = token_dtype(info.vocab_size)
        for split in SPLITS:
            writer = TokenShardWriter(split, dtype, run.config.sharding.tokens_per_shard, run.tmp, publish,
                                      info.eos_token_id)
            for w in range(area.workers):
                local = run.tmp / f"stream-{w:05d}.bin"
                run.out.get_file(area.key("pack", w, f"{split.value}.bin"), local)
                with local.open("rb") as fh:  # in chunks: the streams can be far larger than memory
                    while chunk := fh.read(_TOKEN_CHUNK * np.dtype(dtype).itemsize):
                        writer.add(np.frombuffer(chunk, dtype=np.dtype(dtype).newbyteorder("<")))
                local.unlink()
                run.report.tick()
            shards += writer.close()
        return shards
    for split in SPLITS:
        records = RecordShardWriter(split, run.tmp, publish)
        for w in range(area.workers):
            counted = np.frombuffer(run.out.get_bytes(area.key("pack", w, f"{split.value}.tokens")), dtype="<u8")
            with run.out.open_read(area.key("pack", w, f"{split.value}.jsonl")) as fh:
                for line, n in zip(fh, counted.tolist(), strict=True):
                    records.add(json.loads(line), tokens=n)
            run.report.tick()
        shards += records.close()
    return shards


# ---- store helpers ------------------------------------------------------------------------------------------

def _put(run: Preparation, key: str, path: Path) -> None:
    run.out.put_file(key, path)


def _put_arrays(run: Preparation, key: str, arrays: dict[str, npt.NDArray[Any]]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    run.out.put_bytes(key, buf.getvalue())


_STAGES: dict[str, Callable[[Preparation, WorkArea, int], dict[str, Any]]] = {
    "scan": _scan, "dedup": _dedup, "tokenizer": _tokenizer, "pack": _pack, "manifest": _manifest,
}
