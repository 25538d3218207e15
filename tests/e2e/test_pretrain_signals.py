"""A training worker told to stop (SIGTERM: pod eviction, preemption) writes a checkpoint at the
next step boundary and exits non-zero with one line; the checkpoint is complete."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from forge_trainer.config import TrainProgress
from forge_trainer.store import LocalStore
from forge_trainer.train.checkpoint import list_checkpoints
from tests.support.training import read_train_progress, start_long_pretrain, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sigterm_checkpoints_at_the_next_step_and_exits_with_one_line(tmp_path: Path) -> None:
    proc, _, out = start_long_pretrain(tmp_path)

    def progress() -> TrainProgress:
        return read_train_progress(out)

    try:
        wait_for(lambda: progress().step >= 3, 60, "training to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    line = err.strip().splitlines()[-1]
    assert line.startswith("forge-trainer train: terminated by SIGTERM at step ")
    stopped = int(line.split("at step ")[1].split(";")[0])
    assert [c.step for c in list_checkpoints(LocalStore(out), "")] == [stopped]
    final = progress()
    assert final.step == stopped and final.error and "SIGTERM" in final.error and not final.done
