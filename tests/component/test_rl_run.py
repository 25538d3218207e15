"""The rl workload with a custom verifier that crashes on some completions: training goes on, the
crashes score 0 and are counted; a resumed run repeats exactly the steps an uninterrupted one took."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forge_trainer.errors import ConfigError
from forge_trainer.train.rl import run_rl
from forge_trainer.train.verifiers import CUSTOM_VERIFIER_ENV
from tests.support.posttrain import (
    FLAKY_VERIFIER,
    one_torch_thread,
    rl_config,
)

assert one_torch_thread  # imported for its autouse fixture

@pytest.mark.slow
def test_a_crashing_custom_verifier_is_counted_and_training_finishes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "verifier.py"
    source.write_text(FLAKY_VERIFIER)
    monkeypatch.setenv(CUSTOM_VERIFIER_ENV, str(source))
    config = rl_config(tmp_path, steps=4)
    first = run_rl(config)
    assert first.progress.done and first.progress.step == 4
    steps = [json.loads(line) for line in (tmp_path / "out" / "logs" / "steps-00000000.jsonl").read_text().splitlines()]
    errors = sum(s["verifier_errors"] for s in steps)
    assert errors > 0  # random completions have odd lengths about half of the time
    assert first.eval_metrics["train_verifier_errors"] >= errors
    assert all(0.0 <= s["mean_reward"] <= 1.0 for s in steps)

    # the worker died after step 2's checkpoint; the resumed run samples and scores the same completions
    for step in (4,):
        (tmp_path / "out" / "checkpoints" / f"step-{step:08d}" / "checkpoint.json").unlink()
    resumed = run_rl(config)
    assert sorted(resumed.rewards) == [3, 4]
    for step in (3, 4):
        assert resumed.rewards[step] == pytest.approx(first.rewards[step])
    again = [json.loads(line) for line in (tmp_path / "out" / "logs" / "steps-00000002.jsonl").read_text().splitlines()]
    assert [s["step"] for s in again] == [3, 4]
    for before, after in zip(steps[2:], again, strict=True):
        assert after["samples"] == before["samples"]
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-4, abs=1e-6)


def test_rl_without_a_verifier_is_a_config_error(tmp_path: Path) -> None:
    config = rl_config(tmp_path, steps=1)
    config = config.model_copy(update={"rl": config.rl.model_copy(update={"reward": None})})
    with pytest.raises(ConfigError, match=r"rl\.reward"):
        run_rl(config)
