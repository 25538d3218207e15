"""A training run's rendezvous as its pods run it: `forge-trainer rendezvous-store` as its own process and
torchrun agents started with the very command line and rendezvous environment the operator renders into
the Job (clients of the store, `is_host=false`). Losing the agent of rank 0 — the one that hosted the
store before — leaves the other training on; an agent waiting for peers leaves at once on SIGTERM, even
as process 1 of its PID namespace (a container's init, where a signal without a handler is ignored)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from torchx.specs import macros

from forge_operator.api.training import TrainingResources
from forge_operator.plan.training import RDZV_HOST_ENV, RDZV_IS_HOST_ENV, RDZV_PORT_ENV, plan_app_def
from forge_operator.render.training import LOCAL_ADDR_ENV
from forge_trainer.config import TrainConfig, TrainProgress
from forge_trainer.store import LocalStore
from forge_trainer.train.progress import read_step_log
from tests.support.ports import free_port
from tests.support.training import ELASTIC_ENV, kill_tree, local_dataset, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent
RUN_ID = "uid-rdzv"


def pod_command(config: Path, min_nodes: int, max_nodes: int) -> list[str]:
    """The trainer container's command as render/training.py writes it into the Job."""
    resources = TrainingResources.model_validate({"minNodes": min_nodes, "maxNodes": max_nodes, "gpusPerNode": 0})
    app = plan_app_def("rdzv-train", "local", resources, max_restarts=3, config_path=str(config))
    role = macros.Values(img_root="", app_id=RUN_ID, replica_id="0", rank0_env=RDZV_HOST_ENV).apply(app.roles[0])
    return [role.entrypoint, *role.args]


def pod_env(port: int) -> dict[str, str]:
    """A training pod's rendezvous environment, the store's Service being 127.0.0.1:`port` here."""
    return {**os.environ, **ELASTIC_ENV, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            RDZV_HOST_ENV: "127.0.0.1", RDZV_PORT_ENV: str(port), RDZV_IS_HOST_ENV: "false",
            LOCAL_ADDR_ENV: "127.0.0.1"}


def start_store(port: int, log: Path) -> subprocess.Popen[bytes]:
    """`forge-trainer rendezvous-store`, as the store pod runs it; returns once it accepts clients."""
    proc = subprocess.Popen([str(BIN / "forge-trainer"), "rendezvous-store", "--port", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    wait_for(lambda: proc.poll() is not None or "listening" in log.read_text(), 60, "the store to listen")
    assert proc.poll() is None, log.read_text()
    return proc


def write_config(tmp_path: Path, max_steps: int, interval: int) -> Path:
    config = TrainConfig.model_validate({
        "stage": "pretrain", "model": {"size": "tiny"}, "dataset": local_dataset(tmp_path / "ds"),
        "output": str(tmp_path / "out"), "precision": "fp32", "metricsPort": 0,
        "hyperparameters": {"maxSteps": max_steps, "globalBatchSize": 8, "microBatchSize": 4, "sequenceLength": 64,
                            "warmupSteps": 4, "learningRate": 3e-3, "evalInterval": 0},
        "checkpointing": {"interval": interval, "keep": 3},
    })
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.to_wire()))
    return path


def progress(out: Path) -> TrainProgress:
    try:
        return TrainProgress.model_validate_json((out / "progress.json").read_text())
    except (OSError, ValueError):
        return TrainProgress()


