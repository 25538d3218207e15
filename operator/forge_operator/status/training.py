"""Derive a ForgeTrainingRun's phase and conditions from what was observed, and decide whether the
job must be recreated (failed or stalled, with restarts left). One readable state machine."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from forge_operator.api.common import ConditionStatus
from forge_operator.api.training import ForgeTrainingRunStatus, Lineage, RunPhase, RunReason
from forge_operator.status.conditions import INVALID_SPEC, READY, set_condition
from forge_operator.status.job import JobObservation
from forge_trainer.config import TrainProgress

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
DATASET_READY = "DatasetReady"
BASE_MODEL_READY = "BaseModelReady"
STALLED = "Stalled"
RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


class RunAction(StrEnum):
    """What the handler must do after deriving the status."""

    NONE = "none"
    RESTART = "restart"
    """Delete the current job; the next reconcile creates attempt `restarts`."""


@dataclass(frozen=True)
class RunObservation:
    """Everything one reconcile saw about a training run."""

    generation: int
    spec_error: str | None = None
    waiting_condition: str | None = None
    waiting_for: str | None = None
    suspended: bool = False
    job_name: str | None = None
    output_uri: str | None = None
    job: JobObservation | None = None
    progress: TrainProgress | None = None
    max_restarts: int = 3
    stall_timeout_seconds: int = 1800
    lineage: Lineage | None = None
    resolved: list[str] = field(default_factory=list)


def _ts(value: str | None) -> datetime | None:
    return datetime.strptime(value, RFC3339).replace(tzinfo=UTC) if value else None


def derive_run_status(prev: ForgeTrainingRunStatus, obs: RunObservation,
                      now: datetime) -> tuple[ForgeTrainingRunStatus, RunAction]:
    """The status a run should have after this observation, and the action to take."""
    gen = obs.generation
    stamp = now.strftime(RFC3339)
    status = prev.model_copy(deep=True)
    status.observed_generation = gen
    conds = set_condition(status.conditions, INVALID_SPEC, T if obs.spec_error else F,
                          RunReason.INVALID_SPEC.value if obs.spec_error else "Valid", obs.spec_error or "", gen, stamp)

    def cond(type_: str, st: ConditionStatus, reason: RunReason | str, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, type_, st, str(reason), message, gen, stamp)

    def ready(st: ConditionStatus, reason: RunReason, message: str) -> None:
        cond(READY, st, reason, message)
        status.message = message

    def finish() -> ForgeTrainingRunStatus:
        status.conditions = conds
        return status

    if obs.spec_error:
        status.phase = RunPhase.FAILED
        ready(F, RunReason.INVALID_SPEC, obs.spec_error)
        return finish(), RunAction.NONE
    for resolved in obs.resolved:
        cond(resolved, T, "Resolved", "")
    if obs.waiting_for and obs.waiting_condition:
        status.phase = RunPhase.PENDING
        cond(obs.waiting_condition, F, RunReason.WAITING, obs.waiting_for)
        ready(F, RunReason.WAITING, obs.waiting_for)
        return finish(), RunAction.NONE
    status.lineage = obs.lineage or status.lineage
    status.output_uri = obs.output_uri or status.output_uri
    status.job_name = obs.job_name or status.job_name
    status.restarts = status.restarts or 0
    _mirror_progress(status, obs.progress, now)

    job = obs.job
    if obs.suspended:
        status.phase = RunPhase.SUSPENDED
        ready(F, RunReason.SUSPENDED, "suspended (spec.suspend or waiting for queue admission)")
        return finish(), RunAction.NONE
    if job is None:
        status.phase = RunPhase.PENDING
        ready(F, RunReason.JOB_CREATED, f"creating training job {obs.job_name}")
        return finish(), RunAction.NONE
    status.started_at = status.started_at or stamp
    progress = obs.progress
    if job.complete and progress is not None and progress.done:
        status.phase = RunPhase.SUCCEEDED
        status.final_model_uri = progress.final_model_uri
        status.final_model_digest = progress.final_model_digest
        status.eval_metrics = dict(progress.eval_metrics) or status.eval_metrics
        status.completed_at = status.completed_at or stamp
        cond(STALLED, F, "Progressing", "")
        ready(T, RunReason.TRAINED, f"trained {progress.step} steps; final model {progress.final_model_uri}")
        return finish(), RunAction.NONE

    failure = None
    if job.failed_final or job.complete:
        why = (progress.error if progress and progress.error else None) or job.message or "job ended without a model"
        failure = (RunReason.JOB_FAILED, f"training job {obs.job_name} failed: {why}")
    else:
        last = _ts(status.last_progress_time)
        if last is not None and now - last > timedelta(seconds=obs.stall_timeout_seconds):
            failure = (RunReason.STALLED, f"step {status.step or 0} has not advanced for "
                                          f"{int((now - last).total_seconds())}s (stallTimeoutSeconds "
                                          f"{obs.stall_timeout_seconds})")
            cond(STALLED, T, RunReason.STALLED, failure[1])
        else:
            cond(STALLED, F, "Progressing", "")
    if failure is not None:
        reason, message = failure
        if status.restarts < obs.max_restarts:
            status.restarts += 1
            status.phase = RunPhase.RUNNING
            status.last_progress_time = stamp  # the new attempt gets a full stall window
            ready(F, RunReason.JOB_RESTARTED,
                  f"{message}; recreating it (restart {status.restarts} of {obs.max_restarts}), resuming from "
                  "the latest checkpoint")
            return finish(), RunAction.RESTART
        status.phase = RunPhase.FAILED
        status.completed_at = status.completed_at or stamp
        ready(F, reason, f"{message}; no restarts left (maxRestarts {obs.max_restarts})")
        return finish(), RunAction.NONE
    status.phase = RunPhase.RUNNING
    detail = f" (step {status.step}/{status.total_steps})" if status.total_steps else ""
    ready(F, RunReason.JOB_RUNNING, f"training job {obs.job_name} is running{detail}")
    return finish(), RunAction.NONE


def _mirror_progress(status: ForgeTrainingRunStatus, progress: TrainProgress | None, now: datetime) -> None:
    stamp = now.strftime(RFC3339)
    if progress is None:
        status.last_progress_time = status.last_progress_time or stamp
        return
    if status.step is None or progress.step > status.step or status.last_progress_time is None:
        status.last_progress_time = stamp
    status.step = progress.step
    status.total_steps = progress.total_steps or status.total_steps
    status.progress = f"{progress.step}/{progress.total_steps}" if progress.total_steps else str(progress.step)
    status.tokens_seen = progress.tokens_seen
    status.loss = _round(progress.loss)
    status.eval_loss = _round(progress.eval_loss)
    status.tokens_per_second = _round(progress.tokens_per_second, 1)
    status.mfu = _round(progress.mfu)
    status.mean_reward = _round(progress.mean_reward)
    status.world_size = progress.world_size or status.world_size
    if progress.checkpoints:
        status.checkpoints = list(progress.checkpoints)
    if progress.eval_metrics:
        status.eval_metrics = dict(progress.eval_metrics)
    started = _ts(status.started_at)
    if started and progress.total_steps and 0 < progress.step < progress.total_steps:
        per_step = (now - started) / progress.step
        status.eta = (now + per_step * (progress.total_steps - progress.step)).strftime(RFC3339)
    elif progress.done:
        status.eta = None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
