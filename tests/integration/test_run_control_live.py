"""Spec changes that take effect on a running ForgeTrainingRun, on the real API server: suspend/resume
(Job suspend where the server has it; on v1.20 the Job is deleted and recreated), the GPU-hour budget,
a change of the node bounds (the Job is rolled), and a new maxSteps (the ConfigMap is updated in place).
None of these count as a failure restart."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from minio import Minio

from tests.support.cluster import (
    ACCESS,
    CPU,
    FORGE,
    SECRET,
    Cluster,
    Operator,
    put_json,
    ready_dataset,
    wait_for,
)

pytestmark = pytest.mark.integration
PLURAL = "forgetrainingruns"


def _jobs(cluster: Cluster, run: str) -> list[Any]:
    items = cluster.batch.list_namespaced_job(cluster.ns, label_selector=f"forge.ai/forgetrainingrun={run}").items
    return [j for j in items if not j.metadata.deletion_timestamp]


def _running_job(cluster: Cluster, run: str) -> Any:
    jobs = [j for j in _jobs(cluster, run) if not getattr(j.spec, "suspend", None)]
    return jobs[0] if len(jobs) == 1 else None


def _patch(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    cluster.custom.patch_namespaced_custom_object("forge.ai", "v1alpha1", cluster.ns, PLURAL, name, {"spec": spec})


def _phase(cluster: Cluster, name: str) -> str | None:
    return cluster.status(PLURAL, name).get("phase")


def _start(cluster: Cluster, operator: Operator, endpoint: str, bucket: str, name: str,
           **spec: Any) -> None:
    s3 = Minio(endpoint, access_key=ACCESS, secret_key=SECRET, secure=False)
    ready_dataset(cluster, s3, bucket, "data")
    cluster.create(PLURAL, {**FORGE, "kind": "ForgeTrainingRun", "metadata": {"name": name}, "spec": {
        "stage": "pretrain", "datasetRef": "data", "model": {"size": "tiny"}, "resources": CPU, **spec}})
    wait_for("first job", lambda: cluster.job(f"{name}-train-0"))
    out = wait_for("output uri", lambda: cluster.status(PLURAL, name).get("outputUri"))
    put_json(s3, bucket, out.split(f"s3://{bucket}/", 1)[1] + "/progress.json",
              {"step": 5, "totalSteps": 100, "loss": 4.0, "worldSize": 1})
    wait_for("Running at step 5", lambda: _phase(cluster, name) == "Running"
             and cluster.status(PLURAL, name).get("step") == 5)


def test_suspend_and_resume_a_running_run(cluster: Cluster, operator: Operator, _moto_endpoint: str,
                                          store_bucket: str) -> None:
    _start(cluster, operator, _moto_endpoint, store_bucket, "pausable")
    _patch(cluster, "pausable", {"suspend": True})
    wait_for("Suspended", lambda: _phase(cluster, "pausable") == "Suspended", timeout=60)
    ready = cluster.condition(PLURAL, "pausable", "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "Suspended"
    assert "spec.suspend" in ready["message"]
    # no pod trains: the Job is gone (v1.20 has no Job suspend) or suspended (1.21+)
    wait_for("the job stopped", lambda: _running_job(cluster, "pausable") is None and
             all(not j.status.active for j in _jobs(cluster, "pausable")), timeout=60)
    assert cluster.status(PLURAL, "pausable")["restarts"] == 0

    _patch(cluster, "pausable", {"suspend": False})
    job = wait_for("a running job again", lambda: _running_job(cluster, "pausable"), timeout=60)
    wait_for("Running", lambda: _phase(cluster, "pausable") == "Running", timeout=60)
    status = cluster.status(PLURAL, "pausable")
    assert status["restarts"] == 0, "a resume is not a failure restart"
    assert status["jobName"] == job.metadata.name
    reasons = [e.reason for e in cluster.events_for("pausable")]
    assert "Suspended" in reasons and "JobRestarted" not in reasons


def test_budget_exceeded_stops_the_run_and_a_raised_budget_resumes_it(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str) -> None:
    # one "GPU" per pod: the pod stays pending here (no scheduler), and v1.20 reports no ready count,
    # so the Job's active pod counts; 0.001 GPU-hours is 3.6 GPU-seconds
    _start(cluster, operator, _moto_endpoint, store_bucket, "metered",
           resources={"gpusPerNode": 1, "nodeSelector": {}}, budget={"maxGpuHours": 0.001})
    wait_for("BudgetExceeded", lambda: _phase(cluster, "metered") == "Suspended", timeout=60)
    status = cluster.status(PLURAL, "metered")
    ready = cluster.condition(PLURAL, "metered", "Ready")
    assert ready is not None and ready["reason"] == "BudgetExceeded"
    assert "spec.budget.maxGpuHours is 0.001" in ready["message"] and "GPU-hours" in ready["message"]
    assert status["gpuHours"] >= 0.001
    budget = cluster.condition(PLURAL, "metered", "BudgetExceeded")
    assert budget is not None and budget["status"] == "True"
    wait_for("budget event", lambda: any(e.reason == "BudgetExceeded" for e in cluster.events_for("metered")))
    wait_for("the job stopped", lambda: _running_job(cluster, "metered") is None, timeout=60)

    _patch(cluster, "metered", {"budget": {"maxGpuHours": 1000}})
    wait_for("a running job again", lambda: _running_job(cluster, "metered"), timeout=60)
    wait_for("Running", lambda: _phase(cluster, "metered") == "Running", timeout=60)
    budget = cluster.condition(PLURAL, "metered", "BudgetExceeded")
    assert budget is not None and budget["status"] == "False"
    assert cluster.status(PLURAL, "metered")["restarts"] == 0


def test_node_bounds_roll_the_job_and_max_steps_updates_the_config_in_place(
        cluster: Cluster, operator: Operator, _moto_endpoint: str, store_bucket: str) -> None:
    _start(cluster, operator, _moto_endpoint, store_bucket, "elastic",
           hyperparameters={"maxSteps": 100})
    _patch(cluster, "elastic", {"hyperparameters": {"maxSteps": 250}})

    def max_steps() -> int:
        cm = cluster.core.read_namespaced_config_map("elastic-train-config", cluster.ns)
        return int(yaml.safe_load(cm.data["config.yaml"])["hyperparameters"]["maxSteps"])

    wait_for("maxSteps in the ConfigMap", lambda: max_steps() == 250, timeout=30)
    assert [j.metadata.name for j in _jobs(cluster, "elastic")] == ["elastic-train-0"], "maxSteps rolls nothing"

    _patch(cluster, "elastic", {"resources": {"minNodes": 1, "maxNodes": 2}})
    job = wait_for("the rolled job", lambda: cluster.job("elastic-train-1"), timeout=60)
    assert job.spec.completions == job.spec.parallelism == 2
    assert "--nnodes=1:2" in job.spec.template.spec.containers[0].command[2]
    wait_for("the old job gone", lambda: cluster.job("elastic-train-0") is None, timeout=30)
    rolled = [e.message for e in cluster.events_for("elastic") if e.reason == "JobRolled"]
    assert rolled and "spec.resources.maxNodes 1 -> 2" in rolled[0]
    wait_for("Running", lambda: _phase(cluster, "elastic") == "Running", timeout=60)
    status = cluster.status(PLURAL, "elastic")
    assert (status["restarts"], status["attempt"], status["jobName"]) == (0, 1, "elastic-train-1")
