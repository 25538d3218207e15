"""ForgeTrainingRun: the reconcile's steps for a run (its ConfigMap, Service, NetworkPolicy and the Job
of the current attempt, created, suspended, resumed, rolled or restarted as status/training.py
decides), and its Kopf handlers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import kopf

from forge_operator.api import GROUP, TRAINING_RUN, VERSION, ForgeTrainingRun
from forge_operator.api.common import API_VERSION
from forge_operator.api.training import ForgeTrainingRunStatus, RunPhase
from forge_operator.handlers.cleanup import finalize
from forge_operator.handlers.reconcile import Adapter, Pass, on_event, on_tick
from forge_operator.handlers.runtime import log, post_event, runtime
from forge_operator.handlers.training_job import carry_out_job, earlier_pods
from forge_operator.plan.training import TrainingPlan, plan_training_run, shape_changes
from forge_operator.render.training import SHAPE_ANNOTATION, render_training
from forge_operator.resolve.lookup import Lookup
from forge_operator.resolve.training import PINNED, ResolvedRun, check_pinned, pin, resolve_run
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import Action, Waiting, is_true
from forge_operator.status.job import JobObservation, observe_job
from forge_operator.status.training import (
    BUDGET_EXCEEDED,
    Hold,
    JobDecision,
    JobStep,
    RunObservation,
    decide_job,
    derive_run_status,
    gpu_hours_used,
    gpus_in_use,
    run_hold,
)
from forge_operator.store import StoreError
from forge_operator.store.artifacts import read_progress
from forge_trainer.config import TrainProgress

KIND, PLURAL = TRAINING_RUN.kind, TRAINING_RUN.plural
_INTERVAL = OperatorSettings.from_env().reconcile_interval
Rc = Pass[ForgeTrainingRun, ForgeTrainingRunStatus]


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


class TrainingAdapter(Adapter[ForgeTrainingRun, ForgeTrainingRunStatus]):
    """The reconcile's steps for a ForgeTrainingRun."""

    info = TRAINING_RUN
    resource_model = ForgeTrainingRun
    status_model = ForgeTrainingRunStatus
    settled = frozenset({RunPhase.SUCCEEDED, RunPhase.FAILED})

    def resolve(self, rc: Rc, lookup: Lookup) -> ResolvedRun | Waiting:
        check_pinned(rc.resource, (rc.body["metadata"].get("annotations") or {}).get(PINNED))
        settings = runtime().settings
        return resolve_run(rc.resource, lookup, bucket=settings.store_bucket, trainer_image=settings.trainer_image)

    def plan(self, rc: Rc, resolved: ResolvedRun) -> TrainingPlan:
        attempt = rc.prev.attempt if rc.prev.attempt is not None else (rc.prev.restarts or 0)
        return plan_training_run(rc.resource, runtime().settings, resolved.refs, attempt=attempt)

    def render(self, plan: TrainingPlan) -> list[dict[str, Any]]:
        return render_training(plan)

    def apply(self, rc: Rc, plan: TrainingPlan, manifests: list[dict[str, Any]]) -> Applied:
        """Pin the immutable fields once; apply everything but the Job on every reconcile (a spec change,
        e.g. hyperparameters.maxSteps, lands in the ConfigMap the running pods mount); then do to the Job
        what decide_job decides."""
        kube, spec = runtime().kube, rc.resource.spec
        if PINNED not in (rc.body["metadata"].get("annotations") or {}):
            kube.patch(API_VERSION, KIND, rc.namespace, rc.name, {"metadata": {"annotations": {PINNED: pin(rc.resource)}}})
        for manifest in manifests:
            if manifest["kind"] != "Job":
                kube.apply(manifest)
        live = kube.get("batch/v1", "Job", rc.namespace, plan.job_name)
        seen = observe_job(live)
        hold = run_hold(spec.suspend, spec.budget.max_gpu_hours, gpu_hours_used(rc.prev, rc.now))
        changes = shape_changes(seen.annotations.get(SHAPE_ANNOTATION), plan.job_shape) if seen else []
        earlier = earlier_pods(plan, rc.now) if seen is None and hold is None else 0
        decision = decide_job(seen, hold=hold is not None, queued=plan.queue is not None, changes=changes,
                              earlier_pods=earlier)
        job = next(m for m in manifests if m["kind"] == "Job")
        return Applied(seen, carry_out_job(plan, decision, live, job), decision, hold, earlier)

    def observe(self, rc: Rc, resolved: ResolvedRun, plan: TrainingPlan, applied: Applied) -> RunObservation:
        spec = rc.resource.spec
        progress = None
        try:
            progress = read_progress(plan.output_uri, runtime().settings.store, TrainProgress)
        except StoreError as exc:
            log.warning("run %s/%s: cannot read progress: %s", rc.namespace, rc.name, exc)
        return RunObservation(
            rc.generation, job_name=plan.job_name, output_uri=plan.output_uri, job=observe_job(applied.live),
            progress=progress, max_restarts=spec.max_restarts, stall_timeout_seconds=spec.stall_timeout_seconds,
            lineage=resolved.lineage.model_copy(update={"config_hash": plan.config_hash}), resolved=resolved.resolved,
            attempt=plan.attempt, step=applied.decision, hold=applied.hold, queue=plan.queue,
            gpus_in_use=gpus_in_use(applied.seen, spec.resources.gpus_per_node),
            max_gpu_hours=spec.budget.max_gpu_hours, earlier_pods=applied.earlier_pods)

    def derive(self, prev: ForgeTrainingRunStatus, observed: RunObservation,
               now: datetime) -> tuple[ForgeTrainingRunStatus, Action]:
        return derive_run_status(prev, observed, now)

    def early(self, generation: int, *, spec_error: str | None = None, waiting: Waiting | None = None) -> RunObservation:
        return RunObservation(generation, spec_error=spec_error, waiting=waiting)

    def carry_out(self, rc: Rc, plan: TrainingPlan, applied: Applied, status: ForgeTrainingRunStatus,
                  action: Action) -> None:
        """Delete the Job for a restart; post the Events of a restart, a roll and a spent budget."""
        if action is Action.RESTART:
            runtime().kube.delete("batch/v1", "Job", rc.namespace, plan.job_name)
            post_event(rc.body, "JobRestarted", status.message or "job recreated", warning=True)
        if applied.decision.step is JobStep.ROLL:
            post_event(rc.body, "JobRolled", status.message or f"job {plan.job_name} recreated: {applied.decision.detail}")
        if applied.hold is Hold.BUDGET and not is_true(rc.prev.conditions, BUDGET_EXCEEDED):
            post_event(rc.body, "BudgetExceeded", status.message or "spec.budget.maxGpuHours reached", warning=True)


ADAPTER = TrainingAdapter()


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=_INTERVAL * 5)
def on_change(body: kopf.Body, **kwargs: Any) -> None:
    """Reconcile at once on creation, spec change and operator start."""
    on_event(ADAPTER, body, kwargs)


@kopf.timer(GROUP, VERSION, PLURAL, interval=_INTERVAL, initial_delay=_INTERVAL)
def on_timer(body: kopf.Body, **kwargs: Any) -> None:
    """Reconcile periodically: mirror progress, detect stalls and failures, see references become ready."""
    on_tick(ADAPTER, body, kwargs)


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
def on_delete(body: kopf.Body, **kwargs: Any) -> None:
    """Remove what the run produced as its retention says (default: keep the final model), write the
    audit record, then let go. Waits while a deployment or a later run still uses it."""
    finalize(body, KIND, "KeepFinal", kwargs)
