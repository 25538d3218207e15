"""Hostile source files for the data pipeline: each reproduces a fault seen on a real probe (issue 14,
section 5). Generated, not checked in, so a reader sees exactly what each test feeds in. Shared by
tests/unit/test_data_hostile.py and benchmarks/bench_ingest_hostile.py."""

from __future__ import annotations

import io
import json
import zlib
from pathlib import Path

from tests.support.raw_corpus import pdf_of_objects

DEEP_JSON_LINE = "[" * 100_000
"""One 100 KB JSON Lines record that made the parser raise RecursionError."""


def pdf_text_bomb(chars: int = 7_500_000, per_show: int = 10) -> bytes:
    """A one-page PDF of a few KB whose compressed content stream shows `chars` characters of text in
    strings of `per_show` characters (short strings mean many operations: the CPU-heavy case)."""
    show = b"(" + b"a" * per_show + b") Tj\n"
    content = b"BT /F1 12 Tf 72 720 Td\n" + show * (chars // per_show) + b"ET"
    data = zlib.compress(content, 9)
    return pdf_of_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Filter /FlateDecode /Length " + str(len(data)).encode() + b" >>\nstream\n" + data + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ])


def pdf_page_bomb(pages: int = 6_000) -> bytes:
    """A PDF of `pages` pages, every one the same empty page object: six bytes a page, and each page
    costs an extraction pass."""
    kids = b" ".join([b"3 0 R"] * pages)
    return pdf_of_objects([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [" + kids + b"] /Count " + str(pages).encode() + b" >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    ])


def parquet_bomb(chars: int = 200 << 20) -> bytes:
    """A Parquet file of a few KB whose one `text` value is `chars` characters (zstd compresses the
    repetition away); reading it whole took 1.2 GB of memory for 200 M characters."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table({"text": pa.array(["a" * chars], type=pa.large_string())}), buf, compression="zstd")
    return buf.getvalue()


def write_big_json_array(path: Path, target_bytes: int) -> int:
    """A JSON file holding one array of small {"text": ...} records of about `target_bytes`; returns
    the record count. Written in pieces, so the writer itself stays small."""
    n = 0
    with path.open("w") as fh:
        fh.write("[")
        written = 1
        while written < target_bytes:
            piece = ",".join(json.dumps({"id": n + i, "text": f"Record {n + i} tells of a river and a stone, "
                                         f"a garden and a window, and nothing else at all."})
                             for i in range(1000))
            fh.write(("," if n else "") + piece)
            written += len(piece) + 1
            n += 1000
        fh.write("]")
    return n


def stray_quote_csv(rows: int = 1000) -> bytes:
    """A CSV of `rows` good rows after one whose text opens a quote it never closes: the csv module's
    default dialect merged every row after it into that one field."""
    lines = ["id,text", '1,"The stray quote opens here and never closes']
    lines += [f"{i},Row {i} is a perfectly ordinary sentence about a meadow." for i in range(2, rows + 2)]
    return ("\n".join(lines) + "\n").encode()


def lucky_stray_quote_csv(rows: int = 1000) -> bytes:
    """Like `stray_quote_csv`, but a later row's field happens to end with a quote right before the line
    end, which closes the stray one cleanly: only the number of lines swallowed gives it away."""
    lines = ["id,text", '1,"The stray quote opens here']
    lines += [f"{i},Row {i} is a perfectly ordinary sentence about a meadow." for i in range(2, rows + 2)]
    lines += [f'{rows + 2},and this row ends in a quote"', f"{rows + 3},Row {rows + 3} is read again."]
    return ("\n".join(lines) + "\n").encode()


READ_AND_MEASURE = r"""
import json, re, sys, time
from collections import Counter
from pathlib import Path
from forge_trainer.config import DatasetFormat
from forge_trainer.data import ingest
from forge_trainer.store import LocalStore
path = Path(sys.argv[1])
store = LocalStore(path.parent)
reader = ingest.CorpusReader(store, DatasetFormat.AUTO, "text", False, 1_000_000)
import pypdf  # imported before the baseline, like the other readers' modules
def peak_kib():  # this process's own high-water RSS (ru_maxrss would include the parent's at fork)
    return int(re.search(r"VmHWM:\s*(\d+)", Path("/proc/self/status").read_text()).group(1))
before = peak_kib()
cpu = time.process_time()
kept, dropped = 0, Counter()
for item in reader.read(o for o in store.list("") if o.key == path.name):
    if isinstance(item, ingest.RawRecord):
        kept += 1
    elif isinstance(item, ingest.Rejected):
        dropped[item.reason] += 1
peak = peak_kib()
print(json.dumps({"kept": kept, "dropped": dict(dropped), "cpu": time.process_time() - cpu,
                  "rss_growth": (peak - before) / 1024, "peak": peak / 1024}))
"""
"""Run as `python -c READ_AND_MEASURE FILE` (a fresh process): the real CorpusReader reads FILE and prints, as
JSON, records kept, drops per reason, CPU seconds, and the growth of peak RSS (MiB) over the state after imports."""
