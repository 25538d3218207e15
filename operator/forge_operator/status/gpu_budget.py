"""The GPU-hour budget of a training run (spec.budget.maxGpuHours): GPUs in use, GPU-hours used, when
the figure in status is folded, and whether the run must stop."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from forge_operator.api.common import parse_time, rfc3339
from forge_operator.api.training import ForgeTrainingRunSpec, ForgeTrainingRunStatus
from forge_operator.status.job import JobObservation

ACCRUAL_SECONDS = 60
"""While GPUs are in use, status.gpuHours is folded in at least this often (fewer status writes)."""


class Hold(StrEnum):
    """Why a run must not run now."""

    SUSPEND = "suspend"
    """spec.suspend is true."""
    BUDGET = "budget"
    """status.gpuHours reached spec.budget.maxGpuHours."""


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
    since = parse_time(status.gpu_hours_updated_at)
    if since is not None and status.gpus_in_use:
        used += status.gpus_in_use * max(0.0, (now - since).total_seconds()) / 3600
    return used


def run_hold(suspend: bool, max_gpu_hours: float | None, used: float) -> Hold | None:
    """Why the run must not run now, if it must not: its budget is spent, or spec.suspend is set."""
    if max_gpu_hours is not None and used >= max_gpu_hours:
        return Hold.BUDGET
    return Hold.SUSPEND if suspend else None


def hold_of(spec: ForgeTrainingRunSpec, status: ForgeTrainingRunStatus, now: datetime) -> Hold | None:
    """run_hold for this spec, with the GPU-hours the run has used by `now`."""
    return run_hold(spec.suspend, spec.budget.max_gpu_hours, gpu_hours_used(status, now))


def fold_gpu_hours(status: ForgeTrainingRunStatus, gpus_now: int, now: datetime, force: bool = False) -> None:
    """Fold the GPU-hours used since the last fold into status when the rate changes, or at least every
    ACCRUAL_SECONDS while GPUs are in use (between folds, gpu_hours_used adds the rest exactly), or when
    `force`d (the budget is spent: status shows the exact figure)."""
    since = parse_time(status.gpu_hours_updated_at)
    rate = status.gpus_in_use or 0
    if since is None and gpus_now == 0 and status.gpu_hours is None:
        return  # never used a GPU: nothing to show
    due = force or since is None or gpus_now != rate or (
        rate > 0 and (now - since).total_seconds() >= ACCRUAL_SECONDS)
    if due:
        status.gpu_hours = round(gpu_hours_used(status, now), 4)
        status.gpus_in_use = gpus_now
        status.gpu_hours_updated_at = rfc3339(now)


def gpu_hours_text(value: float) -> str:
    """GPU-hours as status messages show them."""
    return f"{round(value, 4):g}"
