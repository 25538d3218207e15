"""What a training loop re-decides while it runs, identically on every worker: whether to stop (a
SIGTERM reached some worker) and the run's last step. The last step follows the config file the run
was started with: the operator rewrites the mounted ConfigMap when a user edits
`spec.hyperparameters.maxSteps` of a running run (the kubelet refreshes the file in the pod), and rank 0
re-reads `hyperparameters.maxSteps` from it, at most every `poll_seconds`. Nothing else in the file is
taken from a re-read. Workers agree on rank 0's values by summing them over the group (each worker
contributes its SIGTERM flag and its step time; only rank 0 its max steps), so a file that pods on
different nodes see change at different times cannot make them disagree.

    control = RunControl(runtime, hp.max_steps, config_path)
    extra = control.local_values()            # sent along with a step's loss all-reduce (or agree_now())
    decision = control.agree(summed_extra)    # .stop, .max_steps, .step_seconds
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from forge_trainer.config import TrainConfig
from forge_trainer.config_file import load_config
from forge_trainer.errors import WorkloadError
from forge_trainer.train.runtime import Runtime, TerminateFlag, all_reduce_sum

log = logging.getLogger(__name__)

MAX_STEPS_POLL_SECONDS = 10.0
"""How often rank 0 re-reads max steps from the config file (at most)."""
POLL_SECONDS_ENV = "FORGE_MAX_STEPS_POLL_SECONDS"
"""Overrides MAX_STEPS_POLL_SECONDS (tests)."""


class MaxStepsWatcher:
    """`hyperparameters.maxSteps` of a config file, re-read at most every `poll_seconds`; an unreadable
    or invalid file keeps the last good value (with one warning per distinct problem)."""

    def __init__(self, path: Path | None, current: int, poll_seconds: float | None = None) -> None:
        if poll_seconds is None:
            poll_seconds = float(os.environ.get(POLL_SECONDS_ENV, MAX_STEPS_POLL_SECONDS))
        self.path, self.value, self.poll_seconds = path, current, poll_seconds
        self._next = time.monotonic() + poll_seconds
        self._problem: str | None = None

    def poll(self, now: float | None = None) -> int:
        """The newest max steps (reads the file when `poll_seconds` have passed since the last read)."""
        if self.path is None:
            return self.value
        now = time.monotonic() if now is None else now
        if now >= self._next:
            self._next = now + self.poll_seconds
            self.value = self.read()
        return self.value

    def read(self) -> int:
        """Read the file now."""
        assert self.path is not None
        try:
            value = load_config(self.path, TrainConfig).hyperparameters.max_steps
        except WorkloadError as exc:
            problem = str(exc).splitlines()[0]
            if problem != self._problem:
                log.warning("keeping max steps %d: %s", self.value, problem)
                self._problem = problem
            return self.value
        self._problem = None
        if value != self.value:
            log.info("%s: max steps changed from %d to %d", self.path, self.value, value)
        return value


@dataclass(frozen=True)
class Decision:
    """What every worker agreed on."""

    stop: bool
    """Some worker received SIGTERM."""
    max_steps: int
    """The run's last step (rank 0's newest reading of the config file)."""
    step_seconds: float
    """Mean over the workers of the step time each reported."""


class RunControl:
    """SIGTERM flag and live max steps of one training loop (see the module docstring)."""

    def __init__(self, runtime: Runtime, max_steps: int, config_path: Path | None,
                 poll_seconds: float | None = None) -> None:
        self.runtime = runtime
        self.terminate = TerminateFlag()
        self.watcher = MaxStepsWatcher(config_path if runtime.is_main else None, max_steps, poll_seconds)
        self.max_steps = max_steps

    def local_values(self, step_seconds: float = 0.0) -> list[float]:
        """This worker's contribution: [SIGTERM seen, max steps (rank 0 only, else 0), step seconds]."""
        mine = float(self.watcher.poll()) if self.runtime.is_main else 0.0
        return [float(self.terminate.requested), mine, step_seconds]

    def local_tensor(self, step_seconds: float = 0.0) -> torch.Tensor:
        """`local_values` as a float64 tensor on the worker's device."""
        return torch.tensor(self.local_values(step_seconds), dtype=torch.float64, device=self.runtime.device)

    def agree(self, summed: list[float]) -> Decision:
        """The decision from the group sum of `local_values` (or this worker's own values when alone)."""
        max_steps = round(summed[1])
        if max_steps >= 1:
            self.max_steps = max_steps
        return Decision(stop=summed[0] > 0, max_steps=self.max_steps,
                        step_seconds=summed[2] / self.runtime.world_size)

    def agree_now(self, step_seconds: float = 0.0) -> Decision:
        """Agree right away (one small all-reduce in a worker group; none when alone)."""
        if not self.runtime.distributed:
            return self.agree(self.local_values(step_seconds))
        return self.agree(all_reduce_sum(self.runtime, self.local_tensor(step_seconds)).tolist())


def with_max_steps(config: TrainConfig, new: int, step: int) -> TrainConfig:
    """`config` with the run's new max steps, never below `step` (the step reached: a run told to stop
    earlier finishes where it is). The learning-rate schedule follows it, as after a restart with the
    new config."""
    effective = max(new, step)
    log.info("max steps changed to %d%s", new, f"; finishing at step {step}" if new <= step else "")
    hp = config.hyperparameters.model_copy(update={"max_steps": effective})
    return config.model_copy(update={"hyperparameters": hp})
