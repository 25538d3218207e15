"""ForgeTrainingRun handlers: parse, resolve, plan, render, apply, observe, derive, patch once."""

from __future__ import annotations

import contextlib
import functools
import json
from datetime import UTC, datetime
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from forge_operator.api.common import API_VERSION, GROUP, VERSION
from forge_operator.api.errors import spec_error_message
from forge_operator.api.training import ForgeTrainingRun, ForgeTrainingRunStatus, Lineage, RunPhase
from forge_operator.handlers.cleanup import release_artifacts
from forge_operator.handlers.references import (
    DatasetIndex,
    Waiting,
    foreign_namespace,
    immutable_fields,
    model_of_chain,
    ready_dataset,
    succeeded_run,
)
from forge_operator.handlers.runtime import (
    log,
    parse_status,
    post_event,
    publish_status,
    runtime,
    timed_reconcile,
)
from forge_operator.plan.naming import selector_labels
from forge_operator.plan.training import ResolvedRefs, TrainingPlan, plan_training_run, shape_changes
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.render.training import ATTEMPT_LABEL, SHAPE_ANNOTATION, render_training
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import is_true
from forge_operator.status.job import observe_job
from forge_operator.status.training import (
    BUDGET_EXCEEDED,
    Hold,
    JobDecision,
    JobStep,
    RunAction,
    RunObservation,
    decide_job,
    derive_run_status,
    gpu_hours_used,
    gpus_in_use,
    run_hold,
    stopping_pods,
)
from forge_operator.store import StoreError
from forge_operator.store.artifacts import read_progress
from forge_trainer.config import TrainProgress

KIND = "ForgeTrainingRun"
PLURAL = "forgetrainingruns"
PINNED = "forge.ai/immutable-spec"
SETTLED = {RunPhase.SUCCEEDED, RunPhase.FAILED}
_INTERVAL = OperatorSettings.from_env().reconcile_interval


def reconcile_run(body: dict[str, Any], datasets: DatasetIndex) -> None:
    """One reconcile of a ForgeTrainingRun (`datasets`: the ForgeDatasets the operator knows)."""
    timed_reconcile(KIND, functools.partial(_reconcile, datasets=datasets), body)


def _fail_invalid(body: dict[str, Any], prev: ForgeTrainingRunStatus, gen: int, message: str,
                  now: datetime) -> NoReturn:
    status, _ = derive_run_status(prev, RunObservation(gen, spec_error=message), now)
    publish_status(body, prev, status)
    raise kopf.PermanentError(message)


def _resolve(run: ForgeTrainingRun, ns: str,
             datasets: DatasetIndex) -> tuple[ResolvedRefs, Lineage, list[str]] | Waiting:
    rt = runtime()
    spec = run.spec
    ds = ready_dataset(datasets, ns, spec.dataset_ref, "spec.datasetRef")
    if isinstance(ds, Waiting):
        return ds
    resolved = ["DatasetReady"]
    eval_status: dict[str, Any] = {}
    if spec.eval_dataset_ref:
        ev = ready_dataset(datasets, ns, spec.eval_dataset_ref, "spec.evalDatasetRef")
        if isinstance(ev, Waiting):
            return ev
        eval_status = ev
    init_model, base_digest, model = spec.init.model_uri, None, spec.model
    if spec.init.base_run:
        base = succeeded_run(rt.kube, ns, spec.init.base_run, "spec.init.baseRun")
        if isinstance(base, Waiting):
            return base
        resolved.append("BaseModelReady")
        init_model = base["status"]["finalModelUri"]
        base_digest = base["status"].get("finalModelDigest")
        model = model or model_of_chain(rt.kube, ns, base)
    refs = ResolvedRefs(dataset_manifest=ds["manifestUri"], dataset_digest=ds.get("digest"),
                        eval_manifest=eval_status.get("manifestUri"), eval_digest=eval_status.get("digest"),
                        init_model_uri=init_model, init_checkpoint_uri=spec.init.checkpoint_uri,
                        base_model_digest=base_digest, model=model)
    lineage = Lineage(dataset_digest=refs.dataset_digest, eval_dataset_digest=refs.eval_digest,
                      base_model_digest=base_digest, trainer_image=rt.settings.trainer_image)
    return refs, lineage, resolved


