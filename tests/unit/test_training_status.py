"""A run's phase follows its job and progress; failures and stalls restart it up to maxRestarts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from forge_operator.api.training import ForgeTrainingRunStatus, RunPhase
from forge_operator.status.conditions import Action, Waiting, get_condition
from forge_operator.status.gpu_budget import Hold
from forge_operator.status.job import JobObservation
from forge_operator.status.training import RunObservation, _mirror_progress, derive_run_status
from forge_trainer.config import TrainProgress

T0 = datetime(2026, 1, 1, tzinfo=UTC)
ACTIVE = JobObservation(active=2)


def _obs(job: JobObservation | None, progress: TrainProgress | None = None, **kw: object) -> RunObservation:
    return RunObservation(1, job_name="r-train-0", output_uri="s3://b/r", job=job, progress=progress,
                          **kw)  # type: ignore[arg-type]


def test_progress_is_mirrored_with_eta() -> None:
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(ACTIVE), T0)
    assert s.phase is RunPhase.RUNNING and s.started_at == "2026-01-01T00:00:00Z"
    p = TrainProgress(step=25, total_steps=100, loss=2.345678, tokens_per_second=1234.56, world_size=16, mfu=0.41)
    s, action = derive_run_status(s, _obs(ACTIVE, p), T0 + timedelta(minutes=25))
    assert action is Action.NONE
    assert (s.step, s.progress, s.loss, s.world_size) == (25, "25/100", 2.3457, 16)
    assert s.eta == "2026-01-01T01:40:00Z"


def test_success_records_the_final_model_and_eval_metrics() -> None:
    p = TrainProgress(step=100, total_steps=100, done=True, final_model_uri="s3://b/r/model",
                      final_model_digest="sha256:m", eval_metrics={"loss": 1.5})
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(JobObservation(complete=True), p), T0)
    assert s.phase is RunPhase.SUCCEEDED and s.final_model_uri == "s3://b/r/model"
    assert s.eval_metrics == {"loss": 1.5}
    assert get_condition(s.conditions, "Ready").status.value == "True"  # type: ignore[union-attr]


def test_failed_job_is_restarted_until_max_restarts() -> None:
    failed = JobObservation(failed_final=True, message="pod base-train-0-0 exited 1")
    s = ForgeTrainingRunStatus()
    for n in (1, 2):
        s, action = derive_run_status(s, _obs(failed, max_restarts=2), T0)
        assert action is Action.RESTART and s.restarts == n and s.phase is RunPhase.RUNNING
        assert f"restart {n} of 2" in (s.message or "")
    s, action = derive_run_status(s, _obs(failed, max_restarts=2), T0)
    assert action is Action.NONE and s.phase is RunPhase.FAILED
    assert "no restarts left" in (s.message or "") and "exited 1" in (s.message or "")


def test_stall_is_detected_and_restarts() -> None:
    p = TrainProgress(step=10, total_steps=100)
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(ACTIVE, p, stall_timeout_seconds=600), T0)
    s, action = derive_run_status(s, _obs(ACTIVE, p, stall_timeout_seconds=600), T0 + timedelta(seconds=300))
    assert action is Action.NONE
    s, action = derive_run_status(s, _obs(ACTIVE, p, stall_timeout_seconds=600), T0 + timedelta(seconds=700))
    assert action is Action.RESTART
    stalled = get_condition(s.conditions, "Stalled")
    assert stalled is not None and stalled.status.value == "True" and "step 10 has not advanced" in stalled.message


def test_waiting_for_dataset_and_suspended() -> None:
    s, _ = derive_run_status(ForgeTrainingRunStatus(), RunObservation(
        1, waiting=Waiting("DatasetReady", "waiting for ForgeDataset c to be Ready")), T0)
    assert s.phase is RunPhase.PENDING
    cond = get_condition(s.conditions, "DatasetReady")
    assert cond is not None and cond.status.value == "False" and cond.reason == "Waiting"
    s, _ = derive_run_status(s, _obs(JobObservation(suspended=True), hold=Hold.SUSPEND), T0)
    assert s.phase is RunPhase.SUSPENDED


def test_a_worker_group_that_re_formed_is_told_apart_from_a_job_restart() -> None:
    """The trainer counts every resumed start; status separates the elastic re-forms (same Job) from the
    operator's recreations of the Job (attempt)."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    same_job = ForgeTrainingRunStatus(attempt=0)
    _mirror_progress(same_job, TrainProgress(step=30, total_steps=100, restarts=1), now)
    assert same_job.worker_group_restarts == 1
    next_attempt = ForgeTrainingRunStatus(attempt=1)
    _mirror_progress(next_attempt, TrainProgress(step=30, total_steps=100, restarts=1), now)
    assert next_attempt.worker_group_restarts == 0
