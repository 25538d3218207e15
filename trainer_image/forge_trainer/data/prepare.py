"""`forge-trainer prepare`: a raw corpus becomes clean, deduplicated, tokenized shards and a manifest.

Three streaming passes, in bounded memory whatever the corpus size:

1. reading: every source object (or piece of a large JSON Lines / CSV one, see `ingest`) -> records -> normalise -> quality filters -> exact dedup -> near
   dedup -> PII redaction -> a local spill file of cleaned documents (text only leaves memory here);
2. tokenizer: train a byte-level BPE on (a bounded sample of) the spill, or fetch the reused one;
3. packing: tokenize the spill in batches into token shards (pretrain) or write record shards
   (sft/rl), each uploaded as soon as it is full.

manifest.json is written last, so a dataset is complete exactly when its manifest exists.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

from forge_trainer.config import DatasetPurpose, PrepareConfig, StoreConfig
from forge_trainer.config.wire import rfc3339
from forge_trainer.data import ingest
from forge_trainer.data.clean import Cleaner
from forge_trainer.data.manifest import (
    MANIFEST_NAME,
    TOKENIZER_NAME,
    Manifest,
    ShardInfo,
    TokenizerInfo,
)
from forge_trainer.data.pii import Redactor
from forge_trainer.data.report import Reporter
from forge_trainer.data.shard_writers import Publish, pack_record_shards, pack_token_shards
from forge_trainer.data.shards import fetch_tokenizer, open_tokenizer_uri
from forge_trainer.data.tokenizer import load_tokenizer, special_token_ids, token_dtype, train_tokenizer
from forge_trainer.errors import WorkloadError
from forge_trainer.store import (
    ObjectInfo,
    ObjectStore,
    StoreError,
    join_key,
    open_uri,
    sha256_bytes,
    sha256_file,
)

log = logging.getLogger(__name__)

TOKENIZER_SAMPLE_BYTES = 256 << 20
"""A trained tokenizer sees at most about this much cleaned text (an even sample of the corpus)."""
ENCODE_BATCH = 1024
"""Documents tokenized per batch."""


@dataclass
class Preparation:
    """What one prepare run works with."""

    config: PrepareConfig
    out: ObjectStore
    prefix: str
    report: Reporter
    tmp: Path

    @property
    def purpose(self) -> DatasetPurpose:
        return self.config.purpose


def run_prepare(config: PrepareConfig, progress_interval: float = 5.0) -> Manifest:
    """Prepare the dataset `config` describes; returns its manifest. A failure is a WorkloadError
    whose message names the URI at fault, after progress.json says stage `failed`."""
    out, prefix = open_uri(config.output, config.store)
    pii = config.processing.pii
    report = Reporter(out, prefix, progress_interval, Redactor(pii.types).redact if pii.enabled else None)
    try:
        with tempfile.TemporaryDirectory(prefix="forge-prepare-") as tmp:
            return _prepare(Preparation(config, out, prefix, report, Path(tmp)))
    except (WorkloadError, StoreError) as exc:
        record_failure(report, str(exc))
        if isinstance(exc, WorkloadError):
            raise
        raise WorkloadError(str(exc)) from exc
    except BaseException as exc:
        record_failure(report, f"{type(exc).__name__}: {exc}")
        raise


def record_failure(report: Reporter, message: str) -> None:
    """Say in progress.json that the workload failed, and why (one line)."""
    report.progress.stage = "failed"
    report.progress.error = message.splitlines()[0][:1000] if message else "failed"
    try:
        report.flush()
    except StoreError as exc:  # the output store itself may be what failed; the cause is raised anyway
        log.warning("could not write progress.json: %s", exc)


def source_objects(cfg: PrepareConfig) -> tuple[ObjectStore, list[ObjectInfo]]:
    """The source's store and its objects in reading order; WorkloadError when it is unreachable or empty."""
    try:
        src, src_prefix = ingest.open_source(cfg.source, cfg.store)
        objects = ingest.list_source(src, src_prefix)
    except (StoreError, OSError) as exc:
        raise WorkloadError(f"source {cfg.source} is unreachable: {exc}") from exc
    if not objects:
        raise WorkloadError(f"source {cfg.source} holds no objects (empty prefix, or it does not exist)")
    return src, objects


