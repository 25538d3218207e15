"""One record through the cleaning chain: normalise -> quality filters -> exact dedup -> near dedup ->
PII redaction. Stateful (the dedup indexes and redaction counts), one instance per prepare run."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from forge_trainer.config import DatasetPurpose, ProcessingConfig
from forge_trainer.data import ingest, quality
from forge_trainer.data.dedup import ExactDedup, NearDedup, content_hash
from forge_trainer.data.normalize import normalize_text
from forge_trainer.data.pii import Redactor
from forge_trainer.data.records import INVALID_RECORD, RecordError, map_texts, record_text, validate_record

EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
CLEAN_ERROR = "clean_error"


@dataclass
class Kept:
    """A record that made it through: its final text, its record (sft/rl), and its content hash."""

    text: str
    record: dict[str, Any] | None
    digest: bytes


class Cleaner:
    """Applies the processing settings to records one at a time, in the order they are read."""

    def __init__(self, processing: ProcessingConfig, purpose: DatasetPurpose, seed: int) -> None:
        self.processing, self.purpose = processing, purpose
        self.exact = ExactDedup() if processing.exact_dedup else None
        self.near = NearDedup(processing.near_dedup, seed) if processing.near_dedup.enabled else None
        self.redactor = Redactor(processing.pii.types) if processing.pii.enabled else None
        self.exact_duplicates = 0
        self.near_duplicates = 0

    @property
    def redactions(self) -> dict[str, int]:
        """Redactions so far, by type."""
        return dict(sorted(self.redactor.counts.items())) if self.redactor else {}

    def process(self, item: ingest.RawRecord) -> Kept | ingest.Rejected:
        """The cleaned record, or why it is dropped (a record the chain fails on is dropped as
        `clean_error`, its example naming the exception: one record never stops a corpus-long job)."""
        try:
            return self._process(item)
        except Exception as exc:
            return ingest.Rejected(item.source, CLEAN_ERROR, f"{item.source}: {type(exc).__name__}: {exc}")

    def _process(self, item: ingest.RawRecord) -> Kept | ingest.Rejected:
        first = self._normalize_and_filter(item)
        if isinstance(first, ingest.Rejected):
            return first
        text, record = first
        digest = content_hash(text if record is None else json.dumps(record, sort_keys=True))
        if self.exact is not None and self.exact.seen(digest):
            self.exact_duplicates += 1
            return ingest.Rejected(item.source, EXACT_DUPLICATE, text)
        if self.near is not None and self.near.is_duplicate(text):
            self.near_duplicates += 1
            return ingest.Rejected(item.source, NEAR_DUPLICATE, text)
        if self.redactor is not None:
            if record is None:
                text = self.redactor.redact(text)
            else:
                record = map_texts(record, self.purpose, self.redactor.redact)
                text = record_text(record, self.purpose)
        return Kept(text, record, digest)

    def _normalize_and_filter(self, item: ingest.RawRecord) -> tuple[str, dict[str, Any] | None] | ingest.Rejected:
        normalize = self.processing.normalize
        if item.fields is None:
            text = item.text or ""
            if normalize:
                text = normalize_text(text, keep_indentation=item.is_code)
            if not text.strip():
                return ingest.Rejected(item.source, ingest.EMPTY, item.source)
            reason = quality.quality_reason(text, self.processing.quality, is_code=item.is_code)
            return ingest.Rejected(item.source, reason, text) if reason else (text, None)
        try:
            record = validate_record(item.fields, self.purpose)
        except RecordError as exc:
            return ingest.Rejected(item.source, INVALID_RECORD,
                                   f"{exc}: {json.dumps(item.fields, default=str)}")
        if normalize:
            record = map_texts(record, self.purpose, lambda s: normalize_text(s, keep_indentation=True))
        text = record_text(record, self.purpose)
        if not text.strip():
            return ingest.Rejected(item.source, ingest.EMPTY, json.dumps(record))
        # conversations and tasks are held only to the length limit: short answers are normal
        if len(text) > self.processing.quality.max_chars:
            return ingest.Rejected(item.source, quality.TOO_LONG, text)
        return text, record


@dataclass
class Candidate:
    """A record that passed the filters, before dedup decides on it (the parallel scan stage's output).

    `exact_key` and `band_keys` are the keys the one-process dedup indexes would record for it; the text
    and record are already redacted (`redactions` counts what was replaced), `original` is the unredacted
    text when redaction changed it, and `error` says why redaction failed (the record is then dropped as
    `clean_error` unless it turns out to be a duplicate, as in the one-process chain)."""

    text: str
    record: dict[str, Any] | None
    digest: bytes
    exact_key: int | None
    band_keys: list[int]
    redactions: dict[str, int]
    original: str | None = None
    error: str | None = None


class Scanner:
    """The cleaning chain without its dedup decisions: normalise, filter, hash, MinHash and redact one
    record on its own, so any worker can do it for any record (`Cleaner` decides dedup in reading order)."""

    def __init__(self, processing: ProcessingConfig, purpose: DatasetPurpose, seed: int) -> None:
        self.chain = Cleaner(processing, purpose, seed)

    def process(self, item: ingest.RawRecord) -> Candidate | ingest.Rejected:
        """The candidate, or why the record is dropped before dedup (a failure is `clean_error`)."""
        try:
            first = self.chain._normalize_and_filter(item)
            if isinstance(first, ingest.Rejected):
                return first
            text, record = first
            digest = content_hash(text if record is None else json.dumps(record, sort_keys=True))
            exact_key = (int.from_bytes(digest[:8], "little") or 1) if self.chain.exact is not None else None
            bands: list[int] = []
            if self.chain.near is not None:
                shingles = self.chain.near.hasher.shingles(text)
                if len(shingles):
                    sig = self.chain.near.hasher.signature(shingles)
                    bands = [k or 1 for k in self.chain.near.band_keys(sig)]  # U64Set stores 0 as 1
        except Exception as exc:
            return ingest.Rejected(item.source, CLEAN_ERROR, f"{item.source}: {type(exc).__name__}: {exc}")
        candidate = Candidate(text, record, digest, exact_key, bands, {})
        redactor = self.chain.redactor
        if redactor is None:
            return candidate
        before = dict(redactor.counts)
        try:
            if record is None:
                candidate.text = redactor.redact(text)
            else:
                candidate.record = map_texts(record, self.chain.purpose, redactor.redact)
                candidate.text = record_text(candidate.record, self.chain.purpose)
        except Exception as exc:
            candidate.text, candidate.record = text, record
            candidate.error = f"{item.source}: {type(exc).__name__}: {exc}"
        candidate.redactions = {k: v - before.get(k, 0) for k, v in redactor.counts.items()
                                if v != before.get(k, 0)}
        if candidate.text != text:
            candidate.original = text
        return candidate
