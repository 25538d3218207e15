"""What happens to the Job of a training run's current attempt: created, suspended or resumed
(spec.suspend, the GPU budget), rolled when its shape no longer matches spec.resources, or left alone;
and which pods of earlier attempts the next one waits for. The handler carries the decision out."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from forge_operator.api.common import parse_time
from forge_operator.api.training import ForgeTrainingRunStatus, RunPhase
from forge_operator.status.job import JobObservation

POD_FINISHED = ("Succeeded", "Failed")
RUN_SETTLED = frozenset({RunPhase.SUCCEEDED, RunPhase.FAILED})
"""Run phases after which the run never trains again (unless its spec changes)."""
"""Pod phases (core/v1 PodPhase) of a pod that holds nothing any more."""


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


LEAVE_JOB = JobDecision(JobStep.KEEP)
"""The decision that changes nothing."""


def current_attempt(status: ForgeTrainingRunStatus) -> int:
    """The attempt a run's status says is current: status.attempt, or for a status written before attempts
    were recorded, its failure restarts. The Job of that attempt is the only one a reconcile may create."""
    return status.attempt if status.attempt is not None else (status.restarts or 0)


def stale_attempt(planned: int, status: ForgeTrainingRunStatus) -> str | None:
    """Why creating the Job of attempt `planned` would act on a stale view of the run (its status as read
    now names another attempt), or None when `planned` is still the current attempt."""
    current = current_attempt(status)
    if current == planned:
        return None
    return f"status.attempt is {current} now, this reconcile planned attempt {planned}"


def stopping_pods(pods: list[dict[str, Any]], now: datetime) -> int:
    """How many of these pods (of earlier attempts) may still be training or writing their SIGTERM
    checkpoint: not finished, and not past their deletion deadline (the API server sets
    deletionTimestamp to the request time plus the grace period; a pod still listed after that sits on
    a lost node and is not waited for)."""
    count = 0
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in POD_FINISHED:
            continue
        deadline = parse_time((pod.get("metadata") or {}).get("deletionTimestamp"))
        if deadline is not None and deadline <= now:
            continue
        count += 1
    return count


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


def store_replicas(phase: RunPhase | None, held: bool) -> int:
    """Pods the run's rendezvous store Deployment should have: none once the run has settled (Succeeded,
    Failed) or while it is held (spec.suspend, a spent GPU budget), since no agent meets in it then and
    its pod would hold its CPU and memory for nothing; else one. Its Service and NetworkPolicy stay: they
    hold nothing, and a resumed run finds them in place."""
    return 0 if held or phase in RUN_SETTLED else 1
