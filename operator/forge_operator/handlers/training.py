"""ForgeTrainingRun: the reconcile's steps for a run (its ConfigMap, Service, NetworkPolicy, rendezvous
store, and the Job of the current attempt, created, suspended, resumed, rolled or restarted as
status/training.py decides; the store has no pod while the run is held or once it settles), and its Kopf
handlers."""

from __future__ import annotations

from typing import Any

import kopf

from forge_operator.api import GROUP, TRAINING_RUN, VERSION, ForgeTrainingRun
from forge_operator.api.common import API_VERSION
from forge_operator.api.training import ForgeTrainingRunStatus, RunPhase
from forge_operator.handlers.adapter import Adapter, Pass
from forge_operator.handlers.cleanup import finalize
from forge_operator.handlers.pod_faults import look_at_pods, tell_pod_trouble
from forge_operator.handlers.reconcile import on_event, on_tick
from forge_operator.handlers.runtime import read_progress_checked, runtime
from forge_operator.handlers.training_job import Applied, apply_job, finish_job, finish_store
from forge_operator.plan.training import TrainingPlan, plan_training_run
from forge_operator.render.training import render_training
from forge_operator.resolve.lookup import Lookup
from forge_operator.resolve.training import PINNED, ResolvedRun, check_pinned, pin, resolve_run
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import Action, Waiting
from forge_operator.status.gpu_budget import gpus_in_use, hold_of
from forge_operator.status.job import observe_job
from forge_operator.status.pods import PodsSeen
from forge_operator.status.run_job import store_replicas
from forge_operator.status.training import RunObservation, derive_run_status
from forge_trainer.config import TrainProgress

KIND, PLURAL = TRAINING_RUN.kind, TRAINING_RUN.plural
_INTERVAL = OperatorSettings.from_env().reconcile_interval
Rc = Pass[ForgeTrainingRun, ForgeTrainingRunStatus]


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
        # the store's pod as the run stands before this reconcile (finish_store follows a change of phase)
        held = hold_of(rc.resource.spec, rc.prev, rc.now) is not None
        return plan_training_run(rc.resource, runtime().settings, resolved.refs, attempt=attempt,
                                 rdzv_replicas=store_replicas(rc.prev.phase, held))

    def render(self, plan: TrainingPlan) -> list[dict[str, Any]]:
        return render_training(plan)

    def apply(self, rc: Rc, plan: TrainingPlan, manifests: list[dict[str, Any]]) -> Applied:
        """Pin the immutable fields once; apply everything but the Job on every reconcile (a spec change,
        e.g. hyperparameters.maxSteps, lands in the ConfigMap the running pods mount); then do to the Job
        what decide_job decides."""
        kube = runtime().kube
        if PINNED not in (rc.body["metadata"].get("annotations") or {}):
            kube.patch(API_VERSION, KIND, rc.namespace, rc.name, {"metadata": {"annotations": {PINNED: pin(rc.resource)}}})
        for manifest in manifests:
            if manifest["kind"] != "Job":
                kube.apply(manifest)
        job = next(m for m in manifests if m["kind"] == "Job")
        return apply_job(plan, rc.resource.spec, rc.prev, rc.now, job)

    def observe(self, rc: Rc, resolved: ResolvedRun, plan: TrainingPlan, applied: Applied) -> RunObservation:
        spec = rc.resource.spec
        progress, store = read_progress_checked(plan.output_uri, TrainProgress, f"run {rc.namespace}/{rc.name}",
                                                plan.store)
        # the pods of the attempt's Job (only its own: earlier attempts' pods are stopping)
        job_uid = ((applied.live or {}).get("metadata") or {}).get("uid")
        pods = look_at_pods(KIND, rc.name, rc.namespace, rc.now, rc.prev, {job_uid}) if job_uid else PodsSeen()
        return RunObservation(
            rc.generation, job_name=plan.job_name, output_uri=plan.output_uri, job=observe_job(applied.live),
            progress=progress, max_restarts=spec.max_restarts, stall_timeout_seconds=spec.stall_timeout_seconds,
            lineage=resolved.lineage.model_copy(update={"config_hash": plan.config_hash}), resolved=resolved.resolved,
            attempt=plan.attempt, step=applied.decision, hold=applied.hold, queue=plan.queue,
            gpus_in_use=gpus_in_use(applied.seen, spec.resources.gpus_per_node),
            max_gpu_hours=spec.budget.max_gpu_hours, earlier_pods=applied.earlier_pods, store=store, pods=pods,
            pods_stalled_after=runtime().settings.pods_stalled_after)

    def carry_out(self, rc: Rc, plan: TrainingPlan, applied: Applied, status: ForgeTrainingRunStatus,
                  action: Action) -> None:
        finish_job(rc.body, plan, applied, rc.prev, status, action)
        finish_store(plan, applied, status)
        tell_pod_trouble(rc.body, rc.prev, status)


ADAPTER = TrainingAdapter(RunObservation, derive_run_status)


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
