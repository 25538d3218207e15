"""A running pretraining run follows `hyperparameters.maxSteps` of the config file it was started with
(the operator rewrites the mounted ConfigMap when a user edits spec.hyperparameters.maxSteps): told to
stop later than where it is, it finishes at the new last step; told to stop at or before where it is,
it finishes where it is. Either way it ends as a normal completion: final checkpoint, export, done."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from forge_trainer.config import TrainProgress
from forge_trainer.model.hf_export import load_hf
from forge_trainer.store import LocalStore
from forge_trainer.train.checkpoint import list_checkpoints
from forge_trainer.train.control import POLL_SECONDS_ENV
from forge_trainer.train.progress import read_step_log
from tests.support.training import read_train_progress, start_long_pretrain, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.parametrize("change", ["later", "already_past"])
def test_a_running_run_finishes_at_the_max_steps_written_to_its_config(tmp_path: Path, change: str) -> None:
    proc, path, out = start_long_pretrain(tmp_path, {POLL_SECONDS_ENV: "0.2"})

    def progress() -> TrainProgress:
        return read_train_progress(out)

    try:
        wait_for(lambda: progress().step >= 3, 120, "training to start")
        reached = progress().step
        new_max = reached + 150 if change == "later" else 2
        raw = yaml.safe_load(path.read_text())
        raw["hyperparameters"]["maxSteps"] = new_max
        # as the kubelet does: the new file replaces the old one atomically
        tmp = path.with_suffix(".new")
        tmp.write_text(yaml.safe_dump(raw))
        tmp.replace(path)
        _, err = proc.communicate(timeout=180)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    final = progress()
    assert final.done and final.error is None
    if change == "later":
        assert final.step == final.total_steps == new_max
    else:
        assert reached <= final.step < 100_000 and final.total_steps == final.step
    steps = sorted(read_step_log(LocalStore(out), ""))
    assert steps == list(range(1, final.step + 1))
    assert [c.step for c in list_checkpoints(LocalStore(out), "")] == [final.step]
    assert [c.step for c in final.checkpoints] == [final.step]
    _, args = load_hf(out / "model")
    assert args.vocab_size == 512 and final.final_model_uri == (out / "model").as_uri()
