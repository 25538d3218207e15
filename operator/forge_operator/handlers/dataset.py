"""ForgeDataset: the reconcile's steps for a dataset (one preparation Job), and its Kopf handlers."""

from __future__ import annotations

from typing import Any

import kopf

from forge_operator.api import DATASET, GROUP, VERSION
from forge_operator.api.dataset import DatasetPhase, ForgeDataset, ForgeDatasetStatus
from forge_operator.handlers.adapter import Adapter, Pass
from forge_operator.handlers.cleanup import finalize
from forge_operator.handlers.pod_faults import look_at_pods, tell_pod_trouble
from forge_operator.handlers.reconcile import on_event, on_tick
from forge_operator.handlers.runtime import log, read_progress_checked, runtime
from forge_operator.plan.dataset import DatasetPlan, plan_dataset
from forge_operator.render.dataset import render_dataset
from forge_operator.resolve.dataset import ResolvedDataset, resolve_dataset
from forge_operator.resolve.lookup import Lookup
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import Action, Waiting
from forge_operator.status.dataset import DatasetObservation, derive_dataset_status
from forge_operator.status.job import merge_worker_jobs, observe_job
from forge_operator.status.pods import PodsSeen
from forge_trainer.config import DatasetProgress

KIND, PLURAL = DATASET.kind, DATASET.plural
GENERATION_LABEL = "forge.ai/generation"
_INTERVAL = OperatorSettings.from_env().reconcile_interval
Rc = Pass[ForgeDataset, ForgeDatasetStatus]


class DatasetAdapter(Adapter[ForgeDataset, ForgeDatasetStatus]):
    """The reconcile's steps for a ForgeDataset."""

    info = DATASET
    resource_model = ForgeDataset
    status_model = ForgeDatasetStatus
    settled = frozenset({DatasetPhase.READY, DatasetPhase.FAILED})

    def resolve(self, rc: Rc, lookup: Lookup) -> ResolvedDataset | Waiting:
        return resolve_dataset(rc.resource, lookup, bucket=runtime().settings.store_bucket)

    def plan(self, rc: Rc, resolved: ResolvedDataset) -> DatasetPlan:
        return plan_dataset(rc.resource, runtime().settings, reused_tokenizer_uri=resolved.reused_tokenizer_uri)

    def render(self, plan: DatasetPlan) -> list[dict[str, Any]]:
        return render_dataset(plan)

    def apply(self, rc: Rc, plan: DatasetPlan, manifests: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
        """Create the Job (and its ConfigMap, NetworkPolicy) once per generation; a Job of an older
        generation prepared something else and is replaced. Returns (the Job, whether it was replaced)."""
        kube = runtime().kube
        job = kube.get("batch/v1", "Job", rc.namespace, plan.job_name)
        replaced = job is not None and job["metadata"].get("labels", {}).get(GENERATION_LABEL) != str(rc.generation)
        if replaced:
            for name in plan.worker_job_names or (plan.job_name,):  # a split preparation: every worker's Job
                kube.delete("batch/v1", "Job", rc.namespace, name)
            log.info("dataset %s/%s: spec changed (generation %s), replacing job %s", rc.namespace, rc.name,
                     rc.generation, plan.job_name)
        if job is None or replaced:
            for manifest in manifests:
                if manifest["kind"] == "Job":
                    manifest["metadata"]["labels"][GENERATION_LABEL] = str(rc.generation)
                kube.apply(manifest)
            job = kube.get("batch/v1", "Job", rc.namespace, plan.job_name)
        return job, replaced

    def observe(self, rc: Rc, resolved: ResolvedDataset, plan: DatasetPlan,
                applied: tuple[dict[str, Any] | None, bool]) -> DatasetObservation:
        job, replaced = applied
        progress, store = read_progress_checked(plan.output_uri, DatasetProgress, f"dataset {rc.namespace}/{rc.name}",
                                                plan.store)
        seen = observe_job(job)
        workers = [(name, runtime().kube.get("batch/v1", "Job", rc.namespace, name))
                   for name in plan.worker_job_names[1:]]
        if plan.worker_job_names:
            seen = merge_worker_jobs(seen, [(name, observe_job(live)) for name, live in workers])
        # the pods of these Jobs (not those of replaced ones)
        uids = {uid for live in [job, *(live for _, live in workers)]
                if (uid := ((live or {}).get("metadata") or {}).get("uid"))}
        pods = look_at_pods(KIND, rc.name, rc.namespace, rc.now, rc.prev, uids) if uids else PodsSeen()
        return DatasetObservation(rc.generation, resolved=resolved.resolved, job_name=plan.job_name,
                                  output_uri=plan.output_uri, job=seen, progress=progress,
                                  replaced=replaced, store=store, pods=pods,
                                  pods_stalled_after=runtime().settings.pods_stalled_after)

    def carry_out(self, rc: Rc, plan: DatasetPlan, applied: tuple[dict[str, Any] | None, bool],
                  status: ForgeDatasetStatus, action: Action) -> None:
        """Post the Warning Event of a new pod trouble."""
        tell_pod_trouble(rc.body, rc.prev, status)


ADAPTER = DatasetAdapter(DatasetObservation, derive_dataset_status)


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=_INTERVAL * 5)
def on_change(body: kopf.Body, **kwargs: Any) -> None:
    """Reconcile at once on creation, spec change and operator start."""
    on_event(ADAPTER, body, kwargs)


@kopf.timer(GROUP, VERSION, PLURAL, interval=_INTERVAL, initial_delay=_INTERVAL)
def on_timer(body: kopf.Body, **kwargs: Any) -> None:
    """Reconcile periodically while the dataset is not settled (mirrors progress, sees the Job end)."""
    on_tick(ADAPTER, body, kwargs)


@kopf.on.delete(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
def on_delete(body: kopf.Body, **kwargs: Any) -> None:
    """Remove what the dataset produced (as its retention says), write the audit record, then let go.
    Waits while a training run in the namespace still uses the dataset."""
    finalize(body, KIND, "Delete", kwargs)
