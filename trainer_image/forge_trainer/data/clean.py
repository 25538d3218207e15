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