def _reconcile(body: dict[str, Any], datasets: DatasetIndex) -> None:
    rt = runtime()
    meta = body["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], int(meta.get("generation") or 1)
    prev = parse_status(ForgeTrainingRunStatus, body)
    now = datetime.now(UTC)
    if prev.phase in SETTLED and prev.observed_generation == gen:
        return
    try:
        run = ForgeTrainingRun.model_validate(body)
    except ValidationError as exc:
        _fail_invalid(body, prev, gen, spec_error_message(exc), now)
    for field, uri in (("spec.init.modelUri", run.spec.init.model_uri),
                       ("spec.init.checkpointUri", run.spec.init.checkpoint_uri)):
        other = foreign_namespace(uri, rt.settings.store_bucket, ns)
        if other:
            _fail_invalid(body, prev, gen, f"{field}: refers to namespace {other}; a run may only use "
                                           f"artifacts of its own namespace ({ns})", now)
    pinned = (meta.get("annotations") or {}).get(PINNED)
    current = immutable_fields(run)
    if pinned:
        was = json.loads(pinned)
        changed = [k for k in current if was.get(k) != current[k]]
        if changed:
            _fail_invalid(body, prev, gen, "; ".join(
                f"spec.{k} is immutable once the run started (was {was.get(k)!r}); create a new run instead"
                for k in changed), now)

    refs = _resolve(run, ns, datasets)
    if isinstance(refs, Waiting):
        # waiting is a state, not an error: the status says what for, and the timer looks again every
        # reconcile interval (no retry bookkeeping written to the object, no error in the log)
        status, _ = derive_run_status(prev, RunObservation(gen, waiting_condition=refs.condition,
                                                           waiting_for=refs.message), now)
        publish_status(body, prev, status)
        return
    resolved_refs, lineage, resolved = refs
    attempt = prev.attempt if prev.attempt is not None else (prev.restarts or 0)
    try:
        plan = plan_training_run(run, rt.settings, resolved_refs, attempt=attempt)
    except InvalidSpecError as exc:
        _fail_invalid(body, prev, gen, str(exc), now)
    lineage = lineage.model_copy(update={"config_hash": plan.config_hash})
    if not pinned:
        rt.kube.patch(API_VERSION, KIND, ns, name, {"metadata": {"annotations": {PINNED: json.dumps(current)}}})

    # everything but the Job, on every reconcile: a spec change (e.g. hyperparameters.maxSteps) lands in
    # the ConfigMap the running pods mount
    manifests = render_training(plan)
    for manifest in manifests:
        if manifest["kind"] != "Job":
            rt.kube.apply(manifest)
    live = rt.kube.get("batch/v1", "Job", ns, plan.job_name)
    seen = observe_job(live)
    spec = run.spec
    hold = run_hold(spec.suspend, spec.budget.max_gpu_hours, gpu_hours_used(prev, now))
    changes = shape_changes(seen.annotations.get(SHAPE_ANNOTATION), plan.job_shape) if seen else []
    earlier = _earlier_pods(plan) if seen is None and hold is None else 0
    decision = decide_job(seen, hold=hold is not None, queued=plan.queue is not None, changes=changes,
                          earlier_pods=earlier)
    live = _carry_out(plan, decision, live, next(m for m in manifests if m["kind"] == "Job"))

    progress = None
    try:
        progress = read_progress(plan.output_uri, rt.settings.store, TrainProgress)
    except StoreError as exc:
        log.warning("run %s/%s: cannot read progress: %s", ns, name, exc)
    obs = RunObservation(gen, job_name=plan.job_name, output_uri=plan.output_uri, job=observe_job(live),
                         progress=progress, max_restarts=spec.max_restarts,
                         stall_timeout_seconds=spec.stall_timeout_seconds, lineage=lineage, resolved=resolved,
                         attempt=attempt, step=decision, hold=hold, queue=plan.queue,
                         gpus_in_use=gpus_in_use(seen, spec.resources.gpus_per_node),
                         max_gpu_hours=spec.budget.max_gpu_hours, earlier_pods=earlier)
    status, action = derive_run_status(prev, obs, now)
    if action is RunAction.RESTART:
        rt.kube.delete("batch/v1", "Job", ns, plan.job_name)
        post_event(body, "JobRestarted", status.message or "job recreated", warning=True)
    if decision.step is JobStep.ROLL:
        post_event(body, "JobRolled", status.message or f"job {plan.job_name} recreated: {decision.detail}")
    if hold is Hold.BUDGET and not is_true(prev.conditions, BUDGET_EXCEEDED):
        post_event(body, "BudgetExceeded", status.message or "spec.budget.maxGpuHours reached", warning=True)
    publish_status(body, prev, status)


def _earlier_pods(plan: TrainingPlan) -> int:
    """Pods of the run's earlier attempts that have not finished (they may still be writing their
    SIGTERM checkpoint): the next Job waits for them, so two attempts never train at once."""
    selector = ",".join([f"{k}={v}" for k, v in sorted(selector_labels(KIND, plan.meta.owner.name).items())]
                        + [f"{ATTEMPT_LABEL}!={plan.attempt}"])
    return stopping_pods(runtime().kube.list("v1", "Pod", plan.meta.namespace, label_selector=selector),
                         datetime.now(UTC))


def _carry_out(plan: TrainingPlan, decision: JobDecision, live: dict[str, Any] | None,
               job: dict[str, Any]) -> dict[str, Any] | None:
    """Do what decide_job decided; returns the Job as it is afterwards (None when there is none). The
    Job is created once and afterwards only (un)suspended or deleted, so Kueue (which admits a queued
    Job by unsuspending it) and the operator never fight over it."""
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
        # trainer checkpoints); the next attempt waits for them (_earlier_pods)
        kube.delete("batch/v1", "Job", ns, plan.job_name)
        return None
    return live


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=_INTERVAL * 5)
def on_change(body: kopf.Body, **kwargs: Any) -> None:
    """Reconcile at once on creation, spec change and operator start."""
    reconcile_run(dict(body), kwargs["forge_datasets"])