def source_pieces(cfg: PrepareConfig) -> tuple[ObjectStore, list[ObjectInfo], list[ingest.Piece]]:
    """The source's store, its objects and the pieces they are read in (`ingest.pieces`), in reading order."""
    src, objects = source_objects(cfg)
    return src, objects, ingest.pieces(objects, cfg.format, cfg.piece_bytes)


def _prepare(run: Preparation) -> Manifest:
    cfg = run.config
    if cfg.tokenizer.vocab_size is None and cfg.tokenizer.uri is None:
        raise WorkloadError("tokenizer.datasetRef must be resolved to tokenizer.uri before the workload runs")
    run.report.stage("listing")
    src, objects, pieces = source_pieces(cfg)
    run.report.progress.bytes_total = sum(o.size for o in objects)

    spill = run.tmp / "clean.jsonl"
    run.report.stage("reading")
    try:
        with spill.open("w+b") as out:
            kept_bytes = _clean(run, src, pieces, out)
    except StoreError as exc:
        raise WorkloadError(f"reading source {cfg.source} failed: {exc}") from exc
    counts = run.report.counts
    if counts.documents_kept == 0:
        raise WorkloadError(f"no document of {cfg.source} survived cleaning "
                            f"({counts.documents_read} read, dropped: {json.dumps(counts.dropped)})")

    run.report.stage("tokenizer")
    with spill.open("rb") as lines:
        tokenizer_path, info = prepare_tokenizer(run, map(spill_text, sample_texts(lines, kept_bytes)))
    run.report.stage("packing")
    shards = _pack(run, spill, tokenizer_path, info)
    return write_manifest(run, shards, info)


def _clean(run: Preparation, src: ObjectStore, pieces: list[ingest.Piece], out: IO[bytes]) -> int:
    """Pass 1: read, clean, dedup and redact every record into the spill file; cleaned bytes kept."""
    cfg, report = run.config, run.report
    structured = cfg.purpose is not DatasetPurpose.PRETRAIN
    reader = ingest.CorpusReader(src, cfg.format, cfg.text_field, structured, cfg.processing.quality.max_chars)
    cleaner = Cleaner(cfg.processing, cfg.purpose, cfg.seed)
    threshold = int(cfg.split.validation_fraction * 2**64)
    counts, progress = report.counts, report.progress
    kept_bytes = validation = 0
    last: tuple[int, dict[str, Any]] | None = None  # offset and content of the last spill line
    for item in reader.read(pieces):
        if isinstance(item, ingest.ObjectRead):
            progress.bytes_done += item.size
            report.audit("read" if item.sha256 else "skipped", item.uri, item.sha256, item.size)
            report.tick()
            continue
        counts.documents_read += 1
        progress.documents_done += 1
        result = item if isinstance(item, ingest.Rejected) else cleaner.process(item)
        if isinstance(result, ingest.Rejected):
            report.drop(result.reason, result.example)
            counts.exact_duplicates, counts.near_duplicates = cleaner.exact_duplicates, cleaner.near_duplicates
            continue
        split = 1 if int.from_bytes(result.digest[8:], "little") < threshold else 0
        line: dict[str, Any] = {"s": split, "t": result.text}
        if result.record is not None:
            line["r"] = result.record
        last = (out.tell(), line)
        out.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
        validation += split
        counts.documents_kept += 1
        kept_bytes += len(result.text)
        report.tick()
    if last is not None and validation == 0 and threshold > 0 and counts.documents_kept >= 2:
        # a small corpus whose hashes all fell on the train side still gets a validation document
        offset, line = last
        out.seek(offset)
        out.truncate()
        out.write(json.dumps({**line, "s": 1}, ensure_ascii=False).encode() + b"\n")
    counts.redactions = cleaner.redactions
    report.flush()
    return kept_bytes


