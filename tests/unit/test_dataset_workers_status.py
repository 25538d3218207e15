"""A split preparation in the dataset's status: the failed worker's Job is named and the others are to be
stopped, each worker's live progress is listed (bounded), and `forge describe` shows it as a table."""

from __future__ import annotations

from datetime import UTC, datetime

from forge_operator.api.dataset import DatasetPhase, ForgeDatasetStatus
from forge_operator.local.listing import render_describe
from forge_operator.status.conditions import get_condition
from forge_operator.status.dataset import (
    MAX_WORKERS_SHOWN,
    DatasetObservation,
    derive_dataset_status,
    shown_workers,
)
from forge_operator.status.job import JobObservation, merge_worker_jobs, unfinished_jobs
from forge_trainer.config import DatasetProgress, WorkerProgress

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FAILED = JobObservation(failed=3, failed_final=True, message="BackoffLimitExceeded")


def test_the_unfinished_worker_jobs_of_a_failed_preparation_are_stopped_the_failed_one_kept() -> None:
    jobs = [("corpus-prepare", JobObservation(active=1)), ("corpus-prepare-1", FAILED),
            ("corpus-prepare-2", JobObservation(succeeded=1, complete=True)), ("corpus-prepare-3", None),
            ("corpus-prepare-4", JobObservation())]  # created, no pod yet
    assert unfinished_jobs(jobs) == ["corpus-prepare", "corpus-prepare-4"]


def test_once_worker_0s_job_is_stopped_the_failure_stays_and_names_the_failed_worker() -> None:
    merged = merge_worker_jobs(None, [("corpus-prepare-1", FAILED), ("corpus-prepare-2", None)])
    assert merged is not None and merged.failed_final and merged.failed_job == "corpus-prepare-1"
    progress = DatasetProgress(stage="failed", error="scan worker 1: reading source s3://raw/ failed")
    status, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(
        2, job_name="corpus-prepare", output_uri="s3://b/p", job=merged, progress=progress), T0)
    assert status.phase is DatasetPhase.FAILED
    assert status.job_name == "corpus-prepare-1"  # the Job whose pods hold the logs
    message = (get_condition(status.conditions, "Ready") or status).message
    assert message == "preparation job corpus-prepare-1 failed: scan worker 1: reading source s3://raw/ failed"


def _workers(n: int) -> list[WorkerProgress]:
    return [WorkerProgress(worker=w, stage="scan", committed=w % 3 != 0, documents_read=w,
                           error="scan worker 7: boom" if w == 7 else None) for w in range(n)]


def test_status_lists_every_worker_up_to_the_bound_then_the_failed_and_running_first() -> None:
    few = _workers(4)
    assert shown_workers(few) == (few, None)
    many = _workers(200)
    shown, summary = shown_workers(many)
    assert len(shown) == MAX_WORKERS_SHOWN == 64
    assert shown[0].worker == 0 and any(w.worker == 7 for w in shown)
    assert sum(1 for w in shown if not w.committed) == 63  # the failed one, then 63 of the 67 running
    assert summary == "200 workers: 132 committed their stage, 67 running, 1 failed; 64 shown (failed and running first)"


def test_status_mirrors_the_workers_keeps_them_through_the_manifest_stage_and_drops_them_when_ready() -> None:
    live = DatasetProgress(stage="scan 1/5 (1/2 workers)", documents_done=30, workers=_workers(2))
    obs = DatasetObservation(1, job_name="corpus-prepare", output_uri="s3://b/p",
                             job=JobObservation(active=2), progress=live)
    s1, _ = derive_dataset_status(ForgeDatasetStatus(), obs, T0)
    assert s1.workers == _workers(2) and s1.workers_summary is None
    s2, _ = derive_dataset_status(s1, DatasetObservation(1, job_name="corpus-prepare", output_uri="s3://b/p",
                                                         job=JobObservation(active=1),
                                                         progress=DatasetProgress(stage="manifest")), T0)
    assert s2.workers == _workers(2)
    wire = s2.to_wire()
    assert wire["workers"][1] == {"worker": 1, "stage": "scan", "committed": True, "documentsRead": 1,
                                  "bytesDone": 0}
    done = DatasetProgress(stage="done", manifest_uri="s3://b/p/manifest.json", manifest_digest="sha256:abc")
    s3, _ = derive_dataset_status(s2, DatasetObservation(1, job_name="corpus-prepare", output_uri="s3://b/p",
                                                         job=JobObservation(succeeded=1, complete=True),
                                                         progress=done), T0)
    assert s3.phase is DatasetPhase.READY and s3.workers is None  # the final counts say it all


def test_describe_prints_a_table_of_the_workers() -> None:
    workers = [WorkerProgress(worker=0, stage="dedup", committed=False, documents_read=1200, bytes_done=2_500_000,
                              bytes_total=2_500_000),
               WorkerProgress(worker=1, stage="scan", documents_read=800, bytes_done=1_000_000,
                              bytes_total=3_000_000, error="scan worker 1: reading source failed")]
    status = ForgeDatasetStatus(phase=DatasetPhase.RUNNING, stage="scan 1/5 (1/2 workers)", workers=workers)
    text = render_describe({"kind": "ForgeDataset", "metadata": {"name": "corpus", "namespace": "ml"},
                            "status": status.to_wire()})
    rows = text.split("  workers:", 1)[1].splitlines()
    assert rows[1].split() == ["WORKER", "STAGE", "COMMITTED", "DOCUMENTS", "BYTES", "ERROR"]
    assert rows[2].split() == ["0", "dedup", "no", "1200", "2.5", "MB", "/", "2.5", "MB"]
    assert rows[3].split()[:9] == ["1", "scan", "no", "800", "1.0", "MB", "/", "3.0", "MB"]
    assert rows[3].endswith("scan worker 1: reading source failed")
