"""`scripts/gpu-check --dry-run`: every part of the prepared GPU check runs end to end on the CPU with tiny
sizes, so the one short GPU session spends no minute on a broken import, a renamed function or a typo."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks.gpu_check.plan import PARTS
from benchmarks.gpu_check.report import errors_in

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("gpu-check")
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--dry-run", "--out", str(out)], cwd=ROOT,
                          env={**env, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=1500)
    return proc, out


def test_every_part_runs_end_to_end_on_the_cpu(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "dry-run"
    assert list(report["parts"]) == [p.name for p in PARTS]
    for name, part in report["parts"].items():
        assert part["status"] == "ok", f"{name}: {part.get('reason') or part.get('error')}"
        assert part["result"], name
    assert errors_in(report["parts"]) == []
    text = (out / "report.txt").read_text()
    assert all(p.name in text for p in PARTS)
    assert (out / "gpu-check.log").stat().st_size > 0


def test_training_parts_report_throughput_mfu_and_the_plain_loop_ratio(
        dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    report = json.loads((dry_run[1] / "report.json").read_text())
    parts = report["parts"]
    assert parts["env"]["result"]["matmul_peak"]["flops"] > 0
    for name in ("pretrain_dense", "pretrain_moe"):
        result = parts[name]["result"]
        assert result["data_parallel"] == "fsdp", name  # FSDP2 in a world of one, as a one-GPU pod runs
        for variant in ("ours", "plain", "ours_ac", "ours_compile", "ours_ac_compile"):
            assert result[variant]["tokens_per_s"] > 0, (name, variant)
            assert result[variant]["mfu_measured"] > 0, (name, variant)
        assert math.isfinite(result["ours"]["loss_last"])
        assert result["ratio_ours_over_plain"] > 0
    assert parts["pretrain_moe"]["result"]["model"]["experts"] > 0
    for method in ("full", "lora", "qlora"):
        assert parts["sft"]["result"][method]["tokens_per_s"] > 0, method
    for variant in ("fp32", "bf16_autocast"):
        assert parts["rollout"]["result"][variant]["tokens"] == 4 * 8  # every sequence its full length


def test_serving_and_checkpoint_parts(dry_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    parts = json.loads((dry_run[1] / "report.json").read_text())["parts"]
    serve = parts["serve"]["result"]
    for streams in (1, 4):
        measured = serve[f"streams_{streams}"]
        for contender in ("server", "hf_generate"):
            assert measured[contender]["tokens_per_round"] == streams * 8, (streams, contender)
            assert measured[contender]["ttft_ms"] > 0
    checks = {k: v for k, v in parts["checkpoint"]["result"].items() if isinstance(v, dict) and "passed" in v}
    assert set(checks) == {"device_round_trip_weights", "device_round_trip_next_step", "cpu_resume", "back_on_device"}
    assert all(v["passed"] for v in checks.values()), checks


def test_without_a_gpu_every_part_is_skipped_with_the_reason(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--out", str(tmp_path)], cwd=ROOT,
                          env={**env, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    parts = json.loads((tmp_path / "report.json").read_text())["parts"]
    assert list(parts) == [p.name for p in PARTS]
    for name, part in parts.items():
        assert part["status"] == "skipped" and "no CUDA device" in part["reason"], (name, part)
    assert parts["env"]["result"]["packages"]["pydantic"]["version"]  # what the machine has is still reported


def test_an_unknown_part_is_refused_by_name(tmp_path: Path) -> None:
    proc = subprocess.run([str(ROOT / "scripts" / "gpu-check"), "--dry-run", "--only", "serve,nosuch", "--out",
                           str(tmp_path)], cwd=ROOT, env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "--only: no part named nosuch" in proc.stderr
    assert not (tmp_path / "report.json").exists()