@kopf.timer(GROUP, VERSION, PLURAL, interval=_INTERVAL, initial_delay=_INTERVAL)
def on_timer(body: kopf.Body, **kwargs: Any) -> None:
    """Reconcile periodically: mirror progress, detect stalls and failures, see references become ready."""
    with contextlib.suppress(kopf.PermanentError, kopf.TemporaryError):
        reconcile_run(dict(body), kwargs["forge_datasets"])


@kopf.index(GROUP, VERSION, "forgedatasets")
def forge_datasets(*, namespace: str | None, name: str, status: kopf.Status,
                   **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    """The status of every watched ForgeDataset by (namespace, name), kept current by Kopf's watch: runs
    look up their datasets here instead of reading them from the API on every reconcile. Kopf calls
    the run handlers only once this index holds the initial listing."""
    return {(namespace, name): dict(status)}


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
def on_delete(body: kopf.Body, **_: Any) -> None:
    """Remove what the run produced as its retention says (default: keep the final model), write the
    audit record, then let go. Waits while a deployment or a later run still uses it."""
    rt = runtime()
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    users = [f"ForgeTrainingRun {r['metadata']['name']}" for r in rt.kube.list(API_VERSION, KIND, ns)
             if ((r.get("spec") or {}).get("init") or {}).get("baseRun") == name
             and not r["metadata"].get("deletionTimestamp")
             and ((r.get("status") or {}).get("phase") not in ("Succeeded", "Failed"))]
    users += [f"ForgeDeployment {d['metadata']['name']}" for d in rt.kube.list(API_VERSION, "ForgeDeployment", ns)
              if (d.get("spec") or {}).get("modelRef") == name and not d["metadata"].get("deletionTimestamp")]
    if users:
        message = f"still used by {', '.join(sorted(users))}; deletion waits until it is gone"
        post_event(dict(body), "DeletionBlocked", message, warning=True)
        raise kopf.TemporaryError(message, delay=rt.settings.reconcile_interval)
    release_artifacts(dict(body), KIND, default_policy="KeepFinal")
