"""Read what matters out of a raw batch/v1 Job."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class JobObservation:
    """The state of a Job as the operator needs it."""

    active: int = 0
    succeeded: int = 0
    failed: int = 0
    complete: bool = False
    failed_final: bool = False
    suspended: bool = False
    message: str | None = None
    ready: int | None = None
    """Pods with a Ready condition (status.ready, Kubernetes 1.24+); None where the server predates it."""
    suspend_supported: bool = False
    """Whether the API server knows Job spec.suspend (1.21+ defaults it, so a live Job carries it)."""
    annotations: dict[str, str] = field(default_factory=dict)
    """The Job's annotations."""
    failed_job: str | None = None
    """Of a preparation split across worker Jobs: the worker Job that failed for good (None: worker 0's or
    none)."""


def observe_job(job: dict[str, Any] | None) -> JobObservation | None:
    """The observation of `job`, or None when it does not exist."""
    if job is None:
        return None
    status = job.get("status") or {}
    complete = failed = False
    message = None
    for cond in status.get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            complete = True
        elif cond.get("type") == "Failed":
            failed = True
            message = cond.get("message") or cond.get("reason")
    return JobObservation(
        active=int(status.get("active") or 0), succeeded=int(status.get("succeeded") or 0),
        failed=int(status.get("failed") or 0), complete=complete, failed_final=failed,
        suspended=bool((job.get("spec") or {}).get("suspend")), message=message,
        ready=int(status["ready"]) if status.get("ready") is not None else None,
        suspend_supported="suspend" in (job.get("spec") or {}),
        annotations=dict((job.get("metadata") or {}).get("annotations") or {}),
    )


def merge_worker_jobs(first: JobObservation | None,
                      others: list[tuple[str, JobObservation | None]]) -> JobObservation | None:
    """One observation of a preparation split across worker Jobs: worker 0's Job (it writes the manifest, so it
    completes last), failed for good as soon as another worker's Job is (its pods would wait forever; its
    name goes in `failed_job`), and active while any worker's pod runs. `others` pairs each other worker's
    Job name with its observation. Worker 0's Job may be gone: the operator stops the workers of a failed
    preparation (`unfinished_jobs`)."""
    failed = [(name, o) for name, o in others if o is not None and o.failed_final]
    if first is None:
        if not failed:
            return None
        first = JobObservation()
    seen = [o for _, o in others if o is not None]
    merged = replace(first, active=first.active + sum(o.active for o in seen),
                     failed=first.failed + sum(o.failed for o in seen))
    if failed and not first.complete and not first.failed_final:
        name, job = failed[0]
        return replace(merged, failed_final=True, failed_job=name,
                       message=f"worker Job {name} failed: {job.message or 'its pods failed too often'}")
    return merged


def unfinished_jobs(jobs: list[tuple[str, JobObservation | None]]) -> list[str]:
    """The Jobs that exist and have neither completed nor failed for good: those to delete when the work
    they share has failed (the failed ones stay, so their pods and logs can be read)."""
    return [name for name, job in jobs if job is not None and not job.complete and not job.failed_final]
