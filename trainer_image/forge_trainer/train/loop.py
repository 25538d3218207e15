"""What the loops of every stage (pretrain, sft, rl) share: the run's set-up and the end of a step.

    return run_stage(config, runtime, lambda store, prefix: train(...))   # output, failure line, shutdown
    ...build the model and its StepEngine...
    with open_run(config, runtime, store, prefix, engine, config_path, checkpoint_extra) as run:
        while run.step < run.max_steps:                # run.step: where the run resumed
            ...the stage's batches, loss and optimizer step...
            run.after_step(step, tokens_seen, fields, records, evaluate=..., summary=...)
        ...final evaluation and export...

`open_run` resumes from the newest complete checkpoint, counts the restart and starts the progress
reporter; a WorkloadError leaving its block is reported in progress.json. `after_step` is the end
of a step every worker agreed on: it asks the run control for live max steps and SIGTERM, evaluates
and checkpoints when they are due, reports, and stops on SIGTERM once the checkpoint is written.
A loop that reads its step's values only now and then (pretrain) calls it at those steps alone and
asks `checkpoint_due` / `eval_due` whether a step must be one of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from forge_trainer.config import TrainConfig, TrainProgress
from forge_trainer.errors import ConfigError, WorkloadError
from forge_trainer.store import ObjectStore, StoreError, open_uri
from forge_trainer.train.checkpoint import Checkpoint, checkpoint_and_prune, resume_latest
from forge_trainer.train.control import Decision, RunControl, with_max_steps
from forge_trainer.train.progress import ProgressReporter, read_progress
from forge_trainer.train.runtime import Runtime, shutdown
from forge_trainer.train.step_engine import StepEngine

log = logging.getLogger(__name__)

R = TypeVar("R")


def open_output(config: TrainConfig) -> tuple[ObjectStore, str]:
    """The store and prefix the run writes under; an unusable `output` is a config error."""
    try:
        return open_uri(config.output, config.store)
    except StoreError as exc:
        raise ConfigError(f"output: {exc}") from exc


def record_error(store: ObjectStore, prefix: str, line: str) -> None:
    """Put the one-line reason into progress.json (unless the loop already did)."""
    progress = read_progress(store, prefix) or TrainProgress()
    if progress.error != line:
        reporter = ProgressReporter(store, prefix, True, progress.model_copy(update={"error": line, "done": False}))
        reporter.flush()


def run_stage(config: TrainConfig, runtime: Runtime, train: Callable[[ObjectStore, str], R]) -> R:
    """Run `train` on the run's output, then leave the worker group. A failure before the loop reports
    (a bad dataset, say) still puts its one-line reason into progress.json (rank 0)."""
    try:
        store, prefix = open_output(config)
        try:
            return train(store, prefix)
        except WorkloadError as exc:
            if runtime.is_main:
                record_error(store, prefix, str(exc).splitlines()[0])
            raise
    finally:
        shutdown(runtime)


@dataclass
class StageRun:
    """One start of a training run: where it resumed, its reporter and control, and what is due when."""

    config: TrainConfig
    """The run's config; `hyperparameters.maxSteps` follows the live value."""
    runtime: Runtime
    """This worker's place in the group."""
    store: ObjectStore
    """The store the run writes to."""
    prefix: str
    """The run's prefix in it (`output`)."""
    engine: StepEngine
    """The optimizer steps of the stage's (wrapped) model."""
    reporter: ProgressReporter
    """progress.json, the step log and /metrics (rank 0)."""
    control: RunControl
    """What the workers agree on while the run goes on: live max steps, SIGTERM."""
    step: int
    """The step the run resumed from (0 for a fresh run)."""
    tokens_seen: int
    """Training tokens consumed before `step`."""
    resumed: Checkpoint | None
    """The checkpoint the run resumed from."""
    checkpoint_extra: Callable[[int], dict[str, Any]]
    """The stage's own entries of a checkpoint's state at a step (its data position, say)."""

    def __enter__(self) -> StageRun:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if isinstance(exc, WorkloadError):
            self.reporter.update(force=True, error=str(exc).splitlines()[0])

    @property
    def max_steps(self) -> int:
        """The run's last step (as of the latest agreement)."""
        return self.config.hyperparameters.max_steps

    def checkpoint_due(self, step: int) -> bool:
        """Whether the checkpoint interval falls on `step`."""
        return step % self.config.checkpointing.interval == 0

    def eval_due(self, step: int) -> bool:
        """Whether the evaluation interval falls on `step` (the last step evaluates anyway)."""
        interval = self.config.hyperparameters.eval_interval
        return bool(interval) and step % interval == 0 and step < self.max_steps

    def after_step(self, step: int, tokens_seen: int, fields: dict[str, Any], records: Sequence[dict[str, Any]],
                   decision: Decision | None = None, evaluate: Callable[[int], float | None] | None = None, *,
                   summary: str) -> None:
        """The end of `step` (`tokens_seen` after it): follow the agreed max steps and SIGTERM (`decision`,
        else agreed now), evaluate when due (its loss joins `fields` and the last of `records`), report,
        checkpoint when due, and on SIGTERM stop with a WorkloadError once the checkpoint is written.
        `summary` completes the step's log line (its loss, say)."""
        decision = decision or self.control.agree_now()
        if decision.max_steps != self.max_steps:
            self.config = with_max_steps(self.config, decision.max_steps, step)
            self.engine.hp = self.config.hyperparameters
        fields["total_steps"] = self.max_steps
        if evaluate is not None and self.eval_due(step):
            fields["eval_loss"] = evaluate(step)
            if records:
                records[-1]["eval_loss"] = fields["eval_loss"]
        checkpoint_now = self.checkpoint_due(step) or decision.stop or step >= self.max_steps
        self.reporter.update(force=checkpoint_now, step_records=records, **fields)
        log.info("%s step %d/%d %s", self.config.stage.value, step, self.max_steps, summary)
        if checkpoint_now:
            self.checkpoint(step, tokens_seen)
        if decision.stop:
            raise WorkloadError(f"terminated by SIGTERM at step {step}; checkpoint written, the run resumes from it")

    def checkpoint(self, step: int, tokens_seen: int) -> None:
        """Save (collective) and prune the run's checkpoints at `step`."""
        hp = self.config.hyperparameters
        state = {"step": step, "tokens_seen": tokens_seen, "world_size": self.runtime.world_size,
                 "global_batch_size": hp.global_batch_size, "seed": hp.seed, **self.checkpoint_extra(step)}
        checkpoint_and_prune(self.store, self.prefix, step, self.engine.model, self.engine.optimizer, state,
                             self.runtime, self.config.checkpointing.keep, self.reporter)


