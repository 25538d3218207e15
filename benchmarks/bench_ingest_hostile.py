"""Time and memory of each hostile input of issue 14 section 5, after the fix: every one is bounded.

    .venv/bin/python benchmarks/bench_ingest_hostile.py

Each source file is read by the real `CorpusReader` (maxChars 1,000,000, the default) in a fresh
process, which reports its CPU seconds, its peak RSS, and the growth of that peak over the state
after imports (0 when reading stays below the peak the imports reached). A benign reference file
(20,000 ordinary JSON Lines records, about 9 MB) is measured the same way, and the last line gives
the worst hostile figures as a ratio of it. The json_schema rows time one verifier call in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.hostile_corpus import (  # noqa: E402
    DEEP_JSON_LINE,
    READ_AND_MEASURE,
    lucky_stray_quote_csv,
    parquet_bomb,
    pdf_page_bomb,
    pdf_text_bomb,
    stray_quote_csv,
    write_big_json_array,
)
from tests.support.raw_corpus import sentence_doc  # noqa: E402


def _write(path: Path, data: bytes | str) -> None:
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)


CASES: list[tuple[str, str, Callable[[Path], object]]] = [
    ("reference: 20k good JSONL records", "good.jsonl",
     lambda p: _write(p, "".join(json.dumps({"text": sentence_doc(i, 60)}) + "\n" for i in range(20_000)))),
    ("JSONL line of '[' x 100000", "deep.jsonl", lambda p: _write(p, DEEP_JSON_LINE + "\n")),
    ("PDF, 7.5 M chars in 750k ops", "bomb.pdf", lambda p: _write(p, pdf_text_bomb())),
    ("PDF, 7.5 M chars in 7.5k ops", "wide.pdf", lambda p: _write(p, pdf_text_bomb(per_show=1000))),
    ("PDF, 6,000 pages", "pages.pdf", lambda p: _write(p, pdf_page_bomb())),
    ("Parquet, one 200 M-char value", "bomb.parquet", lambda p: _write(p, parquet_bomb())),
    ("JSON array, 50 MB", "big.json", lambda p: write_big_json_array(p, 50 << 20)),
    ("CSV, stray quote open to EOF", "stray.csv", lambda p: _write(p, stray_quote_csv(1000))),
    ("CSV, stray quote closed by luck", "lucky.csv", lambda p: _write(p, lucky_stray_quote_csv(1000))),
]


@dataclass
class Read:
    """What reading one file cost a fresh process."""

    kept: int
    dropped: dict[str, int]
    cpu: float
    rss_growth: float
    peak: float


def read_in_child(path: Path) -> Read:
    """Read `path` with the CorpusReader in a fresh process."""
    out = subprocess.run([sys.executable, "-c", READ_AND_MEASURE, str(path)], check=True, capture_output=True, text=True,
                         cwd=ROOT)
    return Read(**json.loads(out.stdout.strip().splitlines()[-1]))


def schema_rows() -> list[tuple[str, float, str]]:
    """(case, wall seconds, outcome) of the json_schema verifier on backtracking patterns."""
    from forge_trainer.train.verifiers import json_schema

    evil = json.dumps("a" * 40 + "!")
    rows = []
    for name, schema, completion in [
        ("schema pattern ^(a+)+$", {"type": "string", "pattern": "^(a+)+$"}, evil),
        ("schema pattern (a|aa)+$", {"type": "string", "pattern": "(a|aa)+$"}, evil),
        ("20 strings x (a|aa)+$", {"type": "array", "items": {"type": "string", "pattern": "(a|aa)+$"}},
         json.dumps(["a" * 40 + "!"] * 20)),
    ]:
        start = time.perf_counter()
        outcome = json_schema(completion, {"schema": schema})
        rows.append((name, time.perf_counter() - start, outcome.reason or "pass"))
    return rows


def main() -> int:
    results = []
    with tempfile.TemporaryDirectory(prefix="forge-bench-hostile-") as tmp:
        for name, filename, write in CASES:
            path = Path(tmp) / filename
            write(path)
            r = read_in_child(path)
            results.append((name, path.stat().st_size, r))
            dropped = ", ".join(f"{k} {v}" for k, v in sorted(r.dropped.items())) or "-"
            print(f"{name:34s} {path.stat().st_size / 2**10:9,.0f} KiB  CPU {r.cpu:6.2f} s  "
                  f"peak RSS {r.peak:5.0f} MiB (+{r.rss_growth:5.1f})  kept {r.kept:>7,}  dropped: {dropped}")
            path.unlink()
    for name, secs, outcome in schema_rows():
        print(f"{name:34s} {'':13s}  wall {secs:5.2f} s  outcome {outcome}")
    ref = results[0][2]
    hostile = [r for _, _, r in results[1:]]
    worst_cpu = max(r.cpu for r in hostile)
    worst_rss = max(r.rss_growth for r in hostile)
    print(f"RATIO worst hostile / reference: CPU {worst_cpu / max(ref.cpu, 1e-3):.2f}x ({worst_cpu:.2f} s vs "
          f"{ref.cpu:.2f} s), RSS growth {worst_rss:.1f} MiB vs {ref.rss_growth:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
