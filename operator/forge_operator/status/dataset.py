"""Derive a ForgeDataset's phase and conditions from what was observed."""

from __future__ import annotations

from dataclasses import dataclass

from forge_operator.api.common import ConditionStatus
from forge_operator.api.dataset import DatasetPhase, DatasetReason, ForgeDatasetStatus
from forge_operator.status.conditions import INVALID_SPEC, READY, set_condition
from forge_operator.status.job import JobObservation
from forge_trainer.config import DatasetProgress

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE


@dataclass(frozen=True)
class DatasetObservation:
    """Everything one reconcile saw about a dataset."""

    generation: int
    spec_error: str | None = None
    waiting_for: str | None = None
    job_name: str | None = None
    output_uri: str | None = None
    job: JobObservation | None = None
    progress: DatasetProgress | None = None


def derive_dataset_status(prev: ForgeDatasetStatus, obs: DatasetObservation, now: str) -> ForgeDatasetStatus:
    """The status a dataset should have after this observation."""
    gen = obs.generation
    status = prev.model_copy(deep=True)
    status.observed_generation = gen
    conds = set_condition(status.conditions, INVALID_SPEC, T if obs.spec_error else F,
                          DatasetReason.INVALID_SPEC.value if obs.spec_error else "Valid",
                          obs.spec_error or "", gen, now)

    def ready(st: ConditionStatus, reason: DatasetReason, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, READY, st, reason.value, message, gen, now)
        status.message = message

    if obs.spec_error:
        status.phase = DatasetPhase.FAILED
        ready(F, DatasetReason.INVALID_SPEC, obs.spec_error)
        status.conditions = conds
        return status
    status.job_name = obs.job_name or status.job_name
    status.output_uri = obs.output_uri or status.output_uri
    progress = obs.progress
    if progress is not None:
        status.stage = progress.stage
        status.documents_done = progress.documents_done
        status.bytes_done = progress.bytes_done
        status.counts = progress.counts
    job = obs.job
    if obs.waiting_for:
        status.phase = DatasetPhase.PENDING
        ready(F, DatasetReason.WAITING_FOR_TOKENIZER, obs.waiting_for)
    elif job is None:
        status.phase = DatasetPhase.PENDING
        ready(F, DatasetReason.JOB_CREATED, f"creating preparation job {obs.job_name}")
    elif job.failed_final:
        status.phase = DatasetPhase.FAILED
        reason = (progress.error if progress and progress.error else None) or job.message or "job failed"
        ready(F, DatasetReason.JOB_FAILED, f"preparation job {obs.job_name} failed: {reason}")
        status.completed_at = status.completed_at or now
    elif job.complete:
        if progress is None or progress.manifest_uri is None or progress.stage != "done":
            status.phase = DatasetPhase.FAILED
            ready(F, DatasetReason.RESULT_MISSING,
                  f"preparation job {obs.job_name} succeeded but wrote no manifest under {obs.output_uri}")
        else:
            status.phase = DatasetPhase.READY
            status.manifest_uri = progress.manifest_uri
            status.digest = progress.manifest_digest
            status.tokenizer_uri = progress.tokenizer_uri
            kept = progress.counts.documents_kept
            ready(T, DatasetReason.PREPARED,
                  f"{kept} documents kept, {progress.counts.tokens} tokens; digest {progress.manifest_digest}")
        status.completed_at = status.completed_at or now
    else:
        status.phase = DatasetPhase.RUNNING
        status.started_at = status.started_at or now
        detail = f" ({progress.stage}, {progress.documents_done} documents)" if progress else ""
        ready(F, DatasetReason.JOB_RUNNING, f"preparation job {obs.job_name} is running{detail}")
    if job is not None:
        status.started_at = status.started_at or now
    status.conditions = conds
    return status
