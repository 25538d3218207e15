"""Live max steps: the training loops re-read `hyperparameters.maxSteps` (only that) from the config file
they were started with, and finish as on a normal completion at the new last step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from forge_trainer.config import SftMethod, TrainConfig
from forge_trainer.store import LocalStore
from forge_trainer.train.checkpoint import list_checkpoints
from forge_trainer.train.control import POLL_SECONDS_ENV, MaxStepsWatcher
from forge_trainer.train.pretrain import run_pretrain
from forge_trainer.train.rl import run_rl
from forge_trainer.train.sft import run_sft
from forge_trainer.train.verifiers import CUSTOM_VERIFIER_ENV
from tests.support.posttrain import FLAKY_VERIFIER, rl_config, sft_config
from tests.support.training import local_dataset, one_thread, pretrain_config

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def write_config(path: Path, config: TrainConfig, max_steps: int) -> Path:
    raw = config.to_wire()
    raw["hyperparameters"]["maxSteps"] = max_steps
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_watcher_reads_max_steps_at_most_every_poll_and_keeps_the_last_good_value(tmp_path: Path) -> None:
    config = pretrain_config("file:///nowhere/manifest.json", tmp_path / "out")
    path = write_config(tmp_path / "train.yaml", config, 30)
    watcher = MaxStepsWatcher(path, 20, poll_seconds=10)
    assert watcher.read() == 30
    assert watcher.poll(now=0.0) == 20  # not yet time to look
    write_config(path, config, 40)
    assert watcher.poll(now=1e9) == 40
    path.write_text("hyperparameters: {maxSteps: 0}\n")  # invalid: kept
    assert watcher.poll(now=2e9) == 40
    path.unlink()  # unreadable: kept
    assert watcher.poll(now=3e9) == 40
    assert MaxStepsWatcher(None, 7).poll(now=1e9) == 7


def test_pretrain_finishes_at_the_max_steps_of_its_config_file(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLL_SECONDS_ENV, "0")
    out = tmp_path / "run"
    config = pretrain_config(local_dataset(tmp_path / "ds"), out, hyperparameters={"maxSteps": 40, "evalInterval": 0},
                             checkpointing={"interval": 100, "keep": 2})
    result = run_pretrain(config, config_path=write_config(tmp_path / "train.yaml", config, 6))
    assert sorted(result.losses) == [1, 2, 3, 4, 5, 6]
    progress = result.progress
    assert progress.done and (progress.step, progress.total_steps) == (6, 6) and progress.final_model_uri
    assert [c.step for c in list_checkpoints(LocalStore(out), "")] == [6]


@pytest.mark.slow
def test_sft_finishes_at_the_max_steps_of_its_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLL_SECONDS_ENV, "0")
    config = sft_config(tmp_path, SftMethod.FULL, steps=20, lr=1e-3)
    result = run_sft(config, config_path=write_config(tmp_path / "train.yaml", config, 3))
    assert sorted(result.losses) == [1, 2, 3]
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["done"] and progress["step"] == progress["totalSteps"] == 3 and progress["finalModelUri"]
    assert [c.step for c in list_checkpoints(LocalStore(tmp_path / "out"), "")] == [3]


@pytest.mark.slow
def test_rl_finishes_at_the_max_steps_of_its_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(POLL_SECONDS_ENV, "0")
    source = tmp_path / "verifier.py"
    source.write_text(FLAKY_VERIFIER)
    monkeypatch.setenv(CUSTOM_VERIFIER_ENV, str(source))
    config = rl_config(tmp_path, steps=10)
    result = run_rl(config, config_path=write_config(tmp_path / "train.yaml", config, 2))
    assert sorted(result.rewards) == [1, 2]
    assert result.progress.done and (result.progress.step, result.progress.total_steps) == (2, 2)
