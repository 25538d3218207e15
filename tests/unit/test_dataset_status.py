"""A dataset's phase and conditions follow what its Job and progress file say."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from forge_operator.api.common import ConditionStatus
from forge_operator.api.dataset import DatasetPhase, ForgeDatasetStatus
from forge_operator.status.conditions import Waiting, get_condition
from forge_operator.status.dataset import DatasetObservation, derive_dataset_status
from forge_operator.status.job import observe_job
from forge_trainer.config import DatasetCounts, DatasetProgress

JOB = "corpus-prepare"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1, T2 = T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)


def _obs(job: dict | None, progress: DatasetProgress | None = None, gen: int = 1) -> DatasetObservation:  # type: ignore[type-arg]
    return DatasetObservation(gen, job_name=JOB, output_uri="s3://b/p", job=observe_job(job), progress=progress)


DONE = DatasetProgress(stage="done", documents_done=10, manifest_uri="s3://b/p/manifest.json",
                       manifest_digest="sha256:abc", tokenizer_uri="s3://b/p/tokenizer.json",
                       counts=DatasetCounts(documents_read=10, documents_kept=8, dropped={"too_short": 2},
                                            tokens=1234))
COMPLETE = {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}}
FAILED = {"status": {"failed": 3, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                                                  "message": "Job has reached the specified backoff limit"}]}}


def test_lifecycle_pending_running_ready() -> None:
    s0, _ = derive_dataset_status(ForgeDatasetStatus(), _obs(None), T0)
    assert s0.phase is DatasetPhase.PENDING
    s1, _ = derive_dataset_status(s0, _obs({"status": {"active": 1}},
                                           DatasetProgress(stage="reading", documents_done=4)), T1)
    assert s1.phase is DatasetPhase.RUNNING and s1.documents_done == 4
    assert "reading, 4 documents" in (get_condition(s1.conditions, "Ready") or s1).message
    s2, _ = derive_dataset_status(s1, _obs(COMPLETE, DONE), T2)
    assert s2.phase is DatasetPhase.READY
    ready = get_condition(s2.conditions, "Ready")
    assert ready is not None and ready.status is ConditionStatus.TRUE and ready.last_transition_time == "2026-01-01T00:00:02Z"
    assert ready.observed_generation == 1 and s2.observed_generation == 1
    assert s2.digest == "sha256:abc" and s2.counts and s2.counts.dropped == {"too_short": 2}
    assert s2.started_at == "2026-01-01T00:00:01Z" and s2.completed_at == "2026-01-01T00:00:02Z"


def test_unchanged_condition_keeps_its_transition_time() -> None:
    s1, _ = derive_dataset_status(ForgeDatasetStatus(), _obs({"status": {"active": 1}}), T1)
    s2, _ = derive_dataset_status(s1, _obs({"status": {"active": 1}}), T2)
    assert s1 == s2


def test_failed_job_reports_the_workload_reason() -> None:
    progress = DatasetProgress(stage="failed", error="s3://raw/empty/ holds no objects")
    s, _ = derive_dataset_status(ForgeDatasetStatus(), _obs(FAILED, progress), T0)
    assert s.phase is DatasetPhase.FAILED
    assert "s3://raw/empty/ holds no objects" in (s.message or "")


def test_job_that_succeeded_without_a_manifest_is_a_failure() -> None:
    s, _ = derive_dataset_status(ForgeDatasetStatus(), _obs(COMPLETE, None), T0)
    assert s.phase is DatasetPhase.FAILED
    assert get_condition(s.conditions, "Ready").reason == "ResultMissing"  # type: ignore[union-attr]


def test_invalid_spec_sets_the_condition_and_fails() -> None:
    s, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(3, spec_error="spec.tokenizer: bad"), T0)
    assert s.phase is DatasetPhase.FAILED and s.observed_generation == 3
    cond = get_condition(s.conditions, "InvalidSpec")
    assert cond is not None and cond.status is ConditionStatus.TRUE and cond.message == "spec.tokenizer: bad"


def test_waiting_for_a_referenced_tokenizer() -> None:
    waiting = Waiting("TokenizerReady", "waiting for ForgeDataset base (spec.tokenizer.datasetRef) to be Ready")
    s, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(1, waiting=waiting), T0)
    assert s.phase is DatasetPhase.PENDING
    assert get_condition(s.conditions, "Ready").reason == "WaitingForTokenizer"  # type: ignore[union-attr]
    cond = get_condition(s.conditions, "TokenizerReady")
    assert cond is not None and cond.status is ConditionStatus.FALSE and cond.message == waiting.message


def test_a_replaced_job_starts_the_times_afresh() -> None:
    done, _ = derive_dataset_status(ForgeDatasetStatus(), _obs(COMPLETE, DONE), T0)
    running = DatasetObservation(2, job_name=JOB, output_uri="s3://b/p", job=observe_job({"status": {"active": 1}}),
                                 replaced=True)
    s, _ = derive_dataset_status(done, running, T2)
    assert s.phase is DatasetPhase.RUNNING and s.completed_at is None and s.started_at == "2026-01-01T00:00:02Z"
