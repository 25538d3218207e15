"""Reading a raw corpus: every object under the source prefix becomes a stream of raw records (or of
rejections with their reason), whatever its format, in bounded memory.

Text, markdown and source files are one document each; JSON Lines, JSON, CSV and Parquet hold one
record per line / element / row; a PDF is one document of its extracted text. A JSON array is parsed
one element at a time (`json_stream`), a stray CSV quote costs one row (`csv_rows`), and PDF text,
Parquet row groups and record nesting are capped (`limits`). Bad input is never an exception: each bad
record (or unreadable object) is a `Rejected` with the reason it is counted under, and any other error
raised while reading one object is counted as `read_error` naming the exception, so one hostile file
never stops the job. Only a failing store (StoreError) propagates.

Pieces: the unit of the listing (`pieces`) is an object, or, for a JSON Lines or CSV object larger than
the piece size (`PrepareConfig.split_bytes`, 256 MiB unless set), consecutive byte ranges [s, e) of it, so
several workers can share one huge file. The piece size never depends on the parallelism: every worker
count, and the one-process `prepare`, read the very same pieces. A piece owns the records whose first byte
lies in [s, e) (Hadoop's LineRecordReader rule): its reader starts at s (for s > 0 it reads from s - 1 and
skips through the first newline, so a line starting exactly at s is its own) and reads past e to finish
the line that started before e; one ranged read, bounded at e plus the longest line a record may have.
- JSON Lines: exact, a JSON line cannot hold a raw line break, so each line is read by exactly one piece.
- CSV: the lines of a piece are those starting in [s, e), each piece after the first preceded by the
  header record read from the object's start (a second ranged read). A quoted field holding a line break
  that straddles a boundary cannot be seen without reading the file from its start: its record runs off
  the end of its piece, and is then what an unclosed quote is (`csv_rows`): its first line is counted as
  `malformed_csv` and its other lines are read as rows of their own, in whichever piece they lie. Since
  pieces do not depend on the parallelism, that happens alike at every N. Line numbers in messages count
  from the piece's start, after the header's lines; the source is named `<uri>#bytes=<s>-<e>`.
- Plain text, markdown and code files are one document each and are never split (one larger than a
  document may be is dropped as `too_long` whole); JSON arrays, Parquet and PDF are not split either.
The audit names each piece of a split object by `<uri>#bytes=<s>-<e>` with the sha256 of exactly [s, e)
(the last piece: to the object's end).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from forge_trainer.config import DatasetFormat, StoreConfig
from forge_trainer.data.csv_rows import CsvBadLine, CsvFault, csv_header, csv_rows
from forge_trainer.data.json_stream import ElementTooLong, EmptyDocument, json_elements
from forge_trainer.data.limits import MAX_JSON_DEPTH, PDF_MAX_BYTES, deeper_than, parquet_group_excess
from forge_trainer.data.pdf_text import PdfTooLong, pdf_text
from forge_trainer.store import LocalStore, ObjectInfo, ObjectStore, StoreError, open_uri, split_uri

INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
MISSING_FIELD = "missing_field"
EMPTY = "empty"
CORRUPT_FILE = "corrupt_file"
UNSUPPORTED_FORMAT = "unsupported_format"
TOO_LONG = "too_long"
TOO_DEEP = "too_deep"
MALFORMED_CSV = "malformed_csv"
READ_ERROR = "read_error"

CODE_EXTENSIONS = frozenset({
    "py", "pyi", "js", "jsx", "ts", "tsx", "mjs", "go", "rs", "java", "kt", "kts", "scala", "c", "h",
    "cc", "cpp", "cxx", "hpp", "hh", "cs", "swift", "rb", "php", "pl", "lua", "r", "jl", "sh", "bash",
    "zsh", "ps1", "sql", "hs", "ml", "ex", "exs", "erl", "clj", "dart", "vue", "svelte", "html", "css",
    "scss", "yaml", "yml", "toml", "ini", "cfg", "proto", "tf", "cmake", "gradle", "m", "mm", "f90",
    "zig", "nim", "v", "sol"
})
_BY_EXTENSION = {
    "txt": DatasetFormat.TXT,
    "text": DatasetFormat.TXT,
    "md": DatasetFormat.MD,
    "markdown": DatasetFormat.MD,
    "rst": DatasetFormat.TXT,
    "jsonl": DatasetFormat.JSONL,
    "ndjson": DatasetFormat.JSONL,
    "json": DatasetFormat.JSON,
    "csv": DatasetFormat.CSV,
    "parquet": DatasetFormat.PARQUET,
    "pdf": DatasetFormat.PDF,
}
_CHUNK = 1 << 20
SPLITTABLE = frozenset({DatasetFormat.JSONL, DatasetFormat.CSV})
"""Formats whose large objects are read as several pieces (line-oriented records)."""


@dataclass(frozen=True)
class Piece:
    """A unit of the source listing: a whole object (`end` None), or the byte range [start, end) of one
    split into pieces (the last piece reads to the object's end)."""

    key: str
    size: int
    """The object's size in the listing."""
    start: int = 0
    end: int | None = None

    @property
    def length(self) -> int:
        """The bytes this piece owns (by the listing)."""
        return (self.size if self.end is None else self.end) - self.start

    def label(self, uri: str) -> str:
        """How messages and the audit name the piece: the object's URI, with `#bytes=s-e` for a split one."""
        return uri if self.end is None else f"{uri}#bytes={self.start}-{self.end}"


def pieces(objects: Iterable[ObjectInfo | Piece], fmt: DatasetFormat, piece_bytes: int) -> list[Piece]:
    """The listing in pieces: each JSON Lines or CSV object larger than `piece_bytes` becomes consecutive
    ranges of `piece_bytes` (the last one shorter), every other object one whole piece."""
    if piece_bytes < 1:
        raise ValueError(f"piece size {piece_bytes} must be positive")
    out: list[Piece] = []
    for obj in objects:
        if detect_format(obj.key, fmt)[0] not in SPLITTABLE or obj.size <= piece_bytes:
            out.append(Piece(obj.key, obj.size))
            continue
        for start in range(0, obj.size, piece_bytes):
            out.append(Piece(obj.key, obj.size, start, min(start + piece_bytes, obj.size)))
    return out


@dataclass
class RawRecord:
    """One record read from the source: a text (pretrain) or a JSON-like object (sft/rl)."""

    source: str
    text: str | None = None
    fields: dict[str, Any] | None = None
    is_code: bool = False


@dataclass
class Rejected:
    """A record (or a whole object) that could not be read, and why."""

    source: str
    reason: str
    example: str


@dataclass
class ObjectRead:
    """Emitted after each object: its URI, size and sha256 (for the audit log)."""

    uri: str
    size: int
    sha256: str


Item = RawRecord | Rejected | ObjectRead


@dataclass
class _Reader:
    """Reads one object's bytes (or a piece's) in chunks, hashing and counting those of [hash_from,
    hash_to) as they go by. `offset` is where in the object the stream starts; `end` (a piece not the last)
    is where the lines the piece owns stop starting; `skip_first`: the stream starts inside a line that
    belongs to the piece before."""

    fh: IO[bytes]
    uri: str
    offset: int = 0
    hash_from: int = 0
    hash_to: int | None = None
    end: int | None = None
    skip_first: bool = False
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0

    def __post_init__(self) -> None:
        self.pos = self.offset  # the object offset of the next byte read

    def chunks(self) -> Iterator[bytes]:
        while True:
            try:
                chunk = self.fh.read(_CHUNK)
            except Exception as exc:  # e.g. urllib3's errors mid-stream: the store failed, not the data
                raise StoreError(f"{self.uri}: {type(exc).__name__}: {exc}") from exc
            if not chunk:
                return
            first, self.pos = self.pos, self.pos + len(chunk)
            lo = max(self.hash_from - first, 0)
            hi = len(chunk) if self.hash_to is None else min(self.hash_to - first, len(chunk))
            if hi > lo:
                owned = chunk[lo:hi] if (lo, hi) != (0, len(chunk)) else chunk
                self.hasher.update(owned)
                self.size += len(owned)
            yield chunk

    def drain(self) -> None:
        """Read (and hash) what the records left unread of the bytes this reader owns."""
        for _ in self.chunks():
            if self.hash_to is not None and self.pos >= self.hash_to:
                return

    def read_limited(self, limit: int) -> tuple[bytes, bool]:
        """Up to `limit` bytes, and whether there was more (which is read, hashed and discarded)."""
        parts: list[bytes] = []
        kept = 0
        overflow = False
        for chunk in self.chunks():
            if kept + len(chunk) > limit:
                overflow = True
                continue
            parts.append(chunk)
            kept += len(chunk)
        return b"".join(parts), overflow

    def lines(self, limit: int) -> Iterator[bytes | None]:
        """Lines without their terminator; None for a line longer than `limit` (skipped). Of a piece: the
        lines starting before `end`, the first one after the partial line `skip_first` passes over."""
        pending = b""
        passing = self.skip_first  # inside the line the piece before owns
        skipping = False  # inside an overlong line
        for chunk in self.chunks():
            base = self.pos - len(chunk)
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    if not skipping and not passing:
                        pending += chunk[start:]
                        if len(pending) > limit:
                            skipping, pending = True, b""
                            yield None
                    break
                if passing:
                    passing = False
                elif skipping:
                    skipping = False
                else:
                    yield pending + chunk[start:nl]
                pending = b""
                start = nl + 1
                if self.end is not None and base + start >= self.end:
                    return  # the next line starts in the next piece
        if pending and not skipping and not passing:
            yield pending

    def digest(self) -> str:
        return f"sha256:{self.hasher.hexdigest()}"


def open_source(uri: str, config: StoreConfig | None = None) -> tuple[ObjectStore, str]:
    """The store and key prefix of a source URI; a local file is a prefix of one object."""
    scheme, root, key = split_uri(uri)
    if scheme == "file":
        path = Path(root)
        if path.is_file():
            return LocalStore(path.parent), path.name
        if not path.is_dir():
            raise StoreError(f"{uri} does not exist or is not a directory")
        return LocalStore(path), ""
    store, key = open_uri(uri, config)
    if key and not key.endswith("/"):
        key += "/"
    return store, key


def list_source(store: ObjectStore, prefix: str) -> list[ObjectInfo]:
    """Every object under `prefix`, hidden files (a path part starting with '.') left out."""
    return [
        o for o in store.list(prefix) if not any(part.startswith(".") for part in PurePosixPath(o.key).parts)
    ]


def detect_format(key: str, configured: DatasetFormat) -> tuple[DatasetFormat | None, bool]:
    """(format to read `key` with, whether it is source code); format None when unsupported."""
    ext = PurePosixPath(key).suffix.lower().lstrip(".")
    is_code = ext in CODE_EXTENSIONS
    if configured is not DatasetFormat.AUTO:
        return configured, configured is DatasetFormat.CODE or (configured is DatasetFormat.TXT and is_code)
    if is_code:
        return DatasetFormat.CODE, True
    return _BY_EXTENSION.get(ext), False


_LONE_SURROGATE = "a \\uD800-\\uDFFF escape outside a surrogate pair is not UTF-8 text"


def _encodable(text: str) -> bool:
    """Whether `text` can be written as UTF-8: JSON's escapes can spell a lone surrogate, which made the
    spill file's encoder raise after the record had been read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _example(data: bytes | str) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    return text[:200]


class CorpusReader:
    """Reads every object of a source into records; see the module docstring."""

    def __init__(
        self, store: ObjectStore, fmt: DatasetFormat, text_field: str, structured: bool, max_chars: int
    ) -> None:
        self.store = store
        self.format = fmt
        self.text_field = text_field
        self.structured = structured  # sft/rl: records keep every field
        self.max_chars = max(max_chars, 1)
        self.max_bytes = self.max_chars * 4 + 4  # UTF-8 needs at most 4 bytes a character

    def read(self, objects: Iterable[ObjectInfo | Piece]) -> Iterator[Item]:
        """Records of every object or piece, each followed by its ObjectRead."""
        for obj in objects:
            piece = obj if isinstance(obj, Piece) else Piece(obj.key, obj.size)
            uri = self.store.uri(piece.key)
            fmt, is_code = detect_format(piece.key, self.format)
            if fmt is None:
                yield Rejected(uri, UNSUPPORTED_FORMAT, uri)
                yield ObjectRead(uri, piece.size, "")
                continue
            label = piece.label(uri)
            last = piece.end is None or piece.end >= piece.size
            first = max(piece.start - 1, 0)  # the byte before a piece: is its first line its own?
            end = None if last else piece.end
            length = None if end is None else end - first + self.max_bytes + 2  # room to finish the last line
            with self.store.open_read(piece.key, first, length) as fh:
                reader = _Reader(fh, label, offset=first, hash_from=piece.start, hash_to=end, end=end,
                                 skip_first=piece.start > 0)
                try:
                    header = self._csv_header(piece, fmt)
                    yield from self._records(fmt, is_code, reader, label, header)
                except StoreError:
                    raise
                except Exception as exc:  # a reader bug or a parser limit: the object is counted, the job goes on
                    yield Rejected(label, READ_ERROR, f"{label}: {type(exc).__name__}: {exc}"[:200])
                reader.drain()  # hash what a reader left unread
                yield ObjectRead(label, reader.size, reader.digest())

    def _csv_header(self, piece: Piece, fmt: DatasetFormat) -> list[bytes] | None:
        """The header record's lines for a CSV piece after the first (read from the object's start); an
        empty list when it cannot be read (the first piece counts that fault); None for any other piece."""
        if fmt is not DatasetFormat.CSV or piece.start == 0:
            return None
        with self.store.open_read(piece.key) as fh:  # abandoned once the header is read
            return csv_header(_Reader(fh, self.store.uri(piece.key)).lines(self.max_bytes)) or []

    def _records(self, fmt: DatasetFormat, is_code: bool, reader: _Reader, uri: str,
                 header: list[bytes] | None = None) -> Iterator[Item]:
        if fmt in (DatasetFormat.TXT, DatasetFormat.MD, DatasetFormat.CODE):
            yield from self._text(reader, uri, is_code)
        elif fmt is DatasetFormat.JSONL:
            yield from self._jsonl(reader, uri)
        elif fmt is DatasetFormat.JSON:
            yield from self._json(reader, uri)
        elif fmt is DatasetFormat.CSV:
            yield from self._csv(reader, uri, header)
        elif fmt is DatasetFormat.PARQUET:
            yield from self._parquet(reader, uri)
        elif fmt is DatasetFormat.PDF:
            yield from self._pdf(reader, uri)

    def _text(self, reader: _Reader, uri: str, is_code: bool) -> Iterator[Item]:
        data, overflow = reader.read_limited(self.max_bytes)
        if overflow:
            yield Rejected(uri, TOO_LONG, _example(data[:200]))
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            yield Rejected(uri, INVALID_UTF8, _example(data[:200]))
            return
        if not text.strip():
            yield Rejected(uri, EMPTY, uri)
            return
        if self.structured:
            yield Rejected(uri, MISSING_FIELD, f"{uri}: plain text has no conversation or task fields")
            return
        yield RawRecord(uri, text=text, is_code=is_code)

    def _from_object(self, obj: Any, uri: str, raw: bytes | str) -> Item:
        if not isinstance(obj, dict):
            return Rejected(uri, INVALID_JSON, _example(raw))
        if self.structured:
            if deeper_than(obj, MAX_JSON_DEPTH):
                # later stages re-encode the record recursively; a deep one could fail them
                return Rejected(uri, TOO_DEEP, f"nested deeper than {MAX_JSON_DEPTH} levels: {_example(raw)}")
            if not _encodable(json.dumps(obj, ensure_ascii=False)):
                return Rejected(uri, INVALID_UTF8, f"{_LONE_SURROGATE}: {_example(raw)}")
            return RawRecord(uri, fields=obj)
        text = obj.get(self.text_field)
        if not isinstance(text, str):
            return Rejected(uri, MISSING_FIELD, _example(raw))
        if not text.strip():
            return Rejected(uri, EMPTY, _example(raw))
        if not _encodable(text):
            return Rejected(uri, INVALID_UTF8, f"{_LONE_SURROGATE}: {_example(raw)}")
        return RawRecord(uri, text=text)

    def _jsonl(self, reader: _Reader, uri: str) -> Iterator[Item]:
        for line in reader.lines(self.max_bytes):
            if line is None:
                yield Rejected(uri, TOO_LONG, f"{uri}: a line longer than {self.max_bytes} bytes")
                continue
            if not line.strip():
                continue
            try:
                decoded = line.decode("utf-8")
            except UnicodeDecodeError:
                yield Rejected(uri, INVALID_UTF8, _example(line))
                continue
            try:
                obj = json.loads(decoded)
            except ValueError:
                yield Rejected(uri, INVALID_JSON, _example(decoded))
                continue
            except RecursionError:  # the parser recurses once per level: `[` x 100000 ends here
                yield Rejected(uri, TOO_DEEP, f"nested deeper than the JSON parser follows: {_example(decoded)}")
                continue
            yield self._from_object(obj, uri, decoded)

    def _json(self, reader: _Reader, uri: str) -> Iterator[Item]:
        """Each element of a top-level array (or the one value), streamed. After a fault nothing past it
        can be located, so the fault is counted once and the rest of the file is skipped."""
        try:
            for element, raw in json_elements(reader.chunks(), self.max_bytes):
                yield self._from_object(element, uri, raw)
        except EmptyDocument:
            yield Rejected(uri, EMPTY, uri)
        except UnicodeDecodeError as exc:
            yield Rejected(uri, INVALID_UTF8, f"{uri}: {exc}")
        except ElementTooLong as exc:
            yield Rejected(uri, TOO_LONG, f"{uri}: {exc}; the rest of the file is skipped")
        except RecursionError:
            yield Rejected(uri, TOO_DEEP, f"{uri}: nested deeper than the JSON parser follows")
        except json.JSONDecodeError as exc:
            yield Rejected(uri, INVALID_JSON, f"{uri}: {exc.msg} at character {exc.pos}: {exc.doc[exc.pos:][:80]}")
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            yield Rejected(uri, INVALID_JSON, f"{uri}: {exc}")

    def _csv(self, reader: _Reader, uri: str, header: list[bytes] | None = None) -> Iterator[Item]:
        """Rows as records; see `csv_rows` for how a stray quote costs one row instead of the rest. A piece
        after the first is read after `header` (its object's header lines; none: it has no readable header,
        which the first piece reports)."""
        if header == []:
            return
        seen = header is not None  # a later piece owning no row is no empty file
        lines: Iterable[bytes | None] = reader.lines(self.max_bytes)
        for item in csv_rows(itertools.chain(header or [], lines), self.max_bytes):
            if isinstance(item, CsvBadLine):
                reason = TOO_LONG if item.raw is None else INVALID_UTF8
                yield Rejected(uri, reason, f"{uri} line {item.line}: {_example(item.raw or b'')}")
                continue
            seen = True
            if isinstance(item, CsvFault):
                yield Rejected(uri, MALFORMED_CSV, f"{uri} line {item.line}: {item.message}: {_example(item.text)}")
                continue
            raw = ",".join(str(v) for v in item.fields.values())
            if item.extra_fields:  # an unquoted delimiter inside a field: the fields after it are shifted
                yield Rejected(uri, MALFORMED_CSV, f"{uri} line {item.line}: more fields than the header: "
                                                   f"{_example(raw)}")
            else:
                yield self._from_object(dict(item.fields), uri, raw[:200])
        if not seen:
            yield Rejected(uri, EMPTY, f"{uri}: no header or no rows")

    @contextlib.contextmanager
    def _local_copy(self, reader: _Reader, limit: int | None = None) -> Iterator[Path]:
        """The object as a local file (parquet and PDF readers need random access); past `limit` bytes
        the copy stops one byte over it (the rest is only hashed), so a huge object fills no disk."""
        fd, name = tempfile.mkstemp(prefix="forge-src-")
        try:
            with os.fdopen(fd, "wb") as out:
                room = limit + 1 if limit is not None else None
                for chunk in reader.chunks():
                    if room is None:
                        out.write(chunk)
                    elif room > 0:
                        out.write(chunk[:room])
                        room -= min(room, len(chunk))
            yield Path(name)
        finally:
            os.unlink(name)

    def _parquet(self, reader: _Reader, uri: str) -> Iterator[Item]:
        import pyarrow.parquet as pq

        with self._local_copy(reader) as path:
            if path.stat().st_size == 0:
                yield Rejected(uri, EMPTY, uri)
                return
            try:
                pf = pq.ParquetFile(path)
                names = set(pf.schema_arrow.names)
                if not self.structured and self.text_field not in names:
                    yield Rejected(
                        uri,
                        MISSING_FIELD,
                        f"{uri}: no column {self.text_field!r} (columns: {', '.join(sorted(names))})",
                    )
                    return
                columns = None if self.structured else [self.text_field]
                for group in range(pf.metadata.num_row_groups):
                    meta = pf.metadata.row_group(group)
                    if why := parquet_group_excess(meta, set(columns) if columns else None, self.max_bytes):
                        yield Rejected(uri, TOO_LONG, f"{uri} row group {group} ({meta.num_rows:,} rows): {why}")
                        continue
                    yield from self._parquet_rows(pf, group, columns, uri)
            except Exception as exc:  # pyarrow raises several types for a damaged file
                yield Rejected(uri, CORRUPT_FILE, f"{uri}: {type(exc).__name__}: {exc}"[:200])

    def _parquet_rows(self, pf: Any, group: int, columns: list[str] | None, uri: str) -> Iterator[Item]:
        for batch in pf.iter_batches(batch_size=1024, row_groups=[group], columns=columns):
            for row in batch.to_pylist():
                text = json.dumps(row, default=str)
                # records are stored as JSON: a timestamp, decimal or bytes column becomes its string
                # form here instead of failing the encoder in a later stage
                yield self._from_object(json.loads(text) if self.structured else row, uri, text[:200])

    def _pdf(self, reader: _Reader, uri: str) -> Iterator[Item]:
        with self._local_copy(reader, PDF_MAX_BYTES) as path:
            if path.stat().st_size == 0:
                yield Rejected(uri, EMPTY, uri)
                return
            try:
                text = pdf_text(path, self.max_chars)
            except PdfTooLong as exc:
                yield Rejected(uri, TOO_LONG, f"{uri}: {exc}")
                return
            except Exception as exc:  # pypdf raises many types for a damaged file
                yield Rejected(uri, CORRUPT_FILE, f"{uri}: {type(exc).__name__}: {exc}"[:200])
                return
        if not text:
            yield Rejected(uri, EMPTY, f"{uri}: no extractable text")
        elif self.structured:
            yield Rejected(uri, MISSING_FIELD, f"{uri}: a PDF has no conversation or task fields")
        else:
            yield RawRecord(uri, text=text)

