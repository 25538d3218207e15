"""What a user reads about an rl run: eval.json's Wilson interval and SFT -> RL change, `forge describe`'s
initial and final evaluation side by side, and `forge run`'s reward curve."""

from __future__ import annotations

import pytest

from forge_operator.local.display import rl_summary, sparkline
from forge_operator.local.listing import render_describe
from forge_trainer.train.evaluate import metric_change, rate_metrics, wilson_interval


def test_wilson_interval_matches_the_textbook_values() -> None:
    # 12 of 24 (statsmodels proportion_confint(12, 24, method="wilson"): 0.3142, 0.6858)
    assert wilson_interval(12, 24) == pytest.approx((0.3142, 0.6858), abs=1e-4)
    # 24 of 24: the interval still admits failures, and stays inside [0, 1]
    low, high = wilson_interval(24, 24)
    assert low == pytest.approx(0.8620, abs=1e-4) and high == pytest.approx(1.0)  # (1 + z²/48 - z sqrt(z²/2304)) / (1 + z²/24)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_rate_metrics_name_the_verifier_and_count_its_tasks() -> None:
    metrics = rate_metrics([True, True, False, True], "/exact_match")
    assert metrics["pass_rate/exact_match"] == 0.75 and metrics["tasks/exact_match"] == 4
    assert metrics["pass_rate_low/exact_match"] < 0.75 < metrics["pass_rate_high/exact_match"]


def test_change_is_final_minus_initial_for_rates_and_losses_only() -> None:
    initial = {"pass_rate": 0.25, "pass_rate/exact_match": 0.25, "tasks": 24.0, "mean_reward": 0.25}
    final = {"pass_rate": 0.75, "pass_rate/exact_match": 0.75, "tasks": 24.0, "mean_reward": 0.75,
             "train_verifier_errors": 0.0}
    assert metric_change(initial, final) == {"mean_reward": 0.5, "pass_rate": 0.5, "pass_rate/exact_match": 0.5}


def test_sparkline_spans_zero_to_one_and_averages_into_columns() -> None:
    assert sparkline([0.0, 1.0]) == "▁█"
    assert sparkline([0.0] * 40 + [1.0] * 40, width=4) == "▁▁██"
    assert len(sparkline([0.5] * 200)) == 40 and sparkline([]) == ""


def _solver(phase: str = "Succeeded") -> dict[str, object]:
    return {"kind": "ForgeTrainingRun", "metadata": {"name": "solver", "namespace": "default"},
            "status": {"phase": phase, "meanReward": 0.8,
                       "initialEvalMetrics": {"pass_rate": 0.375, "tasks": 24.0},
                       "evalMetrics": {"pass_rate": 0.875, "pass_rate_low": 0.69, "pass_rate_high": 0.96,
                                       "tasks": 24.0}}}


def test_a_finished_rl_run_shows_its_curve_and_the_held_out_change() -> None:
    steps = [{"step": i + 1, "mean_reward": r, "success_rate": r / 2} for i, r in enumerate([0.25, 0.5, 0.75, 1.0])]
    lines = rl_summary(_solver(), steps)
    assert lines[0] == "  reward (sampled)    ▃▅▆█  0.25 -> 1.00 over 4 steps"
    assert lines[1] == "  pass rate (sampled) ▂▃▄▅  0.12 -> 0.50 over 4 steps"
    assert lines[2] == "  pass rate (greedy, 24 eval tasks): 0.38 before -> 0.88 after (+0.50, 95% CI 0.69-0.96)"
    same = [{**s, "success_rate": s["mean_reward"]} for s in steps]  # a 0/1 verifier: one curve, not two
    assert [line.split()[0] for line in rl_summary(_solver(), same)] == ["reward", "pass"]
    assert rl_summary(_solver("Running"), steps) == []


def test_describe_puts_the_initial_and_final_evaluation_side_by_side() -> None:
    text = render_describe(_solver())
    assert "METRIC" in text and "INITIAL" in text and "FINAL" in text and "CHANGE" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("pass_rate "))
    assert row.split() == ["pass_rate", "0.375", "0.875", "+0.5"]