def _spill_lines(spill: Path) -> Iterator[dict[str, Any]]:
    with spill.open(encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)


_Item = TypeVar("_Item")


def sample_texts(texts: Iterable[_Item], kept_bytes: int) -> Iterator[_Item]:
    """An even sample of about TOKENIZER_SAMPLE_BYTES of the kept texts (in reading order). Items may be the
    texts' undecoded record lines: only the lines taken need decoding, which on a corpus many times the sample
    is most of the tokenizer pass's time."""
    rate = min(1.0, TOKENIZER_SAMPLE_BYTES / max(kept_bytes, 1))
    taken = 0.0
    for text in texts:
        taken += rate
        if taken >= 1.0:
            taken -= 1.0
            yield text


def spill_text(line: str | bytes) -> str:
    """The text of one record line of a spill or docs.jsonl file."""
    text: str = json.loads(line)["t"]
    return text


def prepare_tokenizer(run: Preparation, sample: Iterator[str]) -> tuple[Path, TokenizerInfo]:
    """Pass 2: train the tokenizer on `sample` (read only when training), or fetch the reused one; both are
    then uploaded with the dataset."""
    tcfg = run.config.tokenizer
    path = run.tmp / TOKENIZER_NAME
    origin: str | None = None
    if tcfg.vocab_size is not None:
        tok = train_tokenizer(sample, tcfg.vocab_size)
        tok.save(str(path))
    elif tcfg.uri is not None:
        origin = tcfg.uri
        _fetch_reused_tokenizer(run, tcfg.uri, path)
        try:
            tok = load_tokenizer(path)
        except Exception as exc:  # tokenizers raises a bare Exception for an unreadable file
            raise WorkloadError(f"tokenizer {tcfg.uri} is not a valid tokenizer.json: {exc}") from exc
    else:
        raise WorkloadError("tokenizer.datasetRef must be resolved to tokenizer.uri before the workload runs")
    try:
        eos, pad = special_token_ids(tok)
    except ValueError as exc:
        raise WorkloadError(f"tokenizer {origin or 'trained here'}: {exc}") from exc
    key = join_key(run.prefix, TOKENIZER_NAME)
    digest = sha256_file(path)
    run.out.put_file(key, path)
    run.report.audit("write", run.out.uri(key), digest, path.stat().st_size)
    run.report.progress.tokenizer_uri = run.out.uri(key)
    info = TokenizerInfo(path=TOKENIZER_NAME, uri=origin, sha256=digest, vocab_size=tok.get_vocab_size(),
                         eos_token_id=eos, pad_token_id=pad)
    return path, info


def _fetch_reused_tokenizer(run: Preparation, uri: str, dest: Path) -> None:
    """Copy a reused tokenizer to `dest`: a tokenizer.json URI, a Hugging Face model directory (its
    tokenizer.json), or a dataset (prefix or manifest)."""
    store_cfg = run.config.store
    try:
        model_dir = None if uri.rstrip("/").endswith(".json") else _model_dir_tokenizer(uri, store_cfg)
        if uri.rstrip("/").endswith(".json") and not uri.endswith(MANIFEST_NAME):
            st, key = open_tokenizer_uri(uri, store_cfg)
            st.get_file(key, dest)
        elif model_dir is not None:
            model_dir[0].get_file(model_dir[1], dest)
        else:
            fetch_tokenizer(uri, store_cfg, dest=dest)
    except StoreError as exc:
        raise WorkloadError(f"cannot fetch tokenizer {uri}: {exc}") from exc
    run.report.audit("read", uri, sha256_file(dest), dest.stat().st_size)


