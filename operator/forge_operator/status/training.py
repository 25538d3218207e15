"""Derive a ForgeTrainingRun's phase and conditions from what was observed, and decide what happens to
its Job: created, suspended or resumed (spec.suspend, spec.budget.maxGpuHours), rolled when its shape
no longer matches spec.resources, or recreated after a failure or a stall (with restarts left).
One readable state machine; the handler only carries out what these functions decide."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from forge_operator.api.common import ConditionStatus
from forge_operator.api.training import ForgeTrainingRunStatus, Lineage, RunPhase, RunReason
from forge_operator.status.conditions import INVALID_SPEC, READY, get_condition, set_condition
from forge_operator.status.job import JobObservation
from forge_trainer.config import TrainProgress

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
DATASET_READY = "DatasetReady"
BASE_MODEL_READY = "BaseModelReady"
STALLED = "Stalled"
BUDGET_EXCEEDED = "BudgetExceeded"
RFC3339 = "%Y-%m-%dT%H:%M:%SZ"
ACCRUAL_SECONDS = 60
"""While GPUs are in use, status.gpuHours is folded in at least this often (fewer status writes)."""


class RunAction(StrEnum):
    """What the handler must do after deriving the status."""

    NONE = "none"
    RESTART = "restart"
    """Delete the current job; the next reconcile creates the next attempt (counted as a restart)."""


class Hold(StrEnum):
    """Why a run must not run now."""

    SUSPEND = "suspend"
    """spec.suspend is true."""
    BUDGET = "budget"
    """status.gpuHours reached spec.budget.maxGpuHours."""


class JobStep(StrEnum):
    """What to do with the current attempt's Job before observing it."""

    KEEP = "keep"
    """Nothing (it runs as it should, it finished, or there is none and none is wanted)."""
    CREATE = "create"
    """Create the attempt's Job (suspended only for Kueue to admit)."""
    WAIT = "wait"
    """Pods of an earlier attempt are still stopping (saving their SIGTERM checkpoint): create it later."""
    SUSPEND = "suspend"
    """Set the live Job's spec.suspend: its pods get SIGTERM, checkpoint and stop."""
    RESUME = "resume"
    """Clear the live Job's spec.suspend: its pods start again and resume from the checkpoint."""
    DELETE = "delete"
    """Stop by deleting the Job (the API server has no Job suspend, or Kueue owns it): its pods get SIGTERM
    and checkpoint; resuming creates the next attempt, which resumes from the checkpoint."""
    ROLL = "roll"
    """The Job no longer matches spec.resources (torchrun's --nnodes and an Indexed Job's completions
    cannot change in place): delete it; the next attempt gets the new shape and resumes."""


@dataclass(frozen=True)
class JobDecision:
    """A JobStep and, for ROLL, what changed."""

    step: JobStep
    detail: str = ""


@dataclass(frozen=True)
class RunObservation:
    """Everything one reconcile saw about a training run (and what it did to the Job)."""

    generation: int
    spec_error: str | None = None
    waiting_condition: str | None = None
    waiting_for: str | None = None
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
    step: JobDecision = JobDecision(JobStep.KEEP)
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


def _ts(value: str | None) -> datetime | None:
    return datetime.strptime(value, RFC3339).replace(tzinfo=UTC) if value else None


def _k8s_time(value: object) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339 text, or a datetime from a client), None if absent or unreadable."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def gpus_in_use(job: JobObservation | None, gpus_per_node: int) -> int:
    """GPUs the run's Job holds now: gpusPerNode x its pods that hold a node. Ready pods where the API
    server reports them (a pending pod holds no GPU yet), else active pods; a finished Job holds none."""
    if job is None or job.complete or job.failed_final or gpus_per_node <= 0:
        return 0
    pods = job.ready if job.ready is not None else job.active
    return gpus_per_node * max(0, pods)


def gpu_hours_used(status: ForgeTrainingRunStatus, now: datetime) -> float:
    """GPU-hours used up to `now`: what status.gpuHours holds plus the time since it was last folded in,
    at the rate (status.gpusInUse) observed then."""
    used = status.gpu_hours or 0.0
    since = _ts(status.gpu_hours_updated_at)
    if since is not None and status.gpus_in_use:
        used += status.gpus_in_use * max(0.0, (now - since).total_seconds()) / 3600
    return used