def open_run(config: TrainConfig, runtime: Runtime, store: ObjectStore, prefix: str, engine: StepEngine,
             config_path: Path | None, checkpoint_extra: Callable[[int], dict[str, Any]]) -> StageRun:
    """Resume the engine's model and optimizer from the newest complete checkpoint, count a restart
    (a previous start that did not finish) and start the progress reporter; `config_path` is followed
    for live max steps."""
    hp = config.hyperparameters
    previous = read_progress(store, prefix) if runtime.is_main else None
    resumed, step, tokens_seen = resume_latest(store, prefix, runtime, engine.model, engine.optimizer)
    restarts = (previous.restarts + 1) if previous is not None and not previous.done else 0
    progress = TrainProgress(step=step, total_steps=max(hp.max_steps, step), tokens_seen=tokens_seen,
                             world_size=runtime.world_size, restarts=restarts,
                             checkpoints=previous.checkpoints if previous else [],
                             eval_loss=previous.eval_loss if previous else None)
    reporter = ProgressReporter(store, prefix, runtime.is_main, progress, config.metrics_port)
    reporter.flush()
    control = RunControl(runtime, hp.max_steps, config_path)
    return StageRun(config, runtime, store, prefix, engine, reporter, control, step, tokens_seen, resumed,
                    checkpoint_extra)
