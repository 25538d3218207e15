"""Runs the parts one after another, each in a process of its own killed at its budget (with whatever it
started), and writes the report as each part ends: report.json, report.txt and the parts' log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.gpu_check.part import write_json
from benchmarks.gpu_check.plan import GPU_WALL_LIMIT_S, PARTS, Part, budget_for, gpu_budget_total
from benchmarks.gpu_check.report import render_text

REPORT_JSON = "report.json"
REPORT_TEXT = "report.txt"
LOG_NAME = "gpu-check.log"


def run_part(part: Part, dry_run: bool, env: dict[str, Any], work: Path, log: Any) -> dict[str, Any]:
    """One part's outcome: {"status", "seconds", "budget_s", "result", and "reason" or "error"}."""
    budget = budget_for(part, dry_run)
    context, result_file = work / f"{part.name}.context.json", work / f"{part.name}.result.json"
    write_json(context, {"dry_run": dry_run, "budget_s": budget, "env": env, "workdir": str(work / part.name)})
    log.write(f"\n===== {part.name} (budget {budget} s) =====\n")
    log.flush()
    began = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_check.part", part.name, "--context", str(context),
                             "--result", str(result_file)], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: a timeout ends the servers it started
    try:
        code: int | None = proc.wait(timeout=budget + 5)  # the part's own clock starts a little later
    except subprocess.TimeoutExpired:
        code = None
    finally:
        _end_group(proc)
    seconds = round(time.monotonic() - began, 1)
    try:
        outcome: dict[str, Any] = json.loads(result_file.read_text())
    except (OSError, ValueError):
        outcome = {"status": "running", "result": {}}
    if code is None:
        outcome.update(status="timeout", error=f"stopped at its budget of {budget} s")
    elif outcome.get("status") == "running":
        outcome.update(status="error", error=f"the part's process exited with status {code} before it finished "
                                             f"(see {LOG_NAME})")
    return {**outcome, "seconds": seconds, "budget_s": budget}


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop what is left of the part's process group (the part, servers it started): TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        time.sleep(1.0)
    proc.wait()


def run_check(out: Path, dry_run: bool, only: list[str] | None = None) -> dict[str, Any]:
    """Run the parts (all, or `only`) and write the report into `out`; returns the report."""
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "mode": "dry-run" if dry_run else "gpu", "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "gpu_wall_limit_s": GPU_WALL_LIMIT_S, "gpu_budget_total_s": gpu_budget_total(), "parts": {},
    }
    env: dict[str, Any] = {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, (out / LOG_NAME).open("w") as log:
        for part in PARTS:
            if only and part.name not in only and part.name != "env":  # env: the MFU reference, always
                continue
            print(f"[gpu-check] {part.name}: {part.title} ...", flush=True)
            outcome = run_part(part, dry_run, env, Path(tmp), log)
            report["parts"][part.name] = outcome
            if part.name == "env" and outcome["status"] in ("ok", "skipped"):
                env = outcome.get("result", {})
            detail = outcome.get("reason") or outcome.get("error") or ""
            print(f"[gpu-check] {part.name}: {outcome['status']} in {outcome['seconds']} s {detail}".rstrip(),
                  flush=True)
            report["wall_s"] = round(time.monotonic() - began, 1)
            _write(out, report)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    _write(out, report)
    return report


def _write(out: Path, report: dict[str, Any]) -> None:
    write_json(out / REPORT_JSON, report)
    (out / REPORT_TEXT).write_text(render_text(report))