def stopping_pods(pods: list[dict[str, Any]], now: datetime) -> int:
    """How many of these pods (of earlier attempts) may still be training or writing their SIGTERM
    checkpoint: not finished, and not past their deletion deadline (the API server sets
    deletionTimestamp to the request time plus the grace period; a pod still listed after that sits on
    a lost node and is not waited for)."""
    count = 0
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        deadline = _k8s_time((pod.get("metadata") or {}).get("deletionTimestamp"))
        if deadline is not None and deadline <= now:
            continue
        count += 1
    return count


def run_hold(suspend: bool, max_gpu_hours: float | None, used: float) -> Hold | None:
    """Why the run must not run now, if it must not: its budget is spent, or spec.suspend is set."""
    if max_gpu_hours is not None and used >= max_gpu_hours:
        return Hold.BUDGET
    return Hold.SUSPEND if suspend else None


def decide_job(job: JobObservation | None, *, hold: bool, queued: bool, changes: list[str],
               earlier_pods: int = 0) -> JobDecision:
    """What to do with the current attempt's Job. `changes` lists what in spec.resources differs from
    the live Job's shape; `earlier_pods` counts pods of earlier attempts still stopping.

    Suspending uses Job spec.suspend where the server has it (1.21+), except for a Kueue-queued Job,
    whose suspend field Kueue owns (it would unsuspend an admitted Job): that one, and every Job on a
    server without Job suspend, is deleted instead and recreated as the next attempt on resume. A run
    that is held gets no new Job."""
    if job is None:
        if hold:
            return JobDecision(JobStep.KEEP)
        return JobDecision(JobStep.WAIT) if earlier_pods else JobDecision(JobStep.CREATE)
    if job.complete or job.failed_final:
        return JobDecision(JobStep.KEEP)  # derive_run_status decides: success, or a restart
    if changes:
        return JobDecision(JobStep.ROLL, "; ".join(changes))
    if hold:
        if job.suspended:
            return JobDecision(JobStep.KEEP)
        return JobDecision(JobStep.SUSPEND if job.suspend_supported and not queued else JobStep.DELETE)
    if job.suspended and not queued:
        return JobDecision(JobStep.RESUME)
    return JobDecision(JobStep.KEEP)


def _accrue(status: ForgeTrainingRunStatus, gpus_now: int, now: datetime, force: bool = False) -> None:
    """Fold the GPU-hours used since the last fold into status when the rate changes, or at least every
    ACCRUAL_SECONDS while GPUs are in use (between folds, gpu_hours_used adds the rest exactly), or when
    `force`d (the budget is spent: status shows the exact figure)."""
    since = _ts(status.gpu_hours_updated_at)
    rate = status.gpus_in_use or 0
    if since is None and gpus_now == 0 and status.gpu_hours is None:
        return  # never used a GPU: nothing to show
    due = force or since is None or gpus_now != rate or (
        rate > 0 and (now - since).total_seconds() >= ACCRUAL_SECONDS)
    if due:
        status.gpu_hours = round(gpu_hours_used(status, now), 4)
        status.gpus_in_use = gpus_now
        status.gpu_hours_updated_at = now.strftime(RFC3339)


