"""A large JSON Lines or CSV object is read as byte-range pieces: every record exactly once, wherever the
boundaries fall, and the audit's sha256 of each piece is that of exactly its bytes."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from forge_trainer.config import DatasetFormat
from forge_trainer.data.ingest import CorpusReader, ObjectRead, Piece, RawRecord, Rejected, pieces
from forge_trainer.data.work import partition
from forge_trainer.store import LocalStore, ObjectInfo


def _read(store: LocalStore, listing: list[Piece]) -> tuple[list[RawRecord | Rejected], list[ObjectRead]]:
    reader = CorpusReader(store, DatasetFormat.AUTO, "text", False, 1000)
    records: list[RawRecord | Rejected] = []
    reads: list[ObjectRead] = []
    for item in reader.read(listing):
        (reads if isinstance(item, ObjectRead) else records).append(item)  # type: ignore[arg-type]
    return records, reads


def test_pieces_depend_on_size_and_format_only() -> None:
    objects = [ObjectInfo("a.jsonl", 250), ObjectInfo("b.txt", 10_000), ObjectInfo("c.csv", 100),
               ObjectInfo("d.json", 10_000), ObjectInfo("e.ndjson", 300)]
    listing = pieces(objects, DatasetFormat.AUTO, 100)
    assert [(p.key, p.start, p.end) for p in listing] == [
        ("a.jsonl", 0, 100), ("a.jsonl", 100, 200), ("a.jsonl", 200, 250), ("b.txt", 0, None), ("c.csv", 0, None),
        ("d.json", 0, None), ("e.ndjson", 0, 100), ("e.ndjson", 100, 200), ("e.ndjson", 200, 300)]
    assert [p.length for p in listing] == [100, 100, 50, 10_000, 100, 10_000, 100, 100, 100]
    assert pieces(objects, DatasetFormat.TXT, 100) == [Piece(o.key, o.size) for o in objects], \
        "text is one document per file: never split"
    assert partition(listing, 3) == [0, 4, 6, 9], "a piece goes to the worker its first byte falls to"


def test_every_jsonl_line_is_read_once_whatever_the_piece_size(tmp_path: Path) -> None:
    rng = random.Random(7)
    lines = [json.dumps({"text": f"record {i} " + "x" * rng.randint(0, 90)}) for i in range(400)]
    lines[50] = ""  # a blank line
    data = ("\n".join(lines)).encode()  # the last line has no newline
    (tmp_path / "big.jsonl").write_bytes(data)
    store = LocalStore(tmp_path)
    expected = [json.loads(line)["text"] for line in lines if line]
    newline_at = data.index(b"\n", 5000)  # a piece starting right after a newline owns the line there
    for size in (37, 64, 101, 1000, newline_at + 1, len(data) - 1, len(data)):
        listing = pieces([ObjectInfo("big.jsonl", len(data))], DatasetFormat.AUTO, size)
        records, reads = _read(store, listing)
        assert [r.text for r in records if isinstance(r, RawRecord)] == expected, size
        assert [r for r in records if isinstance(r, Rejected)] == []
        assert len(reads) == len(listing)
        for piece, read in zip(listing, reads, strict=True):
            end = piece.end if piece.end is not None else len(data)
            assert read.size == end - piece.start
            assert read.sha256 == "sha256:" + hashlib.sha256(data[piece.start:end]).hexdigest(), (size, piece)
            assert read.uri.endswith("big.jsonl" if piece.end is None else f"big.jsonl#bytes={piece.start}-{end}")


def test_an_overlong_line_is_dropped_once_across_pieces(tmp_path: Path) -> None:
    data = b'{"text": "first"}\n{"text": "' + b"y" * 9000 + b'"}\n{"text": "after"}\n'
    (tmp_path / "big.jsonl").write_bytes(data)
    listing = pieces([ObjectInfo("big.jsonl", len(data))], DatasetFormat.AUTO, 1000)  # maxChars 1000
    records, _ = _read(LocalStore(tmp_path), listing)
    assert [r.text if isinstance(r, RawRecord) else r.reason for r in records] == ["first", "too_long", "after"]


def test_csv_pieces_read_the_header_and_count_a_straddling_quote_as_malformed(tmp_path: Path) -> None:
    rows = [f'{i},"row {i} {"z" * (i % 40)}"' for i in range(200)]
    rows[120] = '120,"a field with a\nline break, read whole when no boundary cuts it"'
    data = ("id,text\n" + "\n".join(rows) + "\n").encode()
    (tmp_path / "t.csv").write_bytes(data)
    store = LocalStore(tmp_path)
    whole, _ = _read(store, [Piece("t.csv", len(data))])
    assert [r.text for r in whole if isinstance(r, RawRecord)][120].startswith("a field with a\nline break")
    first, inner = data.index(b'120,"a field'), data.index(b"\nline break")
    size = next(s for s in range(1000, 3000) if inner // s * s > first)  # a boundary inside the quoted field
    listing = pieces([ObjectInfo("t.csv", len(data))], DatasetFormat.AUTO, size)
    assert len(listing) > 3
    records, _ = _read(store, listing)
    texts = [r.text for r in records if isinstance(r, RawRecord)]
    assert [t for t in texts if t.startswith("row ")] == [f"row {i} {'z' * (i % 40)}" for i in range(200) if i != 120]
    faults = [r for r in records if isinstance(r, Rejected)]
    assert [r.reason for r in faults] == ["malformed_csv"], "the straddling record's first line, once"
    assert "#bytes=" in faults[0].example and "unexpected end of data" in faults[0].example
    # its other line is read as a row of its own: `line break` under id, the rest (and the quote) as text
    assert ' read whole when no boundary cuts it"' in texts
