"""Hostile corpora (issue 14, section 5): each input that crashed, stalled or silently corrupted
`forge-trainer prepare` is now dropped, counted under a reason with an example naming the file, and
the rest of the corpus is still prepared."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from forge_trainer.config import PrepareConfig
from forge_trainer.data.limits import CSV_MAX_RECORD_LINES, MAX_JSON_DEPTH, PDF_MAX_BYTES, PDF_MAX_PAGES
from forge_trainer.data.manifest import Manifest
from forge_trainer.data.prepare import run_prepare
from forge_trainer.data.shards import iter_records
from tests.support.hostile_corpus import (
    DEEP_JSON_LINE,
    READ_AND_MEASURE,
    lucky_stray_quote_csv,
    parquet_bomb,
    pdf_page_bomb,
    pdf_text_bomb,
    stray_quote_csv,
    write_big_json_array,
)
from tests.support.raw_corpus import parquet_bytes, pdf_bytes, sentence_doc, write_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _prepare(src: Path, out: Path, **extra: Any) -> Manifest:
    wire: dict[str, Any] = {"source": str(src), "output": str(out), "tokenizer": {"vocabSize": 300},
                            "sharding": {"tokensPerShard": 1024}, "split": {"validationFraction": 0.0}}
    wire.update(extra)
    return run_prepare(PrepareConfig.model_validate(wire), progress_interval=0.0)


def _with_good_docs(src: Path) -> None:
    src.mkdir(parents=True, exist_ok=True)
    (src / "good.txt").write_text(sentence_doc(1))
    (src / "good.pdf").write_bytes(pdf_bytes(sentence_doc(2, 40)))


def test_a_deeply_nested_json_line_is_counted_and_the_job_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _with_good_docs(src)
    write_jsonl(src / "lines.jsonl", [{"text": sentence_doc(3)}, DEEP_JSON_LINE, {"text": sentence_doc(4)}])
    (src / "deep.json").write_text("[" + DEEP_JSON_LINE + "]")
    manifest = _prepare(src, tmp_path / "out")
    assert manifest.counts.dropped == {"too_deep": 2}
    assert manifest.counts.documents_kept == 4  # good.txt, good.pdf and the two good lines
    assert any("lines.jsonl" not in e and "deep.json" in e for e in manifest.examples["too_deep"])
    assert any(e.endswith("[[[[") for e in manifest.examples["too_deep"])


def test_a_lone_surrogate_escape_is_invalid_utf8(tmp_path: Path) -> None:
    # json.loads accepts "\ud800"; writing it to the spill file as UTF-8 raised and aborted prepare
    src = tmp_path / "src"
    _with_good_docs(src)
    # json.dumps escapes a lone surrogate as \\ud800: the files hold exactly what a JSON writer produces
    write_jsonl(src / "lines.jsonl", [{"text": sentence_doc(3) + " \ud800"}, {"text": sentence_doc(4)}])
    (src / "array.json").write_text(json.dumps([{"text": sentence_doc(5) + " \udfff"},
                                                {"text": "emoji \U0001F600 " + sentence_doc(6)}]))
    manifest = _prepare(src, tmp_path / "out")
    assert manifest.counts.dropped == {"invalid_utf8": 2}
    assert "outside a surrogate pair" in manifest.examples["invalid_utf8"][0]
    assert manifest.counts.documents_kept == 4  # the two good docs, line 2, and the valid pair
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_jsonl(tasks / "t.jsonl", [{"prompt": "What is two and two?", "answer": "4"},
                                    {"prompt": "Name a colour.", "answer": "red", "note": "\udc00"}])
    rl = _prepare(tasks, tmp_path / "out-rl", purpose="rl")
    assert rl.counts.dropped == {"invalid_utf8": 1} and rl.counts.documents_kept == 1


def test_an_integer_past_the_digit_limit_is_invalid_json(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _with_good_docs(src)
    digits = "7" * 5000
    (src / "big.json").write_text(f'[{{"text": {json.dumps(sentence_doc(3))}, "n": {digits}}}]')
    write_jsonl(src / "big.jsonl", [f'{{"n": {digits}}}', {"text": sentence_doc(4)}])
    manifest = _prepare(src, tmp_path / "out")
    assert manifest.counts.dropped == {"invalid_json": 2}
    assert manifest.counts.documents_kept == 3


def test_a_record_nested_past_the_limit_is_dropped_before_later_stages(tmp_path: Path) -> None:
    # parses (under the recursion limit) but would fail a later json.dumps from a deeper stack
    src = tmp_path / "src"
    src.mkdir()
    deep: Any = "x"
    for _ in range(MAX_JSON_DEPTH + 1):
        deep = [deep]
    good = {"prompt": "What is two and two?", "answer": "4"}
    write_jsonl(src / "tasks.jsonl", [good, {**good, "prompt": "And three?", "meta": deep}])
    manifest = _prepare(src, tmp_path / "out", purpose="rl")
    assert manifest.counts.dropped == {"too_deep": 1}
    assert manifest.counts.documents_kept == 1
    assert f"deeper than {MAX_JSON_DEPTH} levels" in manifest.examples["too_deep"][0]


def test_parquet_columns_json_cannot_hold_become_strings(tmp_path: Path) -> None:
    # an rl dataset with a timestamp and a bytes column crashed the cleaning stage's JSON encoder
    src = tmp_path / "src"
    src.mkdir()
    prompts = {1: "What is two and two?", 2: "Name the largest planet of the solar system."}
    rows = [{"prompt": prompts[n], "answer": str(n), "created": datetime(2024, 1, n), "blob": bytes([0, n])}
            for n in (1, 2)]
    (src / "tasks.parquet").write_bytes(parquet_bytes(rows))
    out = tmp_path / "out"
    manifest = _prepare(src, out, purpose="rl")
    assert manifest.counts.documents_kept == 2 and manifest.counts.dropped == {}
    records = [r for shard in manifest.shards for r in iter_records(str(out), shard)]
    assert sorted(r["created"] for r in records) == ["2024-01-01 00:00:00", "2024-01-02 00:00:00"]


def test_a_parquet_compression_bomb_is_dropped_unread(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _with_good_docs(src)
    (src / "bomb.parquet").write_bytes(parquet_bomb(20 << 20))  # a few KB; one 20 M-character value
    (src / "rows.parquet").write_bytes(parquet_bytes([{"text": sentence_doc(3)}, {"text": sentence_doc(4)}]))
    manifest = _prepare(src, tmp_path / "out", processing={"quality": {"maxChars": 100_000}})
    assert manifest.counts.dropped == {"too_long": 1}
    assert "bomb.parquet row group 0 (1 rows): 20.0 MiB uncompressed for 1 rows" in manifest.examples["too_long"][0]
    assert manifest.counts.documents_kept == 4


def test_a_pdf_text_bomb_is_capped_as_too_long(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _with_good_docs(src)
    (src / "bomb.pdf").write_bytes(pdf_text_bomb())  # 24 KB: 7.5 M characters in 750,000 operations
    (src / "wide.pdf").write_bytes(pdf_text_bomb(chars=300_000, per_show=1000))  # few operations, much text
    (src / "pages.pdf").write_bytes(pdf_page_bomb(PDF_MAX_PAGES + 1))
    manifest = _prepare(src, tmp_path / "out", processing={"quality": {"maxChars": 100_000}})
    assert manifest.counts.dropped == {"too_long": 3}
    assert manifest.counts.documents_kept == 2
    examples = "\n".join(manifest.examples["too_long"])
    assert "bomb.pdf: page 1:" in examples
    assert "wide.pdf: page 1: more than 100,000 characters of text" in examples
    assert f"pages.pdf: {PDF_MAX_PAGES + 1:,} pages" in examples


def test_a_pdf_too_large_to_hold_in_memory_is_too_long(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _with_good_docs(src)
    with (src / "huge.pdf").open("wb") as fh:  # sparse: takes no disk here
        fh.write(pdf_bytes(sentence_doc(3)))
        fh.truncate(PDF_MAX_BYTES + 1)
    manifest = _prepare(src, tmp_path / "out")
    assert manifest.counts.dropped == {"too_long": 1}
    assert f"huge.pdf: larger than {PDF_MAX_BYTES >> 20} MiB" in manifest.examples["too_long"][0]
    assert manifest.counts.documents_kept == 2


def test_a_stray_csv_quote_costs_one_row_not_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _with_good_docs(src)
    (src / "stray.csv").write_bytes(stray_quote_csv(1000))  # open to the end: 1000 rows merged before
    (src / "short.csv").write_bytes(stray_quote_csv(100))  # open to the end, within the line bound
    (src / "lucky.csv").write_bytes(lucky_stray_quote_csv(1000))  # a later quote closes it cleanly
    (src / "extra.csv").write_text(f"id,text\n1,{sentence_doc(5)}\n2,an unquoted, comma splits this row\n")
    # the three files share their row texts: dedup would hide what is kept
    manifest = _prepare(src, tmp_path / "out", processing={"nearDedup": {"enabled": False}, "exactDedup": False})
    assert manifest.counts.dropped == {"malformed_csv": 4}
    examples = manifest.examples["malformed_csv"]
    assert any("stray.csv line 2: one record runs over more than 500 lines" in e for e in examples)
    assert any("short.csv line 2: unexpected end of data (an unclosed quote took lines 2-102" in e
               for e in examples)
    assert any("lucky.csv line 2: one record runs over more than 500 lines" in e for e in examples)
    assert any("extra.csv line 3: more fields than the header" in e for e in examples)
    # good.txt and good.pdf; every row but the one with the stray quote; extra.csv's first row
    assert manifest.counts.documents_kept == 2 + 1000 + 100 + 1002 + 1


def test_a_multi_line_csv_field_within_the_bound_is_kept(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    body = "\n".join(sentence_doc(10 + i, 8) for i in range(CSV_MAX_RECORD_LINES - 1))
    (src / "poem.csv").write_text(f'id,text\n1,"{body}"\n')
    manifest = _prepare(src, tmp_path / "out")
    assert manifest.counts.dropped == {}
    assert manifest.counts.documents_kept == 1


def test_a_large_json_array_is_read_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.json"
    records = write_big_json_array(path, 50 << 20)
    size_mib = path.stat().st_size / 2**20
    out = json.loads(subprocess.run([sys.executable, "-c", READ_AND_MEASURE, str(path)], check=True,
                                    capture_output=True, text=True, cwd=ROOT).stdout)
    kept, growth = out["kept"], out["rss_growth"]
    print(f"{size_mib:.0f} MiB JSON array, {records:,} records: peak RSS grew {growth:.1f} MiB while reading")
    assert kept == records
    assert growth < size_mib / 4  # reading it whole grew RSS by 262 MiB (the file, its text, its objects)

