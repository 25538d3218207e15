"""The step log a run leaves behind: segmented so no write grows with the run, and after a restart
each step keeps the record of its latest training."""

from __future__ import annotations

from pathlib import Path

import pytest

from forge_trainer.config import TrainProgress
from forge_trainer.store import LocalStore
from forge_trainer.train.progress import ProgressReporter, read_progress, read_step_log


def test_step_log_is_segmented_and_a_restart_overrides_retrained_steps(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = ProgressReporter(store, "run", True, TrainProgress(total_steps=40), min_interval=0, segment_steps=10)
    for step in range(1, 36):
        first.update(step_record={"step": step, "loss": 1.0, "time": step}, step=step)
    first.flush()
    # restart from the checkpoint at step 8: steps 9.. are trained again, later
    second = ProgressReporter(store, "run", True, TrainProgress(step=8, total_steps=40, restarts=1),
                              min_interval=0, segment_steps=10)
    for step in range(9, 41):
        second.update(step_record={"step": step, "loss": 2.0, "time": 100 + step}, step=step)
    second.update(force=True, done=True)
    segments = sorted(p.name for p in (tmp_path / "run" / "logs").iterdir())
    assert len(segments) == 8 and all(len((tmp_path / "run" / "logs" / s).read_text().splitlines()) <= 10
                                       for s in segments)
    log = read_step_log(store, "run")
    assert sorted(log) == list(range(1, 41))
    assert {log[s]["loss"] for s in range(1, 9)} == {1.0} and {log[s]["loss"] for s in range(9, 41)} == {2.0}
    progress = read_progress(store, "run")
    assert progress is not None and progress.step == 40 and progress.restarts == 1 and progress.done


def test_a_failed_background_write_is_raised_in_the_training_thread(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    reporter = ProgressReporter(LocalStore(blocker), "run", True, TrainProgress(), min_interval=0)
    reporter.update(step_record={"step": 1, "time": 1.0}, step=1)  # written in the background: fails there
    with pytest.raises(OSError):
        reporter.update(force=True, step=2)
