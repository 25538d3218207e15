"""The dataset's progress.json of a preparation split across worker processes (what each pod runs) is live:
worker 0 keeps rewriting it with one entry per worker while it waits for the others, and it shows each
worker's stage before the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.raw_corpus import sentence_doc, write_jsonl


def _progress(out: Path) -> dict[str, Any] | None:
    try:
        return dict(json.loads((out / "progress.json").read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _until(what: str, probe: Any, timeout: float, proc: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return dict(found)
        assert proc.poll() is None, f"worker 0 ended before {what}: {proc.communicate()[1][-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; progress.json: {_progress(out)}")


def _worker(cfg: Path, worker: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "forge_trainer.cli", "prepare", "--config", str(cfg), "--stage",
                             "all", "--worker", str(worker), "--workers", "2", "--poll-seconds", "0.2"],
                            env=dict(os.environ), stderr=subprocess.PIPE, text=True)


def test_worker_0_keeps_the_merged_progress_live_with_every_worker(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for f in range(6):
        write_jsonl(src / f"part-{f}.jsonl", [{"text": sentence_doc(f * 100 + i, 60)} for i in range(20)])
    cfg = tmp_path / "prepare.json"
    cfg.write_text(json.dumps({"source": str(src), "output": str(out), "tokenizer": {"vocabSize": 400},
                               "sharding": {"tokensPerShard": 1024}}))
    second: subprocess.Popen[str] | None = None
    first = _worker(cfg, 0)  # alone at first: it scans its half, commits, and waits for worker 1
    try:
        def scanned() -> dict[str, Any] | None:
            p = _progress(out)
            return p if p and p.get("workers") and p["workers"][0]["committed"] else None

        waiting = _until("worker 0's scan commit", scanned, 120, first, out)
        assert waiting["stage"] == "scan 1/5 (1/2 workers)"
        assert [(w["worker"], w["stage"], w["committed"], w["documentsRead"]) for w in waiting["workers"]] == [
            (0, "scan", True, 60), (1, "starting", False, 0)]
        assert waiting["documentsDone"] == 60 and waiting["bytesDone"] == waiting["workers"][0]["bytesDone"] > 0
        # nothing commits while worker 0 waits: a newer write is its merger's
        _until("the merger's next write", lambda: (p := _progress(out)) and p["updatedAt"] != waiting["updatedAt"]
               and p, 30, first, out)
        second = _worker(cfg, 1)
        seen: list[dict[str, Any]] = []
        while first.poll() is None:
            p = _progress(out)
            if p and p.get("workers"):
                seen.append(p)
            time.sleep(0.05)
        _, err = first.communicate()
        assert first.returncode == 0, err[-2000:]
        _, err = second.communicate(timeout=120)
        assert second.returncode == 0, err[-2000:]
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    moved = [p for p in seen if p["workers"][1]["stage"] != "starting"]
    assert moved, "no progress.json showed worker 1 at work before the end"
    assert all(len(p["workers"]) == 2 for p in moved)
    assert max(p["counts"]["documentsRead"] for p in seen) == 120
    final = _progress(out)
    assert final is not None and final["stage"] == "done" and final["counts"]["documentsRead"] == 120
