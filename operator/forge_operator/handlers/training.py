"""ForgeTrainingRun handlers: parse, resolve, plan, render, apply, observe, derive, patch once."""

from __future__ import annotations

import contextlib
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
from forge_operator.plan.training import ResolvedRefs, TrainingPlan, plan_training_run
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.render.training import render_training
from forge_operator.settings import OperatorSettings
from forge_operator.status.job import observe_job
from forge_operator.status.training import RunAction, RunObservation, derive_run_status
from forge_operator.store import StoreError
from forge_operator.store.artifacts import read_progress
from forge_trainer.config import TrainProgress

KIND = "ForgeTrainingRun"
PLURAL = "forgetrainingruns"
PINNED = "forge.ai/immutable-spec"
SETTLED = {RunPhase.SUCCEEDED, RunPhase.FAILED}
_INTERVAL = OperatorSettings.from_env().reconcile_interval


def reconcile_run(body: dict[str, Any]) -> None:
    """One reconcile of a ForgeTrainingRun."""
    timed_reconcile(KIND, _reconcile, body)


def _fail_invalid(body: dict[str, Any], prev: ForgeTrainingRunStatus, gen: int, message: str,
                  now: datetime) -> NoReturn:
    status, _ = derive_run_status(prev, RunObservation(gen, spec_error=message), now)
    publish_status(body, prev, status)
    raise kopf.PermanentError(message)


def _resolve(run: ForgeTrainingRun, ns: str) -> tuple[ResolvedRefs, Lineage, list[str]] | Waiting:
    rt = runtime()
    spec = run.spec
    ds = ready_dataset(rt.kube, ns, spec.dataset_ref, "spec.datasetRef")
    if isinstance(ds, Waiting):
        return ds
    resolved = ["DatasetReady"]
    eval_status: dict[str, Any] = {}
    if spec.eval_dataset_ref:
        ev = ready_dataset(rt.kube, ns, spec.eval_dataset_ref, "spec.evalDatasetRef")
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


def _reconcile(body: dict[str, Any]) -> None:
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

    refs = _resolve(run, ns)
    if isinstance(refs, Waiting):
        status, _ = derive_run_status(prev, RunObservation(gen, waiting_condition=refs.condition,
                                                           waiting_for=refs.message), now)
        publish_status(body, prev, status)
        raise kopf.TemporaryError(refs.message, delay=rt.settings.reconcile_interval)
    resolved_refs, lineage, resolved = refs
    attempt = prev.restarts or 0
    try:
        plan = plan_training_run(run, rt.settings, resolved_refs, attempt=attempt)
    except InvalidSpecError as exc:
        _fail_invalid(body, prev, gen, str(exc), now)
    lineage = lineage.model_copy(update={"config_hash": plan.config_hash})
    if not pinned:
        rt.kube.patch(API_VERSION, KIND, ns, name, {"metadata": {"annotations": {PINNED: json.dumps(current)}}})

    job = _apply(plan, run.spec.suspend)
    progress = None
    try:
        progress = read_progress(plan.output_uri, rt.settings.store, TrainProgress)
    except StoreError as exc:
        log.warning("run %s/%s: cannot read progress: %s", ns, name, exc)
    observed_job = observe_job(job)
    suspended = observed_job is not None and observed_job.suspended and not (observed_job.active or 0)
    obs = RunObservation(gen, job_name=plan.job_name, output_uri=plan.output_uri, job=observed_job,
                         progress=progress, suspended=suspended, max_restarts=run.spec.max_restarts,
                         stall_timeout_seconds=run.spec.stall_timeout_seconds, lineage=lineage, resolved=resolved)
    status, action = derive_run_status(prev, obs, now)
    if action is RunAction.RESTART:
        rt.kube.delete("batch/v1", "Job", ns, plan.job_name)
        post_event(body, "JobRestarted", status.message or "job recreated", warning=True)
    publish_status(body, prev, status)


def _apply(plan: TrainingPlan, suspend: bool) -> dict[str, Any] | None:
    """Apply the attempt's objects; the Job is created once and afterwards only (un)suspended, so Kueue
    (which admits a queued job by unsuspending it) and the operator never fight over it."""
    rt = runtime()
    ns = plan.meta.namespace
    job = rt.kube.get("batch/v1", "Job", ns, plan.job_name)
    for manifest in render_training(plan):
        if manifest["kind"] == "Job":
            if job is None:
                job = rt.kube.apply(manifest)
            elif bool((job.get("spec") or {}).get("suspend")) != suspend and (suspend or plan.queue is None):
                rt.kube.patch("batch/v1", "Job", ns, plan.job_name, {"spec": {"suspend": suspend}})
                job = rt.kube.get("batch/v1", "Job", ns, plan.job_name)
        else:
            rt.kube.apply(manifest)
    return job


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=_INTERVAL * 5)
def on_change(body: kopf.Body, **_: Any) -> None:
    """Reconcile at once on creation, spec change and operator start."""
    reconcile_run(dict(body))


@kopf.timer(GROUP, VERSION, PLURAL, interval=_INTERVAL, initial_delay=_INTERVAL)
def on_timer(body: kopf.Body, **_: Any) -> None:
    """Reconcile periodically: mirror progress, detect stalls and failures, see references become ready."""
    with contextlib.suppress(kopf.PermanentError, kopf.TemporaryError):
        reconcile_run(dict(body))


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
