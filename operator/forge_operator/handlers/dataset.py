"""ForgeDataset: the reconcile's steps for a dataset (one preparation Job, or one per worker), and its Kopf
handlers."""

from __future__ import annotations

from dataclasses import dataclass
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
from forge_operator.status.job import merge_worker_jobs, observe_job, unfinished_jobs
from forge_operator.status.pods import PodsSeen
from forge_trainer.config import DatasetProgress

KIND, PLURAL = DATASET.kind, DATASET.plural
GENERATION_LABEL = "forge.ai/generation"
_INTERVAL = OperatorSettings.from_env().reconcile_interval
Rc = Pass[ForgeDataset, ForgeDatasetStatus]


@dataclass(frozen=True)
class LiveJobs:
    """The dataset's Jobs after apply: each Job name of the plan with the live Job (None: absent)."""

    jobs: dict[str, dict[str, Any] | None]
    replaced: bool = False
    """Jobs of an older generation were deleted (the new attempt's times start afresh)."""


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

    def apply(self, rc: Rc, plan: DatasetPlan, manifests: list[dict[str, Any]]) -> LiveJobs:
        """Create the Jobs (and the ConfigMap, NetworkPolicy) once per generation. A Job of an older
        generation prepared something else: every such worker Job is deleted and the new attempt created.
        Within a generation a missing Job is created, unless a worker Job failed for good: that attempt is
        over (its other Jobs were stopped), and the next spec change starts a new one."""
        kube = runtime().kube
        names = plan.worker_job_names or (plan.job_name,)
        live = {name: kube.get("batch/v1", "Job", rc.namespace, name) for name in names}
        stale = [name for name, job in live.items()
                 if job is not None and job["metadata"].get("labels", {}).get(GENERATION_LABEL) != str(rc.generation)]
        for name in stale:
            kube.delete("batch/v1", "Job", rc.namespace, name)
            live[name] = None
        if stale:
            log.info("dataset %s/%s: spec changed (generation %s), replacing jobs %s", rc.namespace, rc.name,
                     rc.generation, ", ".join(stale))
        over = any((seen := observe_job(job)) is not None and seen.failed_final for job in live.values())
        missing = {name for name, job in live.items() if job is None}
        if missing and not over:
            for manifest in manifests:
                if manifest["kind"] != "Job":
                    kube.apply(manifest)
                elif manifest["metadata"]["name"] in missing:
                    manifest["metadata"]["labels"][GENERATION_LABEL] = str(rc.generation)
                    kube.apply(manifest)
            live = {name: kube.get("batch/v1", "Job", rc.namespace, name) for name in names}
        return LiveJobs(live, replaced=bool(stale))

    def observe(self, rc: Rc, resolved: ResolvedDataset, plan: DatasetPlan, applied: LiveJobs) -> DatasetObservation:
        progress, store = read_progress_checked(plan.output_uri, DatasetProgress, f"dataset {rc.namespace}/{rc.name}",
                                                plan.store)
        job = applied.jobs.get(plan.job_name)
        seen = observe_job(job)
        workers = [(name, applied.jobs.get(name)) for name in plan.worker_job_names[1:]]
        if plan.worker_job_names:
            seen = merge_worker_jobs(seen, [(name, observe_job(live)) for name, live in workers])
        # the pods of these Jobs (not those of replaced ones)
        uids = {uid for live in applied.jobs.values() if (uid := ((live or {}).get("metadata") or {}).get("uid"))}
        pods = look_at_pods(KIND, rc.name, rc.namespace, rc.now, rc.prev, uids) if uids else PodsSeen()
        return DatasetObservation(rc.generation, resolved=resolved.resolved, job_name=plan.job_name,
                                  output_uri=plan.output_uri, job=seen, progress=progress,
                                  replaced=applied.replaced, store=store, pods=pods,
                                  pods_stalled_after=runtime().settings.pods_stalled_after)

    def carry_out(self, rc: Rc, plan: DatasetPlan, applied: LiveJobs, status: ForgeDatasetStatus,
                  action: Action) -> None:
        """Stop the other workers of a failed split preparation (their pods would wait forever for the
        failed one's output); post the Warning Event of a new pod trouble."""
        if status.phase == DatasetPhase.FAILED and plan.worker_job_names:
            for name in unfinished_jobs([(name, observe_job(job)) for name, job in applied.jobs.items()]):
                runtime().kube.delete("batch/v1", "Job", rc.namespace, name)
                log.info("dataset %s/%s failed: deleted worker job %s", rc.namespace, rc.name, name)
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