def _model_dir_tokenizer(uri: str, store_cfg: StoreConfig | None) -> tuple[ObjectStore, str] | None:
    """The store and key of the tokenizer.json of a model directory (one with a config.json); None when `uri`
    is not a model directory. WorkloadError for a model with only a SentencePiece tokenizer.model."""
    st, prefix = open_uri(uri, store_cfg)
    if not st.exists(join_key(prefix, "config.json")):
        return None
    if st.exists(join_key(prefix, "tokenizer.json")):
        return st, join_key(prefix, "tokenizer.json")
    only = " (it has only a SentencePiece tokenizer.model)" if st.exists(join_key(prefix, "tokenizer.model")) else ""
    raise WorkloadError(f"tokenizer {uri}: the model directory has no tokenizer.json{only}; save one next to it "
                        "with transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) before mirroring")


def publisher(run: Preparation) -> Publish:
    """Uploads a finished shard under the dataset prefix and audits it."""
    def publish(path: Path, info: ShardInfo) -> None:
        key = join_key(run.prefix, info.path)
        run.out.put_file(key, path)
        run.report.audit("write", run.out.uri(key), info.sha256, info.bytes)
        run.report.tick()

    return publish


def spill_batches(spill: Path, with_record: bool) -> Iterator[list[Any]]:
    """The spill file's documents in batches of ENCODE_BATCH: (split, text) or (split, text, record)."""
    batch: list[Any] = []
    for line in _spill_lines(spill):
        batch.append((line["s"], line["t"], line["r"]) if with_record else (line["s"], line["t"]))
        if len(batch) >= ENCODE_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _pack(run: Preparation, spill: Path, tokenizer_path: Path, info: TokenizerInfo) -> list[ShardInfo]:
    """Pass 3: tokenize and pack the spill into shards, uploading each as it fills."""
    tok = load_tokenizer(tokenizer_path)
    publish = publisher(run)
    if run.purpose is DatasetPurpose.PRETRAIN:
        shards, tokens = pack_token_shards(spill_batches(spill, False), tok, info.eos_token_id,
                                           token_dtype(info.vocab_size), run.config.sharding.tokens_per_shard,
                                           run.tmp, publish, run.report.tick)
    else:
        shards, tokens = pack_record_shards(spill_batches(spill, True), tok, run.tmp, publish, run.report.tick)
    counts = run.report.counts
    counts.train_tokens, counts.validation_tokens = tokens
    counts.tokens = sum(tokens)
    return shards


def manifest_time() -> datetime:
    """When the manifest says it was made: now, or $SOURCE_DATE_EPOCH when set (the reproducible-builds
    convention), so two preparations of the same content can give the same manifest digest."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if epoch:
        try:
            return datetime.fromtimestamp(int(epoch), UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise WorkloadError(f"SOURCE_DATE_EPOCH={epoch!r} is not a Unix time in seconds") from exc
    return datetime.now(UTC)


def write_manifest(run: Preparation, shards: list[ShardInfo], info: TokenizerInfo) -> Manifest:
    """Write manifest.json (last: the dataset is complete once it exists) from the report's counts."""
    manifest = Manifest(
        purpose=run.purpose,
        dtype=token_dtype(info.vocab_size) if run.purpose is DatasetPurpose.PRETRAIN else None,
        tokenizer=info, shards=shards, counts=run.report.counts, examples=run.report.examples,
        spec=run.config.to_wire(), created_at=rfc3339(manifest_time()))
    data = json.dumps(manifest.to_wire(), indent=2, sort_keys=True).encode()
    key = join_key(run.prefix, MANIFEST_NAME)
    run.out.put_bytes(key, data, content_type="application/json")
    digest = sha256_bytes(data)
    run.report.audit("write", run.out.uri(key), digest, len(data))
    progress = run.report.progress
    progress.manifest_uri = run.out.uri(key)
    progress.manifest_digest = digest
    run.report.stage("done")
    counts = manifest.counts
    log.info("prepare: done: %d read, %d kept, %d tokens in %d shards; manifest %s (%s)",
             counts.documents_read, counts.documents_kept, counts.tokens, len(shards), progress.manifest_uri,
             digest)
    return manifest
