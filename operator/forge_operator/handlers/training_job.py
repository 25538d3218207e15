"""The Job of a training run's current attempt: carried out as decide_job decides. The Job is created
once and afterwards only (un)suspended or deleted, so Kueue (which admits a queued Job by unsuspending
it) and the operator never fight over it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from forge_operator.api import TRAINING_RUN
from forge_operator.handlers.runtime import runtime
from forge_operator.plan.naming import selector_labels
from forge_operator.plan.training import TrainingPlan
from forge_operator.render.training import ATTEMPT_LABEL
from forge_operator.status.training import JobDecision, JobStep, stopping_pods


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
        return kube.apply(job)
    if step in (JobStep.SUSPEND, JobStep.RESUME):
        kube.patch("batch/v1", "Job", ns, plan.job_name, {"spec": {"suspend": step is JobStep.SUSPEND}})
        return kube.get("batch/v1", "Job", ns, plan.job_name)
    if step in (JobStep.DELETE, JobStep.ROLL):
        # background propagation: the garbage collector deletes the pods gracefully (SIGTERM, the
        # trainer checkpoints); the next attempt waits for them (earlier_pods)
        kube.delete("batch/v1", "Job", ns, plan.job_name)
        return None
    return live
