"""The GPU check's plan and wheel list: the parts fit the 8 minutes, and --prepare reads exact pins."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmarks.gpu_check.plan import GPU_WALL_LIMIT_S, PARTS, gpu_budget_total
from benchmarks.gpu_check.report import errors_in, readme_rows, render_text
from benchmarks.gpu_check.wheels import WHEEL_LIST, requirements


def test_the_parts_budgets_fit_the_gpu_wall_limit() -> None:
    assert gpu_budget_total() == sum(p.gpu_budget_s for p in PARTS) <= GPU_WALL_LIMIT_S == 480


def test_the_wheel_list_pins_each_package_once() -> None:
    pins = requirements(WHEEL_LIST)
    assert {"pydantic", "pydantic_core", "starlette", "uvicorn", "torchao"} <= set(pins)
    assert "torch" not in pins  # the GPU machine's own torch is used


def test_a_wheel_line_that_is_not_an_exact_pin_is_named(tmp_path: Path) -> None:
    listing = tmp_path / "wheels.txt"
    listing.write_text("# comment\npydantic==2.14.4\nstarlette>=1\n")
    with pytest.raises(ValueError, match=r"wheels.txt:3: 'starlette>=1' is not an exact pin"):
        requirements(listing)


def test_readme_rows_come_from_a_gpu_run_only_and_say_what_was_not_measured() -> None:
    parts = {p.name: {"status": "timeout", "result": {}, "seconds": 1.0, "budget_s": p.gpu_budget_s} for p in PARTS}
    parts["env"] = {"status": "ok", "result": {"device": {"name": "NVIDIA H200"}}, "seconds": 1.0, "budget_s": 30}
    report = {"mode": "gpu", "parts": parts}
    rows = readme_rows(report)
    assert len(rows) == 6 and all(r.startswith("| `scripts/gpu-check`") and "NVIDIA H200" in r for r in rows)
    assert "not measured" in rows[0]
    assert readme_rows({**report, "mode": "dry-run"}) == []


def test_errors_nested_in_parts_are_listed_and_shown() -> None:
    parts = {
        "serve": {"status": "ok", "seconds": 3.0, "budget_s": 70,
                  "result": {"streams_1": {"error": "RuntimeError: boom"}, "streams_16": {"skipped": "no time"}}},
        "checkpoint": {"status": "timeout", "error": "stopped at its budget of 50 s", "seconds": 55.0,
                       "budget_s": 50, "result": {}},
    }
    assert errors_in(parts) == ["serve.result.streams_1: RuntimeError: boom",
                                "checkpoint: stopped at its budget of 50 s"]
    text = render_text({"mode": "dry-run", "started": "now", "gpu_wall_limit_s": 480, "gpu_budget_total_s": 480,
                        "parts": parts})
    assert "Errors:" in text and "streams_1: RuntimeError: boom" in text and "streams_16: skipped=no time" in text