def rank_of_workers(agent: subprocess.Popen[Any]) -> set[str]:
    """The RANK of the training workers under an agent."""
    ranks: set[str] = set()
    try:
        children = psutil.Process(agent.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return ranks
    for child in children:
        try:
            if "forge_trainer.cli" in " ".join(child.cmdline()):
                ranks.add(child.environ().get("RANK", "?"))
        except psutil.Error:
            continue
    return ranks


def test_losing_the_rank0_agent_leaves_the_other_training_with_the_store_intact(tmp_path: Path) -> None:
    steps = 40
    config = write_config(tmp_path, steps, interval=4)
    out = tmp_path / "out"
    port = free_port()
    store = start_store(port, tmp_path / "store.log")
    agents = [subprocess.Popen(pod_command(config, 1, 2), env=pod_env(port), start_new_session=True,
                               stdout=(tmp_path / f"agent{i}.log").open("wb"), stderr=subprocess.STDOUT)
              for i in range(2)]
    try:
        wait_for(lambda: progress(out).world_size == 2 and progress(out).step >= 6, 180, "two agents training")
        (rank0,) = [a for a in agents if "0" in rank_of_workers(a)]
        (other,) = [a for a in agents if a is not rank0]
        lost_at, step_at_loss = time.monotonic(), progress(out).step
        kill_tree(rank0.pid)  # the pod of rank 0 is gone: before, it hosted the rendezvous store
        wait_for(lambda: progress(out).world_size == 1 and progress(out).step > step_at_loss, 180,
                 "the other agent to train on alone")
        resumed = time.monotonic() - lost_at
        assert other.wait(timeout=300) == 0, (tmp_path / f"agent{agents.index(other)}.log").read_text()[-3000:]
        assert store.poll() is None, "the store outlives any agent"
    finally:
        for agent in agents:
            kill_tree(agent.pid)
        store.terminate()
    print(f"training resumed {resumed:.1f} s after the rank-0 agent was lost (step {step_at_loss})")
    final = progress(out)
    assert final.done and final.step == steps and final.world_size == 1 and final.restarts >= 1
    log = read_step_log(LocalStore(out), "")
    assert sorted(log) == list(range(1, steps + 1)) and {r["world_size"] for r in log.values()} == {1, 2}
    assert store.wait(timeout=30) == 0
    assert "stopped (SIGTERM)" in (tmp_path / "store.log").read_text()


def _waiting_in_rendezvous(port: int) -> bool:
    """Whether an agent has written the run's rendezvous state into the store (it then waits for peers)."""
    from torch.distributed import TCPStore

    client = TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=5))
    return bool(client.check([f"torch.rendezvous.{RUN_ID}"]))


def _pid_namespace_init_available() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    done = subprocess.run([unshare, "--user", "--pid", "--fork", "--map-root-user", "true"], capture_output=True)
    return done.returncode == 0


@pytest.mark.skipif(not _pid_namespace_init_available(),
                    reason="needs `unshare --user --pid` (util-linux, unprivileged user namespaces) to run "
                           "the agent as process 1 of a PID namespace, as in a container")
def test_an_agent_waiting_for_peers_leaves_at_once_on_sigterm_as_a_containers_init(tmp_path: Path) -> None:
    config = write_config(tmp_path, 10, interval=5)
    port = free_port()
    store = start_store(port, tmp_path / "store.log")
    log = tmp_path / "agent.log"
    # bash -c runs its one command with exec: torchrun's agent is the namespace's process 1, as in a pod
    unshare = subprocess.Popen([shutil.which("unshare") or "unshare", "--user", "--pid", "--fork", "--map-root-user",
                                *pod_command(config, 2, 2)], env=pod_env(port), start_new_session=True,
                               stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: unshare.poll() is not None or _waiting_in_rendezvous(port), 120,
                 "the agent to wait in the rendezvous", interval=0.5)
        assert unshare.poll() is None, log.read_text()[-3000:]
        (init,) = psutil.Process(unshare.pid).children()
        assert "torchrun" in " ".join(init.cmdline())
        sent = time.monotonic()
        init.send_signal(signal.SIGTERM)
        # without a handler of its own the agent ignores SIGTERM here, until join_timeout (600 s) ends
        code = unshare.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        kill_tree(unshare.pid)
        store.terminate()
    print(f"agent waiting in the rendezvous exited {took:.2f} s after SIGTERM")
    assert code == 128 + signal.SIGTERM, log.read_text()[-3000:]
    assert log.read_text().strip().splitlines()[-1] == "forge-trainer torchrun: terminated by SIGTERM"
