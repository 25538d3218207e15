"""ForgeDataset handlers: parse, resolve, plan, render, apply, observe, derive, patch once."""

from __future__ import annotations

import contextlib
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from forge_operator.api.common import API_VERSION, GROUP, VERSION, now_rfc3339
from forge_operator.api.dataset import DatasetPhase, ForgeDataset, ForgeDatasetStatus
from forge_operator.api.errors import spec_error_message
from forge_operator.handlers.cleanup import release_artifacts
from forge_operator.handlers.runtime import (
    log,
    parse_status,
    post_event,
    publish_status,
    runtime,
    timed_reconcile,
)
from forge_operator.plan.dataset import plan_dataset
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.render.dataset import render_dataset
from forge_operator.settings import OperatorSettings
from forge_operator.status.dataset import DatasetObservation, derive_dataset_status
from forge_operator.status.job import observe_job
from forge_operator.store import StoreError
from forge_operator.store.artifacts import (
    read_progress,
)
from forge_trainer.config import DatasetProgress

KIND = "ForgeDataset"
PLURAL = "forgedatasets"
GENERATION_LABEL = "forge.ai/generation"
SETTLED = {DatasetPhase.READY, DatasetPhase.FAILED}
_INTERVAL = OperatorSettings.from_env().reconcile_interval


def reconcile_dataset(body: dict[str, Any]) -> None:
    """One reconcile of a ForgeDataset."""
    timed_reconcile(KIND, _reconcile, body)


def _reconcile(body: dict[str, Any]) -> None:
    rt = runtime()
    meta = body["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], int(meta.get("generation") or 1)
    prev = parse_status(ForgeDatasetStatus, body)
    now = now_rfc3339()
    if prev.phase in SETTLED and prev.observed_generation == gen:
        return
    try:
        ds = ForgeDataset.model_validate(body)
    except ValidationError as exc:
        _fail_invalid(body, prev, gen, spec_error_message(exc), now)
    reused, waiting = None, None
    ref = ds.spec.tokenizer.dataset_ref
    if ref is not None:
        other = rt.kube.get(API_VERSION, KIND, ns, ref)
        other_status = (other or {}).get("status") or {}
        if other_status.get("phase") != DatasetPhase.READY.value or not other_status.get("tokenizerUri"):
            waiting = f"waiting for ForgeDataset {ref} (tokenizer.datasetRef) to be Ready"
        else:
            reused = str(other_status["tokenizerUri"])
    if waiting:
        publish_status(body, prev, derive_dataset_status(prev, DatasetObservation(gen, waiting_for=waiting), now))
        raise kopf.TemporaryError(waiting, delay=rt.settings.reconcile_interval)
    try:
        plan = plan_dataset(ds, rt.settings, reused_tokenizer_uri=reused)
    except InvalidSpecError as exc:
        _fail_invalid(body, prev, gen, str(exc), now)

    job = rt.kube.get("batch/v1", "Job", ns, plan.job_name)
    if job is not None and job["metadata"].get("labels", {}).get(GENERATION_LABEL) != str(gen):
        # the spec changed: the old job prepared something else; replace it
        rt.kube.delete("batch/v1", "Job", ns, plan.job_name)
        log.info("dataset %s/%s: spec changed (generation %s), replacing job %s", ns, name, gen, plan.job_name)
        job = None
        prev = prev.model_copy(update={"started_at": None, "completed_at": None})
    if job is None:
        for manifest in render_dataset(plan):
            if manifest["kind"] == "Job":
                manifest["metadata"]["labels"][GENERATION_LABEL] = str(gen)
            rt.kube.apply(manifest)
        job = rt.kube.get("batch/v1", "Job", ns, plan.job_name)

    progress = None
    try:
        progress = read_progress(plan.output_uri, rt.settings.store, DatasetProgress)
    except StoreError as exc:
        log.warning("dataset %s/%s: cannot read progress: %s", ns, name, exc)
    obs = DatasetObservation(gen, job_name=plan.job_name, output_uri=plan.output_uri, job=observe_job(job),
                             progress=progress)
    publish_status(body, prev, derive_dataset_status(prev, obs, now))


def _fail_invalid(body: dict[str, Any], prev: ForgeDatasetStatus, gen: int, message: str, now: str) -> NoReturn:
    publish_status(body, prev, derive_dataset_status(prev, DatasetObservation(gen, spec_error=message), now))
    raise kopf.PermanentError(message)


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=_INTERVAL * 5)
def on_change(body: kopf.Body, **_: Any) -> None:
    """Reconcile at once on creation, spec change and operator start."""
    reconcile_dataset(dict(body))


@kopf.timer(GROUP, VERSION, PLURAL, interval=_INTERVAL, initial_delay=_INTERVAL)
def on_timer(body: kopf.Body, **_: Any) -> None:
    """Reconcile periodically while the dataset is not settled (mirrors progress, sees the Job end)."""
    # an invalid spec is already reported in status; the timer must not retry it
    with contextlib.suppress(kopf.PermanentError):
        reconcile_dataset(dict(body))


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
def on_delete(body: kopf.Body, **_: Any) -> None:
    """Remove what the dataset produced (as its retention says), write the audit record, then let go.
    Waits while a training run in the namespace still uses the dataset."""
    rt = runtime()
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    users = [r["metadata"]["name"] for r in rt.kube.list(API_VERSION, "ForgeTrainingRun", ns)
             if name in ((r.get("spec") or {}).get("datasetRef"), (r.get("spec") or {}).get("evalDatasetRef"))
             and not r["metadata"].get("deletionTimestamp")]
    if users:
        message = f"still used by ForgeTrainingRun {', '.join(sorted(users))}; deletion waits until it is gone"
        post_event(dict(body), "DeletionBlocked", message, warning=True)
        raise kopf.TemporaryError(message, delay=rt.settings.reconcile_interval)
    release_artifacts(dict(body), KIND, default_policy="Delete")
