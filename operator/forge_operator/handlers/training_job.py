"""The Job of a training run's current attempt: decided by status/training.py (decide_job), carried out
here. The Job is created once and afterwards only (un)suspended or deleted, so Kueue (which admits a
queued Job by unsuspending it) and the operator never fight over it.

A create never acts on a stale attempt: the Job's name and attempt label come from the attempt planned
from the run's status, the run is read again just before to confirm that attempt is still current, and the
create is a POST, which fails on an existing Job of that name instead of adopting or overwriting it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from forge_operator.api import TRAINING_RUN
from forge_operator.api.common import API_VERSION
from forge_operator.api.training import ForgeTrainingRunSpec, ForgeTrainingRunStatus
from forge_operator.handlers.runtime import StaleStatusError, parse_status, post_event, runtime
from forge_operator.kube.client import AlreadyExistsError
from forge_operator.plan.naming import selector_labels
from forge_operator.plan.training import TrainingPlan, shape_changes
from forge_operator.render.training import ATTEMPT_LABEL, SHAPE_ANNOTATION, render_rendezvous_deployment
from forge_operator.status.conditions import Action, is_true
from forge_operator.status.gpu_budget import Hold, hold_of
from forge_operator.status.job import JobObservation, observe_job
from forge_operator.status.run_job import (
    JobDecision,
    JobStep,
    decide_job,
    stale_attempt,
    stopping_pods,
    store_replicas,
)
from forge_operator.status.training import BUDGET_EXCEEDED

KIND = TRAINING_RUN.kind
log = logging.getLogger("forge.operator")


@dataclass(frozen=True)
class Applied:
    """What the apply step saw of the Job and did to it."""

    seen: JobObservation | None
    """The Job before acting on it."""
    live: dict[str, Any] | None
    """The Job after acting on it."""
    decision: JobDecision
    hold: Hold | None
    earlier_pods: int


def apply_job(plan: TrainingPlan, spec: ForgeTrainingRunSpec, prev: ForgeTrainingRunStatus, now: datetime,
              job: dict[str, Any]) -> Applied:
    """Look at the attempt's Job, decide what it needs (hold, roll, create, wait) and do it."""
    live = runtime().kube.get("batch/v1", "Job", plan.meta.namespace, plan.job_name)
    seen = observe_job(live)
    hold = hold_of(spec, prev, now)
    changes = shape_changes(seen.annotations.get(SHAPE_ANNOTATION), plan.job_shape) if seen else []
    earlier = earlier_pods(plan, now) if seen is None and hold is None else 0
    decision = decide_job(seen, hold=hold is not None, queued=plan.queue is not None, changes=changes,
                          earlier_pods=earlier)
    return Applied(seen, carry_out_job(plan, decision, live, job), decision, hold, earlier)


def earlier_pods(plan: TrainingPlan, now: datetime) -> int:
    """Pods of the run's earlier attempts that have not finished (they may still be writing their
    SIGTERM checkpoint): the next Job waits for them, so two attempts never train at once."""
    selector = ",".join([f"{k}={v}" for k, v in sorted(selector_labels(TRAINING_RUN.kind, plan.meta.owner.name).items())]
                        + [f"{ATTEMPT_LABEL}!={plan.attempt}"])
    return stopping_pods(runtime().kube.list("v1", "Pod", plan.meta.namespace, label_selector=selector), now)


def carry_out_job(plan: TrainingPlan, decision: JobDecision, live: dict[str, Any] | None,
                  job: dict[str, Any]) -> dict[str, Any] | None:
    """Do what decide_job decided; returns the Job as it is afterwards (None when there is none)."""
    kube = runtime().kube
    ns = plan.meta.namespace
    step = decision.step
    if step is JobStep.CREATE:
        return create_job(plan, job)
    if step in (JobStep.SUSPEND, JobStep.RESUME):
        kube.patch("batch/v1", "Job", ns, plan.job_name, {"spec": {"suspend": step is JobStep.SUSPEND}})
        return kube.get("batch/v1", "Job", ns, plan.job_name)
    if step in (JobStep.DELETE, JobStep.ROLL):
        # background propagation: the garbage collector deletes the pods gracefully (SIGTERM, the
        # trainer checkpoints); the next attempt waits for them (earlier_pods)
        kube.delete("batch/v1", "Job", ns, plan.job_name)
        return None
    return live


def create_job(plan: TrainingPlan, job: dict[str, Any]) -> dict[str, Any] | None:
    """Create the Job of attempt `plan.attempt` once the run, read now, confirms that attempt is still
    current (StaleStatusError otherwise); a Job of that name that already exists is this attempt's, created
    by another writer, and is returned as it is."""
    kube = runtime().kube
    owner = plan.meta.owner
    run = kube.get(API_VERSION, KIND, plan.meta.namespace, owner.name)
    if run is None or run["metadata"].get("uid") != owner.uid:
        raise StaleStatusError(f"{KIND} {plan.meta.namespace}/{owner.name} is gone; job {plan.job_name} not created")
    why = stale_attempt(plan.attempt, parse_status(ForgeTrainingRunStatus, run))
    if why is not None:
        raise StaleStatusError(f"{KIND} {plan.meta.namespace}/{owner.name}: {why}; job {plan.job_name} not created")
    try:
        return kube.create(job)
    except AlreadyExistsError:
        log.info("job %s/%s already exists: created by another writer of attempt %s", plan.meta.namespace,
                 plan.job_name, plan.attempt)
        return kube.get("batch/v1", "Job", plan.meta.namespace, plan.job_name)


def finish_job(body: dict[str, Any], plan: TrainingPlan, applied: Applied, prev: ForgeTrainingRunStatus,
               status: ForgeTrainingRunStatus, action: Action) -> None:
    """After derive: delete the Job for a restart; post the Events of a restart, a roll and a spent budget."""
    if action is Action.RESTART:
        runtime().kube.delete("batch/v1", "Job", plan.meta.namespace, plan.job_name)
        post_event(body, "JobRestarted", status.message or "job recreated", warning=True)
    if applied.decision.step is JobStep.ROLL:
        post_event(body, "JobRolled", status.message or f"job {plan.job_name} recreated: {applied.decision.detail}")
    if applied.hold is Hold.BUDGET and not is_true(prev.conditions, BUDGET_EXCEEDED):
        post_event(body, "BudgetExceeded", status.message or "spec.budget.maxGpuHours reached", warning=True)


def finish_store(plan: TrainingPlan, applied: Applied, status: ForgeTrainingRunStatus) -> None:
    """After derive: give the rendezvous store the pods the run's new phase wants, when the plan applied
    another count. A run that settles now is never reconciled again, so its store must stop in this very
    reconcile; a run held now (or no longer) follows at once too."""
    replicas = store_replicas(status.phase, applied.hold is not None)
    if replicas != plan.rdzv_replicas:
        runtime().kube.apply(render_rendezvous_deployment(replace(plan, rdzv_replicas=replicas)))
