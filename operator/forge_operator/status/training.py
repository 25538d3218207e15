"""Derive a ForgeTrainingRun's phase and conditions from what one reconcile observed: bookkeeping
(lineage, attempt, GPU-hours, mirrored progress), then one switch on the decided Outcome — trained,
held (spec.suspend, the GPU budget), rolled, queued, failed or stalled (restarted while restarts are
left), or running. What happens to the Job itself is decided in run_job.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from forge_operator.api.common import ConditionStatus, parse_time, rfc3339
from forge_operator.api.training import ForgeTrainingRunStatus, Lineage, RunPhase, RunReason
from forge_operator.status.conditions import (
    STALLED,
    Action,
    StoreCheck,
    Waiting,
    begin_status,
    get_condition,
    mark,
    mark_ready,
    mark_references,
    mark_store,
    store_down,
)
from forge_operator.status.gpu_budget import Hold, fold_gpu_hours, gpu_hours_text
from forge_operator.status.job import JobObservation
from forge_operator.status.pods import PodsSeen, mark_pods, stalled_text
from forge_operator.status.run_job import LEAVE_JOB, JobDecision, JobStep
from forge_trainer.config import TrainProgress

TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE
DATASET_READY = "DatasetReady"
BASE_MODEL_READY = "BaseModelReady"
BUDGET_EXCEEDED = "BudgetExceeded"


@dataclass(frozen=True)
class RunObservation:
    """Everything one reconcile saw about a training run (and what it did to the Job)."""

    generation: int
    spec_error: str | None = None
    waiting: Waiting | None = None
    job_name: str | None = None
    output_uri: str | None = None
    job: JobObservation | None = None
    progress: TrainProgress | None = None
    max_restarts: int = 3
    stall_timeout_seconds: int = 1800
    lineage: Lineage | None = None
    resolved: list[str] = field(default_factory=list)
    attempt: int = 0
    """The attempt whose Job the handler looked at (status.attempt before this reconcile)."""
    step: JobDecision = LEAVE_JOB
    """What the handler did to the Job (decide_job's answer)."""
    hold: Hold | None = None
    """Why the run must not run now (run_hold's answer)."""
    queue: str | None = None
    """Kueue LocalQueue (spec.resources.queue)."""
    gpus_in_use: int = 0
    """GPUs the run's pods hold now (gpus_in_use of the Job seen before acting on it)."""
    max_gpu_hours: float | None = None
    """spec.budget.maxGpuHours."""
    earlier_pods: int = 0
    """Pods of earlier attempts still stopping (for the WAIT message)."""
    store: StoreCheck | None = None
    """How the store answered the progress read (None: nothing was read)."""
    pods: PodsSeen | None = None
    """The pods of the current attempt's Job (None: not looked at)."""
    pods_stalled_after: float = 600.0
    """Seconds pods may wait to start before the run is Stalled (the operator's podsStalledAfter)."""


class Outcome(StrEnum):
    """What a reconcile's observation amounts to; derive_run_status switches on it."""

    INVALID_SPEC = "invalid-spec"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    HELD = "held"
    ROLLED = "rolled"
    NO_JOB = "no-job"
    QUEUED = "queued"
    JOB_FAILED = "job-failed"
    STALLED = "stalled"
    STORE_DOWN = "store-down"
    RUNNING = "running"


def _stalled_seconds(prev: ForgeTrainingRunStatus, status: ForgeTrainingRunStatus, obs: RunObservation,
                     now: datetime) -> float | None:
    """How long the step has not advanced, when that is past spec.stallTimeoutSeconds. The stall clock
    runs only while the run was already Running (not across a suspension)."""
    last = parse_time(status.last_progress_time) if prev.phase is RunPhase.RUNNING else None
    if last is None or now - last <= timedelta(seconds=obs.stall_timeout_seconds):
        return None
    return (now - last).total_seconds()


def _outcome(prev: ForgeTrainingRunStatus, status: ForgeTrainingRunStatus, obs: RunObservation,
             job: JobObservation | None, now: datetime) -> Outcome:
    """The one decision of a reconcile, in order of precedence."""
    if obs.spec_error:
        return Outcome.INVALID_SPEC
    if obs.waiting is not None:
        return Outcome.WAITING
    if job is not None and job.complete and obs.progress is not None and obs.progress.done:
        return Outcome.SUCCEEDED
    if obs.hold is not None:
        return Outcome.HELD
    if obs.step.step is JobStep.ROLL:
        return Outcome.ROLLED
    if job is None:
        return Outcome.NO_JOB
    if job.suspended and not job.active and obs.queue:
        return Outcome.QUEUED
    if store_down(obs.store) and (job.complete or _stalled_seconds(prev, status, obs, now) is not None):
        # whether it trained, failed or stalled is in progress.json: neither restart nor fail it unread
        return Outcome.STORE_DOWN
    if job.failed_final or job.complete:
        return Outcome.JOB_FAILED
    if _stalled_seconds(prev, status, obs, now) is not None:
        return Outcome.STALLED
    return Outcome.RUNNING


def _record(status: ForgeTrainingRunStatus, obs: RunObservation, now: datetime) -> None:
    """Bookkeeping every reconcile of a resolved run does before deciding: lineage, names, attempt,
    GPU-hours, the budget condition and the mirrored progress."""
    stamp = rfc3339(now)
    status.lineage = with_base_digest(obs.lineage or status.lineage, status.lineage, obs.progress)
    status.output_uri = obs.output_uri or status.output_uri
    status.job_name = obs.job_name or status.job_name
    status.restarts = status.restarts or 0
    status.attempt = obs.attempt
    fold_gpu_hours(status, obs.gpus_in_use, now, force=obs.hold is Hold.BUDGET)
    used = gpu_hours_text(status.gpu_hours or 0.0)  # as folded: messages change at most once per fold
    _mirror_progress(status, obs.progress, now)
    if obs.hold is Hold.BUDGET and obs.max_gpu_hours is not None:
        mark(status, BUDGET_EXCEEDED, TRUE, RunReason.BUDGET_EXCEEDED,
             f"used {used} GPU-hours, spec.budget.maxGpuHours is {gpu_hours_text(obs.max_gpu_hours)}", stamp)
    elif obs.max_gpu_hours is not None or get_condition(status.conditions, BUDGET_EXCEEDED):
        limit = ("no limit" if obs.max_gpu_hours is None
                 else f"of spec.budget.maxGpuHours {gpu_hours_text(obs.max_gpu_hours)}")
        mark(status, BUDGET_EXCEEDED, FALSE, "WithinBudget", f"used {used} GPU-hours {limit}", stamp)
    if obs.step.step in (JobStep.DELETE, JobStep.ROLL):
        status.attempt = obs.attempt + 1  # deliberate: not a restart
        status.last_progress_time = stamp  # the next attempt gets a full stall window


def derive_run_status(prev: ForgeTrainingRunStatus, obs: RunObservation,
                      now: datetime) -> tuple[ForgeTrainingRunStatus, Action]:
    """The status a run should have after this observation, and the action to take: bookkeeping first,
    then one switch on the outcome (the precedence is in `_outcome`)."""
    stamp = rfc3339(now)
    status = begin_status(prev, obs.generation, obs.spec_error, stamp)
    if not obs.spec_error:
        mark_references(status, obs.resolved, obs.waiting, stamp)
    pods_stalled = False
    if not obs.spec_error and obs.waiting is None:
        mark_store(status, obs.store, stamp)
        _record(status, obs, now)
        pods_stalled = mark_pods(status, obs.pods, now, obs.pods_stalled_after)
    job = None if obs.step.step in (JobStep.DELETE, JobStep.ROLL) else obs.job
    progress = obs.progress
    match _outcome(prev, status, obs, job, now):
        case Outcome.INVALID_SPEC:
            status.phase = RunPhase.FAILED
            mark_ready(status, FALSE, RunReason.INVALID_SPEC, obs.spec_error or "", stamp)
        case Outcome.WAITING:
            status.phase = RunPhase.PENDING
            mark_ready(status, FALSE, RunReason.WAITING, obs.waiting.message if obs.waiting else "", stamp)
        case Outcome.SUCCEEDED:
            assert progress is not None
            status.started_at = status.started_at or stamp
            status.phase = RunPhase.SUCCEEDED
            status.final_model_uri = progress.final_model_uri
            status.final_model_digest = progress.final_model_digest
            status.eval_metrics = dict(progress.eval_metrics) or status.eval_metrics
            status.completed_at = status.completed_at or stamp
            mark(status, STALLED, FALSE, "Progressing", "", stamp)
            mark_ready(status, TRUE, RunReason.TRAINED,
                       f"trained {progress.step} steps; final model {progress.final_model_uri}", stamp)
        case Outcome.HELD:
            status.phase = RunPhase.SUSPENDED
            mark_ready(status, FALSE, *_held_reason(status, obs, job), stamp)
        case Outcome.ROLLED:
            status.phase = RunPhase.RUNNING if status.started_at else RunPhase.PENDING
            mark_ready(status, FALSE, RunReason.JOB_ROLLED,
                       f"spec.resources changed ({obs.step.detail}): training job {obs.job_name} is deleted and "
                       f"recreated as attempt {status.attempt} with the new shape, resuming from the latest "
                       "checkpoint (not a restart)", stamp)
        case Outcome.NO_JOB:
            status.phase = RunPhase.RUNNING if status.started_at else RunPhase.PENDING
            message = f"creating training job {obs.job_name}"
            if obs.step.step is JobStep.WAIT:
                message = (f"waiting for {obs.earlier_pods} pod(s) of an earlier attempt to stop (they checkpoint "
                           f"on SIGTERM) before creating training job {obs.job_name}")
            mark_ready(status, FALSE, RunReason.JOB_CREATED, message, stamp)
        case Outcome.QUEUED:
            status.phase = RunPhase.SUSPENDED
            mark_ready(status, FALSE, RunReason.QUEUED,
                       f"training job {obs.job_name} waits for Kueue to admit it (queue {obs.queue})", stamp)
        case Outcome.JOB_FAILED:
            assert job is not None
            status.started_at = status.started_at or stamp
            cause = obs.pods.cause if obs.pods else None
            why = "; ".join(part for part in (progress.error if progress else None,
                                              cause.summary if cause else None) if part)
            why = why or job.message or "job ended without a model"
            return status, _restart_or_fail(status, obs, RunReason.JOB_FAILED,
                                            f"training job {obs.job_name} failed: {why}", stamp)
        case Outcome.STALLED:
            status.started_at = status.started_at or stamp
            seconds = int(_stalled_seconds(prev, status, obs, now) or 0)
            message = (f"step {status.step or 0} has not advanced for {seconds}s (stallTimeoutSeconds "
                       f"{obs.stall_timeout_seconds})")
            mark(status, STALLED, TRUE, RunReason.STALLED, message, stamp)
            return status, _restart_or_fail(status, obs, RunReason.STALLED, message, stamp)
        case Outcome.STORE_DOWN:
            status.started_at = status.started_at or stamp
            status.phase = RunPhase.RUNNING
            ended = " has ended" if job is not None and job.complete else ""
            mark_ready(status, FALSE, RunReason.JOB_RUNNING,
                       f"training job {obs.job_name}{ended}; its progress is read once the object store answers",
                       stamp)
        case Outcome.RUNNING if pods_stalled or (obs.pods is not None and obs.pods.blocking is not None):
            # no pod runs, and the pods say why: Pending (the stall clock of the step waits for them)
            assert obs.pods is not None and obs.pods.trouble is not None
            status.started_at = status.started_at or stamp
            status.phase = RunPhase.PENDING
            if pods_stalled:
                message = stalled_text(obs.pods, obs.pods_stalled_after)
                mark(status, STALLED, TRUE, obs.pods.trouble.trouble.value, message, stamp)
                mark_ready(status, FALSE, RunReason.STALLED, f"training job {obs.job_name}: {message}", stamp)
            else:
                mark(status, STALLED, FALSE, "Progressing", "", stamp)
                mark_ready(status, FALSE, obs.pods.trouble.trouble.value,
                           f"training job {obs.job_name} cannot start: {obs.pods.headline()}", stamp)
        case Outcome.RUNNING:
            status.started_at = status.started_at or stamp
            if prev.phase is not RunPhase.RUNNING or status.last_progress_time is None:
                status.last_progress_time = stamp  # the stall clock starts now
            mark(status, STALLED, FALSE, "Progressing", "", stamp)
            status.phase = RunPhase.RUNNING
            detail = f" (step {status.step}/{status.total_steps})" if status.total_steps else ""
            cause = obs.pods.cause if obs.pods else None
            if cause is not None and obs.pods is not None:  # some pods run, another does not
                mark_ready(status, FALSE, cause.trouble.value,
                           f"training job {obs.job_name} is running{detail}; {obs.pods.headline()}", stamp)
            else:
                mark_ready(status, FALSE, RunReason.JOB_RUNNING, f"training job {obs.job_name} is running{detail}",
                           stamp)
    return status, Action.NONE


def _restart_or_fail(status: ForgeTrainingRunStatus, obs: RunObservation, reason: RunReason, message: str,
                     stamp: str) -> Action:
    """After a failure or a stall: the next attempt while restarts are left, else Failed."""
    restarts = status.restarts or 0
    if restarts < obs.max_restarts:
        status.restarts = restarts + 1
        status.attempt = obs.attempt + 1
        status.phase = RunPhase.RUNNING
        status.last_progress_time = stamp  # the new attempt gets a full stall window
        mark_ready(status, FALSE, RunReason.JOB_RESTARTED,
                   f"{message}; recreating it (restart {status.restarts} of {obs.max_restarts}), resuming from the "
                   "latest checkpoint", stamp)
        return Action.RESTART
    status.phase = RunPhase.FAILED
    status.completed_at = status.completed_at or stamp
    mark_ready(status, FALSE, reason, f"{message}; no restarts left (maxRestarts {obs.max_restarts})", stamp)
    return Action.NONE


def _held_reason(status: ForgeTrainingRunStatus, obs: RunObservation,
                 job: JobObservation | None) -> tuple[RunReason, str]:
    """The Ready reason and message of a run that must not run now."""
    stopped = _how_stopped(obs, job)
    if obs.hold is Hold.BUDGET:
        return RunReason.BUDGET_EXCEEDED, (
            f"GPU budget spent: used {gpu_hours_text(status.gpu_hours or 0.0)} GPU-hours, spec.budget.maxGpuHours "
            f"is {gpu_hours_text(obs.max_gpu_hours or 0)}; {stopped}; raise spec.budget.maxGpuHours to resume "
            "from the latest checkpoint")
    return RunReason.SUSPENDED, (f"suspended (spec.suspend); {stopped}; set spec.suspend to false to resume from "
                                 "the latest checkpoint")


def _how_stopped(obs: RunObservation, job: JobObservation | None) -> str:
    name = obs.job_name
    if obs.step.step is JobStep.DELETE:
        return (f"training job {name} is deleted to stop it (its pods checkpoint on SIGTERM; "
                f"{'Kueue owns the suspend of a queued job' if obs.queue else 'this API server has no Job suspend'})")
    if job is not None and job.suspended:
        return (f"training job {name} is suspended (its pods checkpoint on SIGTERM and stop)" if job.active
                else f"training job {name} is suspended")
    return "no training job runs"


def with_base_digest(lineage: Lineage | None, before: Lineage | None,
                     progress: TrainProgress | None) -> Lineage | None:
    """`lineage` with the base model digest the trainer recorded (init.modelUri: nothing resolved one),
    kept from `before` when this reconcile read no progress."""
    if lineage is None or lineage.base_model_digest:
        return lineage
    digest = (progress.base_model_digest if progress else None) or (before.base_model_digest if before else None)
    return lineage.model_copy(update={"base_model_digest": digest}) if digest else lineage


def _mirror_progress(status: ForgeTrainingRunStatus, progress: TrainProgress | None, now: datetime) -> None:
    stamp = rfc3339(now)
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
    status.success_rate = _round(progress.success_rate)
    status.kl = _round(progress.kl)
    status.completion_length = _round(progress.completion_length, 2)
    status.clip_fraction = _round(progress.clip_fraction)
    status.world_size = progress.world_size or status.world_size
    # the trainer counts every start that resumes an unfinished run, a new attempt's first start included
    status.worker_group_restarts = max(0, progress.restarts - (status.attempt or 0))
    if progress.checkpoints:
        status.checkpoints = list(progress.checkpoints)
    if progress.eval_metrics:
        status.eval_metrics = dict(progress.eval_metrics)
    if progress.initial_eval_metrics:
        status.initial_eval_metrics = dict(progress.initial_eval_metrics)
    started = parse_time(status.started_at)
    if started and progress.total_steps and 0 < progress.step < progress.total_steps:
        per_step = (now - started) / progress.step
        status.eta = rfc3339(now + per_step * (progress.total_steps - progress.step))
    elif progress.done:
        status.eta = None


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
