"""Derive a ForgeDataset's phase and conditions from what was observed."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from forge_operator.api.common import ConditionStatus, rfc3339
from forge_operator.api.dataset import DatasetPhase, DatasetReason, ForgeDatasetStatus
from forge_operator.status.conditions import (
    Action,
    StoreCheck,
    Waiting,
    begin_status,
    mark_ready,
    mark_references,
    mark_store,
    store_down,
)
from forge_operator.status.job import JobObservation
from forge_operator.status.pods import PodsSeen, mark_pods, mark_pods_stalled, stalled_text
from forge_trainer.config import DatasetProgress, WorkerProgress

TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE
TOKENIZER_READY = "TokenizerReady"
MAX_WORKERS_SHOWN = 64
"""Workers listed in status.workers at most (the object stays small whatever spec.parallelism is)."""


@dataclass(frozen=True)
class DatasetObservation:
    """Everything one reconcile saw about a dataset."""

    generation: int
    spec_error: str | None = None
    waiting: Waiting | None = None
    resolved: list[str] = field(default_factory=list)
    job_name: str | None = None
    output_uri: str | None = None
    job: JobObservation | None = None
    progress: DatasetProgress | None = None
    replaced: bool = False
    """The Job of an older generation was replaced by this one (its times start afresh)."""
    store: StoreCheck | None = None
    """How the store answered the progress read (None: nothing was read)."""
    pods: PodsSeen | None = None
    """The pods of the preparation Job (None: not looked at)."""
    pods_stalled_after: float = 600.0
    """Seconds pods may wait to start before the dataset is Stalled (the operator's podsStalledAfter)."""


def shown_workers(workers: list[WorkerProgress],
                  limit: int = MAX_WORKERS_SHOWN) -> tuple[list[WorkerProgress], str | None]:
    """The workers status shows (all up to `limit`; beyond, the failed, then the running, then the rest, by
    index) and a summary of all when some are left out (None when none is)."""
    if len(workers) <= limit:
        return list(workers), None
    failed = [w for w in workers if w.error]
    running = [w for w in workers if not w.error and not w.committed]
    rest = [w for w in workers if not w.error and w.committed]
    shown = sorted([*failed, *running, *rest][:limit], key=lambda w: w.worker)
    return shown, (f"{len(workers)} workers: {len(rest)} committed their stage, {len(running)} running, "
                   f"{len(failed)} failed; {limit} shown (failed and running first)")


def derive_dataset_status(prev: ForgeDatasetStatus, obs: DatasetObservation,
                          now: datetime) -> tuple[ForgeDatasetStatus, Action]:
    """The status a dataset should have after this observation (a dataset never asks for an action)."""
    stamp = rfc3339(now)
    status = begin_status(prev, obs.generation, obs.spec_error, stamp)
    if obs.spec_error:
        status.phase = DatasetPhase.FAILED
        mark_ready(status, FALSE, DatasetReason.INVALID_SPEC, obs.spec_error, stamp)
        return status, Action.NONE
    mark_references(status, obs.resolved, obs.waiting, stamp)
    mark_store(status, obs.store, stamp)
    if obs.replaced:
        status.started_at = status.completed_at = None
        status.workers = status.workers_summary = None
    status.job_name = obs.job_name or status.job_name
    status.output_uri = obs.output_uri or status.output_uri
    progress = obs.progress
    if progress is not None:
        status.stage = progress.stage
        status.documents_done = progress.documents_done
        status.bytes_done = progress.bytes_done
        status.counts = progress.counts
        if progress.workers:  # the manifest stage writes none: the last per-worker view stays
            status.workers, status.workers_summary = shown_workers(progress.workers)
    job = obs.job
    pods = obs.pods if job is not None and not (job.complete or job.failed_final) else None
    stalled = mark_pods(status, obs.pods, now, obs.pods_stalled_after)
    mark_pods_stalled(status, pods, stalled, obs.pods_stalled_after, stamp)
    cause = obs.pods.cause if obs.pods else None
    if obs.waiting is not None:
        status.phase = DatasetPhase.PENDING
        mark_ready(status, FALSE, DatasetReason.WAITING_FOR_TOKENIZER, obs.waiting.message, stamp)
    elif job is None:
        status.phase = DatasetPhase.PENDING
        mark_ready(status, FALSE, DatasetReason.JOB_CREATED, f"creating preparation job {obs.job_name}", stamp)
    elif job.failed_final:
        status.phase = DatasetPhase.FAILED
        reason = "; ".join(part for part in (progress.error if progress else None,
                                             cause.summary if cause else None) if part)
        reason = reason or job.message or "job failed"
        # a failed worker's Job is kept (the others are stopped): its pods hold the logs to read
        status.job_name = job.failed_job or status.job_name
        mark_ready(status, FALSE, DatasetReason.JOB_FAILED, f"preparation job {job.failed_job or obs.job_name} failed: "
                   f"{reason}", stamp)
        status.completed_at = status.completed_at or stamp
    elif job.complete and progress is None and store_down(obs.store):
        # the result is in the store, which did not answer: wait for it instead of failing the dataset
        status.phase = DatasetPhase.RUNNING
        mark_ready(status, FALSE, DatasetReason.JOB_RUNNING,
                   f"preparation job {obs.job_name} finished; its result is read once the object store answers",
                   stamp)
    elif job.complete:
        if progress is None or progress.manifest_uri is None or progress.stage != "done":
            status.phase = DatasetPhase.FAILED
            mark_ready(status, FALSE, DatasetReason.RESULT_MISSING,
                       f"preparation job {obs.job_name} succeeded but wrote no manifest under {obs.output_uri}", stamp)
        else:
            status.phase = DatasetPhase.READY
            status.workers = status.workers_summary = None  # their work is done; the counts above are final
            status.manifest_uri = progress.manifest_uri
            status.digest = progress.manifest_digest
            status.tokenizer_uri = progress.tokenizer_uri
            kept = progress.counts.documents_kept
            mark_ready(status, TRUE, DatasetReason.PREPARED,
                       f"{kept} documents kept, {progress.counts.tokens} tokens; digest {progress.manifest_digest}",
                       stamp)
        status.completed_at = status.completed_at or stamp
    elif pods is not None and pods.trouble is not None and (stalled or pods.blocking is not None):
        # no pod runs, and the pods say why
        status.phase = DatasetPhase.PENDING
        if stalled:
            mark_ready(status, FALSE, "Stalled", f"preparation job {obs.job_name}: {stalled_text(pods, obs.pods_stalled_after)}",
                       stamp)
        else:
            mark_ready(status, FALSE, pods.trouble.trouble.value,
                       f"preparation job {obs.job_name} cannot start: {pods.headline()}", stamp)
    else:
        status.phase = DatasetPhase.RUNNING
        status.started_at = status.started_at or stamp
        detail = f" ({progress.stage}, {progress.documents_done} documents)" if progress else ""
        if cause is not None and pods is not None:
            mark_ready(status, FALSE, cause.trouble.value,
                       f"preparation job {obs.job_name} is running{detail}; {pods.headline()}", stamp)
        else:
            mark_ready(status, FALSE, DatasetReason.JOB_RUNNING,
                       f"preparation job {obs.job_name} is running{detail}", stamp)
    if job is not None:
        status.started_at = status.started_at or stamp
    return status, Action.NONE
