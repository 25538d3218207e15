"""A dataset's phase and conditions follow what its Job and progress file say."""

from __future__ import annotations

from forge_operator.api.common import ConditionStatus
from forge_operator.api.dataset import DatasetPhase, ForgeDatasetStatus
from forge_operator.status.conditions import get_condition
from forge_operator.status.dataset import DatasetObservation, derive_dataset_status
from forge_operator.status.job import observe_job
from forge_trainer.config import DatasetCounts, DatasetProgress

JOB = "corpus-prepare"


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
    s0 = derive_dataset_status(ForgeDatasetStatus(), _obs(None), "t0")
    assert s0.phase is DatasetPhase.PENDING
    s1 = derive_dataset_status(s0, _obs({"status": {"active": 1}},
                                        DatasetProgress(stage="reading", documents_done=4)), "t1")
    assert s1.phase is DatasetPhase.RUNNING and s1.documents_done == 4
    assert "reading, 4 documents" in (get_condition(s1.conditions, "Ready") or s1).message
    s2 = derive_dataset_status(s1, _obs(COMPLETE, DONE), "t2")
    assert s2.phase is DatasetPhase.READY
    ready = get_condition(s2.conditions, "Ready")
    assert ready is not None and ready.status is ConditionStatus.TRUE and ready.last_transition_time == "t2"
    assert ready.observed_generation == 1 and s2.observed_generation == 1
    assert s2.digest == "sha256:abc" and s2.counts and s2.counts.dropped == {"too_short": 2}
    assert s2.started_at == "t1" and s2.completed_at == "t2"


def test_unchanged_condition_keeps_its_transition_time() -> None:
    s1 = derive_dataset_status(ForgeDatasetStatus(), _obs({"status": {"active": 1}}), "t1")
    s2 = derive_dataset_status(s1, _obs({"status": {"active": 1}}), "t2")
    assert s1 == s2


def test_failed_job_reports_the_workload_reason() -> None:
    progress = DatasetProgress(stage="failed", error="s3://raw/empty/ holds no objects")
    s = derive_dataset_status(ForgeDatasetStatus(), _obs(FAILED, progress), "t")
    assert s.phase is DatasetPhase.FAILED
    assert "s3://raw/empty/ holds no objects" in (s.message or "")


def test_job_that_succeeded_without_a_manifest_is_a_failure() -> None:
    s = derive_dataset_status(ForgeDatasetStatus(), _obs(COMPLETE, None), "t")
    assert s.phase is DatasetPhase.FAILED
    assert get_condition(s.conditions, "Ready").reason == "ResultMissing"  # type: ignore[union-attr]


def test_invalid_spec_sets_the_condition_and_fails() -> None:
    s = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(3, spec_error="spec.tokenizer: bad"), "t")
    assert s.phase is DatasetPhase.FAILED and s.observed_generation == 3
    cond = get_condition(s.conditions, "InvalidSpec")
    assert cond is not None and cond.status is ConditionStatus.TRUE and cond.message == "spec.tokenizer: bad"


def test_waiting_for_a_referenced_tokenizer() -> None:
    s = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(1, waiting_for="waiting for X"), "t")
    assert s.phase is DatasetPhase.PENDING
    assert get_condition(s.conditions, "Ready").reason == "WaitingForTokenizer"  # type: ignore[union-attr]
