"""A training worker told to stop (SIGTERM: pod eviction, preemption) writes a checkpoint at the
next step boundary and exits non-zero with one line; the checkpoint is complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forge_trainer.config import TrainConfig, TrainProgress
from forge_trainer.store import LocalStore
from forge_trainer.train.checkpoint import list_checkpoints
from tests.unit.train_fixtures import ELASTIC_ENV, local_dataset, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sigterm_checkpoints_at_the_next_step_and_exits_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = TrainConfig.model_validate({
        "stage": "pretrain", "model": {"size": "tiny"}, "dataset": local_dataset(tmp_path / "ds"),
        "output": str(out), "precision": "fp32", "metricsPort": 0,
        "hyperparameters": {"maxSteps": 100_000, "globalBatchSize": 8, "microBatchSize": 4,
                            "sequenceLength": 64, "evalInterval": 0},
        "checkpointing": {"interval": 1000, "keep": 2},
    })
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.to_wire()))
    # the console script: under `python -m forge_trainer.cli` the CLI module is imported twice and its
    # WorkloadError handler misses errors raised as forge_trainer.cli.WorkloadError (reported)
    forge_trainer = str(Path(sys.executable).parent / "forge-trainer")
    proc = subprocess.Popen([forge_trainer, "train", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ELASTIC_ENV})
    try:
        def progress() -> TrainProgress:
            try:
                return TrainProgress.model_validate_json((out / "progress.json").read_text())
            except (OSError, ValueError):
                return TrainProgress()

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
