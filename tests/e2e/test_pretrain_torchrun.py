"""Pretraining under torchrun, as the operator launches it: two gloo workers (FSDP2 or DDP) agree
with one; an elastic group (FSDP2) that loses a worker, then a whole node, or gains a node, re-forms
and finishes on the same loss trajectory as an uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from forge_trainer.config import TrainConfig, TrainProgress
from forge_trainer.store import LocalStore
from forge_trainer.train.parallel import DATA_PARALLEL_ENV
from forge_trainer.train.pretrain import run_pretrain
from forge_trainer.train.progress import read_step_log
from tests.support.ports import free_port
from tests.support.training import (
    ELASTIC_ENV,
    kill_tree,
    local_dataset,
    one_thread,
    start_torchrun,
    torchrun_command,
    wait_for,
    worker_pids,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures(one_thread.__name__)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return local_dataset(tmp_path_factory.mktemp("ds"))


def write_config(path: Path, dataset: str, output: Path, hyperparameters: dict[str, Any],
                 interval: int) -> TrainConfig:
    config = TrainConfig.model_validate({
        "stage": "pretrain", "model": {"size": "tiny"}, "dataset": dataset, "output": str(output),
        "precision": "fp32", "metricsPort": 0,
        "hyperparameters": {"globalBatchSize": 8, "microBatchSize": 4, "sequenceLength": 64, "warmupSteps": 4,
                            "learningRate": 3e-3, "evalInterval": 0, "evalBatches": 2, **hyperparameters},
        "checkpointing": {"interval": interval, "keep": 3},
    })
    path.write_text(yaml.safe_dump(config.to_wire()))
    return config


def read(output: Path) -> TrainProgress | None:
    try:
        return TrainProgress.model_validate_json((output / "progress.json").read_text())
    except (OSError, ValueError):
        return None


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_gloo_workers_agree_with_one(dataset: str, tmp_path: Path, strategy: str) -> None:
    config = write_config(tmp_path / "train.yaml", dataset, tmp_path / "two", {"maxSteps": 8}, interval=4)
    alone = run_pretrain(config.model_copy(update={"output": str(tmp_path / "one")}))
    done = subprocess.run(torchrun_command(tmp_path / "train.yaml", free_port(), nproc=2), timeout=120,
                          capture_output=True, text=True,
                          env={**os.environ, **ELASTIC_ENV, DATA_PARALLEL_ENV: strategy})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = read_step_log(LocalStore(tmp_path / "two"), "")
    assert sorted(log) == list(range(1, 9)) and {r["world_size"] for r in log.values()} == {2}
    assert sorted(alone.losses) == sorted(log)
    for step, loss in alone.losses.items():
        assert log[step]["loss"] == pytest.approx(loss, rel=1e-3, abs=1e-3), step
    progress = read(tmp_path / "two")
    assert progress is not None and progress.done and progress.world_size == 2
    assert json.loads((tmp_path / "two" / "model" / "config.json").read_text())["model_type"] == "llama"


def test_elastic_group_survives_a_killed_worker_and_a_lost_node(dataset: str, tmp_path: Path) -> None:
    steps = 60
    hp = {"maxSteps": steps, "globalBatchSize": 16, "microBatchSize": 8, "sequenceLength": 128}
    config = write_config(tmp_path / "train.yaml", dataset, tmp_path / "elastic", hp, interval=5)
    out = tmp_path / "elastic"
    port = free_port()
    def command(is_host: bool) -> list[str]:
        return torchrun_command(tmp_path / "train.yaml", port, nnodes="1:2", max_restarts=5, run_id="elastic",
                                is_host=is_host)

    # node A hosts the rendezvous store; if it died the job would need a restart by the operator
    host = start_torchrun(command(True), tmp_path / "host.log")
    other = start_torchrun(command(False), tmp_path / "other.log")
    try:
        def at(step: int, world: int) -> bool:
            p = read(out)
            return p is not None and p.step >= step and p.world_size == world

        wait_for(lambda: at(10, 2), 60, "two workers training")
        # a worker dies: its agent restarts it and the group of two re-forms from the last checkpoint
        victim = worker_pids(other.pid)
        assert victim, "no worker under node B"
        kill_tree(victim[0])
        wait_for(lambda: (read(out) or TrainProgress()).restarts >= 1 and at(0, 2), 60, "the group to re-form")
        mark = (read(out) or TrainProgress()).step
        wait_for(lambda: at(mark + 5, 2), 60, "training to go on with two workers")
        # node B is lost for good: node A goes on alone
        kill_tree(other.pid)
        wait_for(lambda: at(0, 1), 60, "the group to re-form with one worker")
        assert host.wait(timeout=120) == 0, (tmp_path / "host.log").read_text()[-3000:]
    finally:
        kill_tree(host.pid)
        kill_tree(other.pid)
    final = read(out)
    assert final is not None and final.done and final.step == steps and final.world_size == 1
    assert final.restarts >= 2
    log = read_step_log(LocalStore(out), "")
    assert sorted(log) == list(range(1, steps + 1))
    assert {r["world_size"] for r in log.values()} == {1, 2}
    # the same global batches in the same order: the loss trajectory of an uninterrupted run
    reference = run_pretrain(config.model_copy(update={"output": str(tmp_path / "reference")}))
    for step in range(1, steps + 1):
        assert log[step]["loss"] == pytest.approx(reference.losses[step], rel=2e-3, abs=2e-3), step


def test_a_node_that_joins_grows_the_group(dataset: str, tmp_path: Path) -> None:
    steps = 120
    hp = {"maxSteps": steps, "globalBatchSize": 16, "microBatchSize": 8, "sequenceLength": 128}
    config = write_config(tmp_path / "train.yaml", dataset, tmp_path / "grow", hp, interval=5)
    out = tmp_path / "grow"
    port = free_port()

    def command(is_host: bool) -> list[str]:
        return torchrun_command(tmp_path / "train.yaml", port, nnodes="1:2", max_restarts=5, run_id="grow",
                                is_host=is_host)

    host = start_torchrun(command(True), tmp_path / "host.log")
    joiner = None
    try:
        wait_for(lambda: (read(out) or TrainProgress()).step >= 5, 60, "one worker training")
        joiner = start_torchrun(command(False), tmp_path / "joiner.log")
        wait_for(lambda: (read(out) or TrainProgress()).world_size == 2, 60, "the group to grow to two")
        assert host.wait(timeout=60) == 0, (tmp_path / "host.log").read_text()[-3000:]
        assert joiner.wait(timeout=30) == 0, (tmp_path / "joiner.log").read_text()[-3000:]
    finally:
        kill_tree(host.pid)
        if joiner is not None:
            kill_tree(joiner.pid)
    final = read(out)
    assert final is not None and final.done and final.world_size == 2 and final.restarts >= 1
    log = read_step_log(LocalStore(out), "")
    assert sorted(log) == list(range(1, steps + 1)) and {r["world_size"] for r in log.values()} == {1, 2}
    reference = run_pretrain(config.model_copy(update={"output": str(tmp_path / "reference")}))
    for step in range(1, steps + 1):
        assert log[step]["loss"] == pytest.approx(reference.losses[step], rel=2e-3, abs=2e-3), step