def _num(value: float) -> str:
    return f"{round(value, 4):g}"


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
    status.attempt = obs.attempt
    _accrue(status, obs.gpus_in_use, now, force=obs.hold is Hold.BUDGET)
    used = status.gpu_hours or 0.0  # as folded: messages change at most once per fold
    _mirror_progress(status, obs.progress, now)
    if obs.max_gpu_hours is not None or get_condition(status.conditions, BUDGET_EXCEEDED):
        if obs.hold is Hold.BUDGET and obs.max_gpu_hours is not None:
            cond(BUDGET_EXCEEDED, T, RunReason.BUDGET_EXCEEDED,
                 f"used {_num(used)} GPU-hours, spec.budget.maxGpuHours is {_num(obs.max_gpu_hours)}")
        else:
            limit = "no limit" if obs.max_gpu_hours is None else f"of spec.budget.maxGpuHours {_num(obs.max_gpu_hours)}"
            cond(BUDGET_EXCEEDED, F, "WithinBudget", f"used {_num(used)} GPU-hours {limit}")

    job = obs.job
    step = obs.step.step
    if step in (JobStep.DELETE, JobStep.ROLL):
        status.attempt = obs.attempt + 1  # deliberate: not a restart
        status.last_progress_time = stamp  # the next attempt gets a full stall window
        job = None
    progress = obs.progress
    if job is not None and job.complete and progress is not None and progress.done:
        status.started_at = status.started_at or stamp
        status.phase = RunPhase.SUCCEEDED
        status.final_model_uri = progress.final_model_uri
        status.final_model_digest = progress.final_model_digest
        status.eval_metrics = dict(progress.eval_metrics) or status.eval_metrics
        status.completed_at = status.completed_at or stamp
        cond(STALLED, F, "Progressing", "")
        ready(T, RunReason.TRAINED, f"trained {progress.step} steps; final model {progress.final_model_uri}")
        return finish(), RunAction.NONE

    if obs.hold is not None:
        status.phase = RunPhase.SUSPENDED
        stopped = _how_stopped(obs, job)
        if obs.hold is Hold.BUDGET:
            ready(F, RunReason.BUDGET_EXCEEDED,
                  f"GPU budget spent: used {_num(used)} GPU-hours, spec.budget.maxGpuHours is "
                  f"{_num(obs.max_gpu_hours or 0)}; {stopped}; raise spec.budget.maxGpuHours to resume from the "
                  "latest checkpoint")
        else:
            ready(F, RunReason.SUSPENDED, f"suspended (spec.suspend); {stopped}; set spec.suspend to false to resume "
                                          "from the latest checkpoint")
        return finish(), RunAction.NONE
    if step is JobStep.ROLL:
        status.phase = RunPhase.RUNNING if status.started_at else RunPhase.PENDING
        ready(F, RunReason.JOB_ROLLED,
              f"spec.resources changed ({obs.step.detail}): training job {obs.job_name} is deleted and recreated as "
              f"attempt {status.attempt} with the new shape, resuming from the latest checkpoint (not a restart)")
        return finish(), RunAction.NONE
    if job is None:
        status.phase = RunPhase.RUNNING if status.started_at else RunPhase.PENDING
        if step is JobStep.WAIT:
            ready(F, RunReason.JOB_CREATED,
                  f"waiting for {obs.earlier_pods} pod(s) of an earlier attempt to stop (they checkpoint on SIGTERM) "
                  f"before creating training job {obs.job_name}")
        else:
            ready(F, RunReason.JOB_CREATED, f"creating training job {obs.job_name}")
        return finish(), RunAction.NONE
    if job.suspended and not job.active and obs.queue:
        status.phase = RunPhase.SUSPENDED
        ready(F, RunReason.QUEUED, f"training job {obs.job_name} waits for Kueue to admit it (queue {obs.queue})")
        return finish(), RunAction.NONE
    status.started_at = status.started_at or stamp

    failure = None
    if job.failed_final or job.complete:
        why = (progress.error if progress and progress.error else None) or job.message or "job ended without a model"
        failure = (RunReason.JOB_FAILED, f"training job {obs.job_name} failed: {why}")
    else:
        # the stall clock runs only while the run was already Running (not across a suspension)
        last = _ts(status.last_progress_time) if prev.phase is RunPhase.RUNNING else None
        if last is None:
            status.last_progress_time = stamp
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
            status.attempt = obs.attempt + 1
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


def _how_stopped(obs: RunObservation, job: JobObservation | None) -> str:
    name = obs.job_name
    if obs.step.step is JobStep.DELETE:
        return (f"training job {name} is deleted to stop it (its pods checkpoint on SIGTERM; "
                f"{'Kueue owns the suspend of a queued job' if obs.queue else 'this API server has no Job suspend'})")
    if job is not None and job.suspended:
        return (f"training job {name} is suspended (its pods checkpoint on SIGTERM and stop)" if job.active
                else f"training job {name} is suspended")
    return "no training job runs"


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
