"""What the operator does to a run's Job: suspend/resume (Job suspend where the server has it, else
delete and recreate), the GPU-hour budget, and rolling the Job when spec.resources changes. Pure
decisions; the handler only carries them out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from forge_operator.api import ForgeTrainingRun
from forge_operator.api.training import ForgeTrainingRunStatus, RunPhase, TrainingResources
from forge_operator.plan.training import ResolvedRefs, job_shape, plan_training_run, shape_changes
from forge_operator.render.training import SHAPE_ANNOTATION, render_training
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import Action, get_condition
from forge_operator.status.gpu_budget import Hold, gpu_hours_used, gpus_in_use, run_hold
from forge_operator.status.job import JobObservation, observe_job
from forge_operator.status.run_job import JobDecision, JobStep, decide_job, stopping_pods
from forge_operator.status.training import RunObservation, derive_run_status
from forge_trainer.config import TrainConfig, TrainProgress

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RUNNING = JobObservation(active=2, suspend_supported=True)
OLD_SERVER = JobObservation(active=2, suspend_supported=False)  # Kubernetes 1.20: no Job spec.suspend
SETTINGS = OperatorSettings(store_endpoint="minio:9000", store_secure=False, store_bucket="acme-forge")


def _obs(job: JobObservation | None, **kw: object) -> RunObservation:
    return RunObservation(1, job_name=f"r-train-{kw.get('attempt', 0)}", output_uri="s3://b/r", job=job,
                          **kw)  # type: ignore[arg-type]


def _ready(s: ForgeTrainingRunStatus) -> tuple[str, str]:
    cond = get_condition(s.conditions, "Ready")
    assert cond is not None
    return cond.reason, cond.message


# ---- suspend / resume ----------------------------------------------------------------------------

def test_suspend_uses_job_suspend_where_the_server_has_it() -> None:
    assert decide_job(RUNNING, hold=True, queued=False, changes=[]).step is JobStep.SUSPEND
    suspended = JobObservation(suspended=True, suspend_supported=True)
    assert decide_job(suspended, hold=True, queued=False, changes=[]).step is JobStep.KEEP
    assert decide_job(suspended, hold=False, queued=False, changes=[]).step is JobStep.RESUME
    assert decide_job(RUNNING, hold=False, queued=False, changes=[]).step is JobStep.KEEP


def test_suspend_deletes_the_job_without_job_suspend_or_under_kueue() -> None:
    assert decide_job(OLD_SERVER, hold=True, queued=False, changes=[]).step is JobStep.DELETE
    # Kueue owns a queued Job's suspend field (it would unsuspend an admitted Job): delete instead
    assert decide_job(RUNNING, hold=True, queued=True, changes=[]).step is JobStep.DELETE
    # a queued Job waiting for admission is left suspended for Kueue
    waiting = JobObservation(suspended=True, suspend_supported=True)
    assert decide_job(waiting, hold=False, queued=True, changes=[]).step is JobStep.KEEP


def test_no_job_is_created_while_held_and_none_before_earlier_pods_stopped() -> None:
    assert decide_job(None, hold=True, queued=False, changes=[]).step is JobStep.KEEP
    assert decide_job(None, hold=False, queued=False, changes=[], earlier_pods=2).step is JobStep.WAIT
    assert decide_job(None, hold=False, queued=False, changes=[]).step is JobStep.CREATE


def test_finished_jobs_are_left_to_derive() -> None:
    for job in (JobObservation(complete=True), JobObservation(failed_final=True)):
        assert decide_job(job, hold=True, queued=False, changes=["x"]).step is JobStep.KEEP


def test_suspend_by_delete_then_resume_is_not_a_restart() -> None:
    s = ForgeTrainingRunStatus(restarts=1, attempt=1)
    s, _ = derive_run_status(s, _obs(OLD_SERVER, attempt=1), T0)
    assert s.phase is RunPhase.RUNNING
    # spec.suspend on a server without Job suspend: the Job is deleted, the next attempt comes on resume
    s, action = derive_run_status(s, _obs(None, attempt=1, hold=Hold.SUSPEND, step=JobDecision(JobStep.DELETE)), T0)
    assert action is Action.NONE and s.phase is RunPhase.SUSPENDED
    assert (s.restarts, s.attempt) == (1, 2)
    reason, message = _ready(s)
    assert reason == "Suspended" and "r-train-1 is deleted" in message and "no Job suspend" in message
    assert "spec.suspend" in message
    # still suspended: no Job, nothing accrues, nothing else changes
    again, _ = derive_run_status(s, _obs(None, attempt=2, hold=Hold.SUSPEND), T0 + timedelta(hours=5))
    assert again.phase is RunPhase.SUSPENDED and again.attempt == 2 and _ready(again)[0] == "Suspended"
    steady = {"conditions", "message", "job_name"}
    assert again.model_dump(exclude=steady) == s.model_dump(exclude=steady)
    third, _ = derive_run_status(again, _obs(None, attempt=2, hold=Hold.SUSPEND), T0 + timedelta(hours=6))
    assert third == again
    # resumed: attempt 2's Job is created and runs; the stall clock starts afresh
    s, action = derive_run_status(again, _obs(OLD_SERVER, attempt=2, step=JobDecision(JobStep.CREATE)),
                                  T0 + timedelta(hours=5))
    assert action is Action.NONE and s.phase is RunPhase.RUNNING
    assert (s.restarts, s.attempt, s.job_name) == (1, 2, "r-train-2")
    assert s.last_progress_time == "2026-01-01T05:00:00Z"


def test_suspend_in_place_keeps_the_attempt() -> None:
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(RUNNING), T0)
    suspended = JobObservation(active=2, suspended=True, suspend_supported=True)
    s, _ = derive_run_status(s, _obs(suspended, hold=Hold.SUSPEND, step=JobDecision(JobStep.SUSPEND)), T0)
    assert s.phase is RunPhase.SUSPENDED and s.attempt == 0
    assert "r-train-0 is suspended (its pods checkpoint on SIGTERM" in _ready(s)[1]
    s, _ = derive_run_status(s, _obs(RUNNING, step=JobDecision(JobStep.RESUME)), T0 + timedelta(days=1))
    assert s.phase is RunPhase.RUNNING and (s.attempt, s.restarts) == (0, 0)
    # a long suspension is not a stall
    s, action = derive_run_status(s, _obs(RUNNING), T0 + timedelta(days=1, seconds=60))
    assert action is Action.NONE and s.phase is RunPhase.RUNNING


def test_waiting_for_earlier_pods_says_so() -> None:
    s, _ = derive_run_status(ForgeTrainingRunStatus(started_at="2026-01-01T00:00:00Z"),
                             _obs(None, attempt=3, step=JobDecision(JobStep.WAIT), earlier_pods=2), T0)
    assert s.phase is RunPhase.RUNNING
    assert "waiting for 2 pod(s) of an earlier attempt to stop" in _ready(s)[1]


def test_queued_job_waits_for_admission() -> None:
    waiting = JobObservation(suspended=True, suspend_supported=True)
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(waiting, queue="gpu-h100"), T0)
    assert s.phase is RunPhase.SUSPENDED and _ready(s) == (
        "Queued", "training job r-train-0 waits for Kueue to admit it (queue gpu-h100)")


def test_a_failed_job_is_not_restarted_while_suspended_but_on_resume() -> None:
    failed = JobObservation(failed_final=True, message="exit 1")
    s, action = derive_run_status(ForgeTrainingRunStatus(), _obs(failed, hold=Hold.SUSPEND), T0)
    assert action is Action.NONE and s.phase is RunPhase.SUSPENDED and s.restarts == 0
    s, action = derive_run_status(s, _obs(failed), T0)
    assert action is Action.RESTART and (s.restarts, s.attempt) == (1, 1)


# ---- GPU-hour budget -----------------------------------------------------------------------------

def test_gpus_in_use_counts_pods_holding_a_node() -> None:
    assert gpus_in_use(JobObservation(active=4), 8) == 32
    assert gpus_in_use(JobObservation(active=4, ready=3), 8) == 24  # pending pods hold no GPU yet
    assert gpus_in_use(JobObservation(active=4), 0) == 0  # CPU-only
    assert gpus_in_use(JobObservation(active=4, suspended=True), 8) == 32  # still stopping
    assert gpus_in_use(JobObservation(complete=True, active=1), 8) == 0
    assert gpus_in_use(None, 8) == 0
    assert observe_job({"spec": {"suspend": False}, "status": {"active": 2, "ready": 1}}) == JobObservation(
        active=2, ready=1, suspend_supported=True)
    assert observe_job({"spec": {}, "status": {"active": 2}}).suspend_supported is False  # type: ignore[union-attr]


def test_gpu_hours_accrue_at_the_observed_rate_and_are_folded_at_most_once_a_minute() -> None:
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(RUNNING, gpus_in_use=16), T0)
    assert (s.gpu_hours, s.gpus_in_use, s.gpu_hours_updated_at) == (0.0, 16, "2026-01-01T00:00:00Z")
    # 30 s later: not folded yet (no status write), but the exact figure counts for the budget
    later, _ = derive_run_status(s, _obs(RUNNING, gpus_in_use=16), T0 + timedelta(seconds=30))
    assert later.gpu_hours == 0.0 and gpu_hours_used(later, T0 + timedelta(seconds=30)) == pytest.approx(16 * 30 / 3600)
    # 15 minutes at 16 GPUs = 4 GPU-hours
    s, _ = derive_run_status(later, _obs(RUNNING, gpus_in_use=16), T0 + timedelta(minutes=15))
    assert s.gpu_hours == 4.0
    # the rate changes (a node lost): folded at once, the new rate counts from now
    s, _ = derive_run_status(s, _obs(RUNNING, gpus_in_use=8), T0 + timedelta(minutes=15, seconds=10))
    assert s.gpus_in_use == 8 and s.gpu_hours == pytest.approx(4.0 + 16 * 10 / 3600, abs=1e-4)
    s, _ = derive_run_status(s, _obs(RUNNING, gpus_in_use=8), T0 + timedelta(minutes=45, seconds=10))
    assert s.gpu_hours == pytest.approx(8.0444, abs=1e-4)


def test_cpu_runs_show_no_gpu_hours_and_write_nothing_for_them() -> None:
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(RUNNING, gpus_in_use=0), T0)
    s2, _ = derive_run_status(s, _obs(RUNNING, gpus_in_use=0), T0 + timedelta(hours=1))
    assert s.gpu_hours is None and s2.gpu_hours is None and s2.gpu_hours_updated_at is None


def test_run_hold() -> None:
    assert run_hold(False, None, 1e9) is None
    assert run_hold(False, 10.0, 9.99) is None
    assert run_hold(False, 10.0, 10.0) is Hold.BUDGET
    assert run_hold(True, 10.0, 1.0) is Hold.SUSPEND
    assert run_hold(True, 10.0, 11.0) is Hold.BUDGET


def test_budget_exceeded_stops_the_run_and_raising_it_resumes() -> None:
    budget = 2.0
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(RUNNING, gpus_in_use=8, max_gpu_hours=budget), T0)
    within = get_condition(s.conditions, "BudgetExceeded")
    assert within is not None and within.status.value == "False" and within.reason == "WithinBudget"
    at = T0 + timedelta(minutes=16)  # 8 GPUs x 16 min = 2.133 GPU-hours
    used = gpu_hours_used(s, at)
    hold = run_hold(False, budget, used)
    assert hold is Hold.BUDGET
    step = decide_job(RUNNING, hold=True, queued=False, changes=[])
    assert step.step is JobStep.SUSPEND
    s, action = derive_run_status(s, _obs(JobObservation(active=1, suspended=True, suspend_supported=True),
                                          gpus_in_use=8, max_gpu_hours=budget, hold=hold, step=step), at)
    assert action is Action.NONE and s.phase is RunPhase.SUSPENDED
    assert s.gpu_hours == pytest.approx(2.1333, abs=1e-4)
    reason, message = _ready(s)
    assert reason == "BudgetExceeded"
    assert "spec.budget.maxGpuHours is 2" in message and "used 2.1333 GPU-hours" in message
    assert "raise spec.budget.maxGpuHours to resume" in message
    cond = get_condition(s.conditions, "BudgetExceeded")
    assert cond is not None and cond.status.value == "True" and cond.reason == "BudgetExceeded"
    # pods gone: no more accrual
    stopped = JobObservation(suspended=True, suspend_supported=True)
    s, _ = derive_run_status(s, _obs(stopped, gpus_in_use=0, max_gpu_hours=budget, hold=hold), at)
    assert s.gpus_in_use == 0
    later = at + timedelta(hours=3)
    assert run_hold(False, budget, gpu_hours_used(s, later)) is Hold.BUDGET
    # the budget is raised: the Job is resumed, the run runs on and restarts stay 0
    assert run_hold(False, 4.0, gpu_hours_used(s, later)) is None
    assert decide_job(stopped, hold=False, queued=False, changes=[]).step is JobStep.RESUME
    s, action = derive_run_status(s, _obs(RUNNING, max_gpu_hours=4.0, step=JobDecision(JobStep.RESUME)), later)
    assert action is Action.NONE and s.phase is RunPhase.RUNNING and s.restarts == 0
    cond = get_condition(s.conditions, "BudgetExceeded")
    assert cond is not None and cond.status.value == "False"


def test_budget_condition_message_changes_only_when_folded() -> None:
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(RUNNING, gpus_in_use=8, max_gpu_hours=100.0), T0)
    s2, _ = derive_run_status(s, _obs(RUNNING, gpus_in_use=8, max_gpu_hours=100.0), T0 + timedelta(seconds=20))
    assert s2 == s.model_copy(update={"observed_generation": 1})


# ---- spec.resources changes roll the Job ---------------------------------------------------------

def _run(**resources: object) -> ForgeTrainingRun:
    return ForgeTrainingRun.model_validate({
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
        "metadata": {"name": "base", "namespace": "ml", "uid": "u"},
        "spec": {"stage": "pretrain", "datasetRef": "corpus", "model": {"size": "tiny"},
                 "resources": {"gpusPerNode": 8, **resources}}})


def _job(run: ForgeTrainingRun, attempt: int = 0) -> dict[str, object]:
    plan = plan_training_run(run, SETTINGS, ResolvedRefs(dataset_manifest="s3://b/m.json"), attempt=attempt)
    return next(m for m in render_training(plan) if m["kind"] == "Job")


def test_the_job_records_its_shape_and_a_node_bound_change_rolls_it() -> None:
    job = _job(_run(minNodes=1, maxNodes=2))
    live = observe_job({**job, "status": {"active": 2}})
    assert live is not None
    recorded = live.annotations[SHAPE_ANNOTATION]
    assert json.loads(recorded) == job_shape(TrainingResources(min_nodes=1, max_nodes=2, gpus_per_node=8))
    same = _run(minNodes=1, maxNodes=2, queue="q").spec.resources  # the queue is not part of the shape
    assert shape_changes(recorded, job_shape(same)) == []
    changes = shape_changes(recorded, job_shape(_run(minNodes=2, maxNodes=4).spec.resources))
    assert changes == ["spec.resources.maxNodes 2 -> 4", "spec.resources.minNodes 1 -> 2"]
    decision = decide_job(live, hold=False, queued=False, changes=changes)
    assert decision == JobDecision(JobStep.ROLL, "spec.resources.maxNodes 2 -> 4; spec.resources.minNodes 1 -> 2")
    # a Job from before the shape was recorded is never rolled
    assert shape_changes(None, job_shape(same)) == [] and shape_changes("not json", job_shape(same)) == []


def test_the_rolled_job_has_the_new_bounds() -> None:
    job = _job(_run(minNodes=2, maxNodes=4), attempt=1)
    spec = job["spec"]
    assert isinstance(spec, dict) and spec["completions"] == spec["parallelism"] == 4
    assert "--nnodes=2:4" in spec["template"]["spec"]["containers"][0]["command"][2]
    assert job["metadata"]["name"] == "base-train-1"  # type: ignore[index]


def test_roll_recreates_as_the_next_attempt_without_counting_a_restart() -> None:
    s, _ = derive_run_status(ForgeTrainingRunStatus(restarts=1, attempt=1), _obs(RUNNING, attempt=1), T0)
    decision = JobDecision(JobStep.ROLL, "spec.resources.maxNodes 2 -> 4")
    s, action = derive_run_status(s, _obs(None, attempt=1, step=decision), T0 + timedelta(minutes=1))
    assert action is Action.NONE and (s.restarts, s.attempt) == (1, 2) and s.phase is RunPhase.RUNNING
    reason, message = _ready(s)
    assert reason == "JobRolled"
    assert "spec.resources changed (spec.resources.maxNodes 2 -> 4)" in message
    assert "r-train-1 is deleted and recreated as attempt 2" in message and "not a restart" in message


# ---- hyperparameters.maxSteps reaches the running pods' config -----------------------------------

def test_max_steps_change_is_in_the_config_map_and_not_in_the_job() -> None:
    def objs(steps: int) -> dict[str, dict[str, object]]:
        run = ForgeTrainingRun.model_validate({
            "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
            "metadata": {"name": "base", "namespace": "ml", "uid": "u"},
            "spec": {"stage": "pretrain", "datasetRef": "corpus", "model": {"size": "tiny"},
                     "hyperparameters": {"maxSteps": steps}}})
        plan = plan_training_run(run, SETTINGS, ResolvedRefs(dataset_manifest="s3://b/m.json"))
        return {str(m["kind"]): m for m in render_training(plan)}

    import yaml

    before, after = objs(100), objs(250)
    data = after["ConfigMap"]["data"]
    assert isinstance(data, dict)
    assert TrainConfig.model_validate(yaml.safe_load(data["config.yaml"])).hyperparameters.max_steps == 250
    assert before["ConfigMap"]["metadata"] == after["ConfigMap"]["metadata"]  # same object, updated in place
    assert before["Job"] == after["Job"]  # the Job is not rolled for it


def test_progress_total_steps_follows_the_new_max_steps() -> None:
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _obs(RUNNING, progress=TrainProgress(step=50, total_steps=100)),
                             T0)
    s, _ = derive_run_status(s, _obs(RUNNING, progress=TrainProgress(step=60, total_steps=250)), T0)
    assert (s.progress, s.total_steps) == ("60/250", 250)


def test_the_next_attempt_waits_only_for_pods_that_may_still_checkpoint() -> None:
    def pod(phase: str, deletion: str | None = None) -> dict[str, object]:
        meta = {"deletionTimestamp": deletion} if deletion else {}
        return {"metadata": meta, "status": {"phase": phase}}

    pods = [pod("Succeeded"), pod("Failed"),
            pod("Running"),  # not deleted yet (the garbage collector gets to it)
            pod("Running", "2026-01-01T00:01:30Z"),  # terminating: inside its grace period, checkpointing
            pod("Running", "2025-12-31T23:58:00Z"),  # past its deadline: on a lost node, not waited for
            pod("Pending", "bogus")]
    assert stopping_pods(pods, T0) == 3
    assert stopping_pods([], T0) == 0
