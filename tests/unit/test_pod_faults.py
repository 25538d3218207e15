"""Which pod of a workload is stuck or failed, and why, read from Pod objects shaped as Kubernetes writes
them (scheduler, kubelet, node and eviction controllers); the PodsReady/Stalled conditions and Events of all
three kinds; secrets kept out of the quoted log lines."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from forge_operator.api.common import ConditionStatus
from forge_operator.api.dataset import DatasetPhase, ForgeDatasetStatus
from forge_operator.api.deployment import DeploymentPhase, ForgeDeploymentStatus
from forge_operator.api.training import ForgeTrainingRunStatus, RunPhase
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import PODS_READY, STALLED, get_condition
from forge_operator.status.dataset import DatasetObservation, derive_dataset_status
from forge_operator.status.deployment import DeploymentObservation, derive_deployment_status
from forge_operator.status.job import JobObservation
from forge_operator.status.pods import (
    PodsSeen,
    Trouble,
    log_tail,
    observe_pods,
    pod_trouble,
    pods_event,
    quoted_logs,
    redact_log,
    secret_env_names,
)
from forge_operator.status.training import RunObservation, derive_run_status

NOW = datetime(2026, 11, 30, 20, 0, tzinfo=UTC)
T = "2026-11-30T19:58:00Z"
T_END = "2026-11-30T19:59:30Z"
JOB_UID = "6f1c-job"


def _pod(name: str = "base-train-0-x7k2p", *, index: str | None = "0", node: str | None = "gpu-node-3",
         status: dict[str, Any] | None = None, memory: str | None = "8Gi", **meta: Any) -> dict[str, Any]:
    """A training pod as the Job controller creates it (1.21+: completion index annotation)."""
    annotations = {"batch.kubernetes.io/job-completion-index": index} if index is not None else {}
    container: dict[str, Any] = {"name": "trainer", "image": "forge-trainer:0.1.0", "env": [
        {"name": "FORGE_S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "secretKey"}}},
        {"name": "FORGE_RANK0_HOST", "value": "base-train-0-0.base-rdzv"}]}
    if memory:
        container["resources"] = {"limits": {"memory": memory}, "requests": {"cpu": "2", "memory": memory}}
    spec: dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "team", "annotations": annotations,
                         "creationTimestamp": "2026-11-30T19:57:00Z",
                         "labels": {"forge.ai/forgetrainingrun": "base", "job-name": "base-train-0"},
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "base-train-0",
                                              "uid": JOB_UID, "controller": True}], **meta},
            "spec": spec, "status": status or {}}


def _started(container_status: dict[str, Any], phase: str = "Pending") -> dict[str, Any]:
    return {"phase": phase, "startTime": T, "hostIP": "10.0.0.3", "conditions": [
        {"type": "Initialized", "status": "True", "lastTransitionTime": T},
        {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
         "message": "containers with unready status: [trainer]", "lastTransitionTime": T},
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": T}],
        "containerStatuses": [{"name": "trainer", "image": "forge-trainer:0.1.0", "imageID": "", "ready": False,
                               "started": False, "restartCount": 0, "lastState": {}, **container_status}]}


UNSCHEDULABLE = {"phase": "Pending", "qosClass": "Burstable", "conditions": [
    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastProbeTime": None,
     "lastTransitionTime": T, "message": "0/1 nodes are available: 1 Insufficient cpu."}]}
AFFINITY = {"phase": "Pending", "conditions": [
    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": T,
     "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."}]}
NEVER_PULL = _started({"state": {"waiting": {"reason": "ErrImageNeverPull", "message":
                       'Container image "forge-trainer:missing" is not present with pull policy of Never'}}})
BACKOFF = _started({"state": {"waiting": {"reason": "ImagePullBackOff",
                                          "message": 'Back-off pulling image "ghcr.io/acme/trainer:9"'}}})
NO_SECRET = _started({"state": {"waiting": {"reason": "CreateContainerConfigError",
                                            "message": 'secret "forge-store-credentials" not found'}}})
OOM = _started({"state": {"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": T,
                                         "finishedAt": T_END, "containerID": "containerd://ab"}}}, "Failed")
SIGKILL = _started({"state": {"terminated": {"exitCode": 137, "reason": "Error", "startedAt": T,
                                             "finishedAt": T_END}}}, "Failed")
SIGSEGV = _started({"state": {"terminated": {"exitCode": 139, "reason": "Error", "startedAt": T,
                                             "finishedAt": T_END}}}, "Failed")
EXIT_1 = _started({"state": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": T,
                                            "finishedAt": T_END}}}, "Failed")
CRASH_LOOP = _started({"restartCount": 4, "state": {"waiting": {
    "reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container=trainer pod=x_team(1)"}},
    "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": T, "finishedAt": T_END}}}, "Running")
EVICTED = {"phase": "Failed", "reason": "Evicted", "startTime": T,
           "message": "The node was low on resource: memory. Container trainer was using 9Gi, which exceeds its "
                      "request of 8Gi. ",
           "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": T_END}]}
NODE_LOST = {**_started({"state": {"running": {"startedAt": T}}, "ready": True}, "Running"), "reason": "NodeLost",
             "message": "Node gpu-node-3 which was running pod base-train-0-x7k2p is unresponsive"}


@pytest.mark.parametrize(("status", "trouble", "says"), [
    (UNSCHEDULABLE, Trouble.UNSCHEDULABLE, "0/1 nodes are available: 1 Insufficient cpu (since 2026-11-30T19:58:00Z)"),
    (AFFINITY, Trouble.UNSCHEDULABLE, "didn't match Pod's node affinity/selector"),
    (NEVER_PULL, Trouble.IMAGE_PULL,
     'container trainer: ErrImageNeverPull: Container image "forge-trainer:missing" is not present'),
    (BACKOFF, Trouble.IMAGE_PULL, 'ImagePullBackOff: Back-off pulling image "ghcr.io/acme/trainer:9"'),
    (NO_SECRET, Trouble.CONTAINER_CONFIG, 'CreateContainerConfigError: secret "forge-store-credentials" not found'),
    (OOM, Trouble.OOM_KILLED, "container trainer exceeded its memory limit 8Gi (OOMKilled, exit code 137) "
                              "(since 2026-11-30T19:59:30Z)"),
    (SIGKILL, Trouble.SIGNAL, "container trainer was killed by SIGKILL (exit code 137)"),
    (SIGSEGV, Trouble.SIGNAL, "was killed by SIGSEGV (exit code 139)"),
    (EXIT_1, Trouble.EXIT_CODE, "container trainer exited with code 1 (Error)"),
    (CRASH_LOOP, Trouble.CRASH_LOOP, "container trainer restarted 4 times; last exit: exited with code 1 (Error)"),
    (EVICTED, Trouble.EVICTED, "The node was low on resource: memory. Container trainer was using 9Gi"),
    (NODE_LOST, Trouble.NODE_LOST, "Node gpu-node-3 which was running pod base-train-0-x7k2p is unresponsive"),
])
def test_each_kind_of_trouble_names_the_pod_rank_node_and_the_kubelets_words(
        status: dict[str, Any], trouble: Trouble, says: str) -> None:
    scheduled = status not in (UNSCHEDULABLE, AFFINITY)
    found = pod_trouble(_pod(status=status, node="gpu-node-3" if scheduled else None), NOW)
    assert found is not None and found.trouble is trouble
    assert found.summary.startswith("pod base-train-0-x7k2p (rank 0) "
                                    + ("on node gpu-node-3: " if scheduled else "(not scheduled): ") + trouble.value)
    assert says in found.summary


def test_healthy_pods_have_no_trouble_and_count_as_ready() -> None:
    running = _started({"state": {"running": {"startedAt": T}}, "ready": True}, "Running")
    running["conditions"][1] = {"type": "Ready", "status": "True", "lastTransitionTime": T}
    done = _started({"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}, "Succeeded")
    seen = observe_pods([_pod(status=running), _pod("b", status=done)], NOW)
    assert (seen.trouble, seen.total, seen.ready, seen.running) == (None, 2, 2, 1)


def test_the_first_failure_explains_the_job_and_the_rank_comes_from_label_annotation_or_env() -> None:
    later = copy.deepcopy(SIGKILL)
    later["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-11-30T19:59:45Z"
    pods = [_pod("r0", index=None, status=later, labels={"batch.kubernetes.io/job-completion-index": "0"}),
            _pod("r1", index="1", status=OOM), _pod("r2", index="2", status=UNSCHEDULABLE, node=None)]
    seen = observe_pods(pods, NOW)
    assert seen.trouble is not None and (seen.trouble.pod, seen.trouble.rank) == ("r1", "1")
    assert seen.troubled == 3 and "(and 2 more pod(s) with trouble)" in seen.text()
    env_ranked = _pod("r3", index=None, status=EXIT_1)
    env_ranked["spec"]["containers"][0]["env"].append({"name": "JOB_COMPLETION_INDEX", "value": "3"})
    assert (pod_trouble(env_ranked, NOW) or pytest.fail()).rank == "3"
    no_rank = pod_trouble(_pod("serve-7d9c-abcde", index=None, status=EXIT_1), NOW)
    assert no_rank is not None and no_rank.summary.startswith("pod serve-7d9c-abcde on node gpu-node-3: ExitCode")


def test_pods_of_another_job_and_pods_stopping_in_their_grace_period_do_not_count() -> None:
    other = _pod("old", status=OOM)
    other["metadata"]["ownerReferences"][0]["uid"] = "earlier-attempt"
    stopping = _pod("stopping", status=EXIT_1, deletionTimestamp="2026-11-30T20:01:00Z")
    assert observe_pods([other, stopping], NOW, owners={JOB_UID}) == PodsSeen()
    # past its deletion deadline and still there: its node does not answer
    stuck = _pod("stuck", status=_started({"state": {"running": {"startedAt": T}}}, "Running"),
                 deletionTimestamp="2026-11-30T19:59:00Z")
    found = observe_pods([stuck], NOW).trouble
    assert found is not None and found.trouble is Trouble.NODE_LOST and "does not answer" in found.message


def test_an_unknown_signal_number_is_still_reported() -> None:
    status = copy.deepcopy(SIGKILL)
    status["containerStatuses"][0]["state"]["terminated"]["exitCode"] = 128 + 99
    assert "killed by signal 99 (exit code 227)" in (pod_trouble(_pod(status=status), NOW) or pytest.fail()).summary


# --- conditions and events of the three kinds -----------------------------------------------------------


def _run(pods: PodsSeen | None, job: JobObservation | None = None, **kw: Any) -> RunObservation:
    return RunObservation(1, job_name="base-train-0", output_uri="s3://b/r", job=job or JobObservation(active=1),
                          pods=pods, **kw)


def test_run_with_an_unschedulable_pod_is_pending_says_why_then_stalls_without_a_restart() -> None:
    seen = observe_pods([_pod(status=UNSCHEDULABLE, node=None)], NOW)
    s, action = derive_run_status(ForgeTrainingRunStatus(), _run(seen), NOW)
    assert s.phase is RunPhase.PENDING and action.value == "none"
    cond = get_condition(s.conditions, PODS_READY)
    assert cond is not None and cond.status is ConditionStatus.FALSE and cond.reason == "Unschedulable"
    assert cond.message == ("pod base-train-0-x7k2p (rank 0) (not scheduled): Unschedulable: 0/1 nodes are "
                            "available: 1 Insufficient cpu (since 2026-11-30T19:58:00Z)")
    ready = get_condition(s.conditions, "Ready")
    assert ready is not None and ready.reason == "Unschedulable" and "Insufficient cpu" in (s.message or "")
    assert pods_event(ForgeTrainingRunStatus(), s) == ("Unschedulable", cond.message)
    again, _ = derive_run_status(s, _run(seen), NOW + timedelta(seconds=10))
    assert pods_event(s, again) is None, "the same trouble is told once, not every tick"
    later = NOW + timedelta(seconds=OperatorSettings().pods_stalled_after)
    stalled, action = derive_run_status(again, _run(seen), later)
    assert action.value == "none" and stalled.phase is RunPhase.PENDING
    cond = get_condition(stalled.conditions, STALLED)
    assert cond is not None and cond.status is ConditionStatus.TRUE and cond.reason == "Unschedulable"
    assert "no pod has started for more than 600s (podsStalledAfter)" in cond.message
    assert pods_event(again, stalled) == ("Stalled", cond.message)


def test_run_whose_job_failed_says_which_pod_and_why_and_a_recovered_run_says_ready() -> None:
    seen = observe_pods([_pod(status=OOM)], NOW)
    seen = PodsSeen(**{**seen.__dict__, "logs": "step 41 loss 2.1\nallocating 6Gi"})
    s, action = derive_run_status(ForgeTrainingRunStatus(), _run(seen, JobObservation(failed_final=True,
                                                                                       message="BackoffLimitExceeded")),
                                  NOW)
    assert action.value == "restart"
    assert ("training job base-train-0 failed: pod base-train-0-x7k2p (rank 0) on node gpu-node-3: OOMKilled: "
            "container trainer exceeded its memory limit 8Gi") in (s.message or "")
    cond = get_condition(s.conditions, PODS_READY)
    assert cond is not None and cond.message.endswith(
        "last log lines of container trainer:\nstep 41 loss 2.1\nallocating 6Gi")
    running = _started({"state": {"running": {"startedAt": T}}, "ready": True}, "Running")
    running["conditions"][1] = {"type": "Ready", "status": "True", "lastTransitionTime": T}
    s, _ = derive_run_status(s, _run(observe_pods([_pod(status=running)], NOW)), NOW)
    cond = get_condition(s.conditions, PODS_READY)
    assert cond is not None and (cond.status, cond.reason, cond.message) == (ConditionStatus.TRUE, "Ready",
                                                                             "1/1 pod(s) ready")
    assert s.phase is RunPhase.RUNNING and pods_event(ForgeTrainingRunStatus(), s) is None


def test_plain_pending_pods_keep_todays_status_until_they_stall() -> None:
    pending = observe_pods([_pod(status={"phase": "Pending"}, node=None)], NOW)
    s, _ = derive_run_status(ForgeTrainingRunStatus(), _run(pending), NOW)
    assert s.phase is RunPhase.RUNNING and "is running" in (s.message or "")
    assert pods_event(ForgeTrainingRunStatus(), s) is None


def test_dataset_with_a_missing_image_is_pending_with_the_kubelets_message() -> None:
    seen = observe_pods([_pod("fds-prepare-abcde", index=None, status=NEVER_PULL)], NOW)
    s, _ = derive_dataset_status(ForgeDatasetStatus(), DatasetObservation(
        1, job_name="fds-prepare", job=JobObservation(active=1), pods=seen), NOW)
    assert s.phase is DatasetPhase.PENDING
    assert s.message == ('preparation job fds-prepare cannot start: pod fds-prepare-abcde on node gpu-node-3: '
                         'ImagePull: container trainer: ErrImageNeverPull: Container image "forge-trainer:missing" '
                         'is not present with pull policy of Never (since 2026-11-30T19:58:00Z)')
    late = NOW + timedelta(seconds=601)
    s, _ = derive_dataset_status(s, DatasetObservation(1, job_name="fds-prepare", job=JobObservation(active=1),
                                                       pods=seen), late)
    cond = get_condition(s.conditions, STALLED)
    assert cond is not None and cond.status is ConditionStatus.TRUE and cond.reason == "ImagePull"
    assert get_condition(s.conditions, "Ready").reason == "Stalled"  # type: ignore[union-attr]


def test_deployment_progressing_carries_the_crash_loop_and_its_log() -> None:
    pod = _pod("serve-7d9c-abcde", index=None, status=CRASH_LOOP)
    seen = observe_pods([pod], NOW)
    assert seen.needs_logs and seen.trouble is not None and seen.trouble.previous
    seen = PodsSeen(**{**seen.__dict__, "logs": "OSError: model.safetensors not found"})
    s, _ = derive_deployment_status(ForgeDeploymentStatus(), DeploymentObservation(
        1, gate_passed=True, deployment={"status": {"readyReplicas": 0}}, pods=seen), NOW)
    assert s.phase is DeploymentPhase.PROGRESSING
    assert s.message is not None and s.message.startswith(
        "0/1 replicas ready; pod serve-7d9c-abcde on node gpu-node-3: CrashLoop: container trainer restarted 4 times")
    cond = get_condition(s.conditions, PODS_READY)
    assert cond is not None and cond.reason == "CrashLoop"
    assert quoted_logs(cond.message, seen.trouble.summary) == "OSError: model.safetensors not found"  # type: ignore[union-attr]
    assert quoted_logs(cond.message, "pod other: ExitCode") is None


# --- log lines ------------------------------------------------------------------------------------------


def test_quoted_logs_never_carry_secrets() -> None:
    pod = _pod(status=EXIT_1)
    assert secret_env_names(pod) == ["FORGE_S3_SECRET_KEY"]
    log = "\n".join([
        "loading shards from s3://forge/team/data",
        "FORGE_S3_SECRET_KEY=wJalrXUtnFEMI/K7MDENG",
        "config: {'aws_secret_access_key': 'abc123secret', 'step': 3}",
        "HF_TOKEN=hf_abcdefghijklmnop api_key: sk-live-1234 password=\"p w\"",
        "endpoint https://admin:hunter22@minio.local:9000/forge",
        "using AKIAIOSFODNN7EXAMPLE and Authorization: Bearer eyJhbGciOi.eyJzdWIiOjEy.sig",
        "the operator's own key opsKey9876 leaked here",
        "RuntimeError: CUDA out of memory",
    ])
    out = redact_log(log, secret_env_names(pod), ["opsKey9876", "x"])
    for secret in ("wJalrXUtnFEMI", "abc123secret", "hf_abcdefghijklmnop", "sk-live-1234", "p w", "hunter22",
                   "AKIAIOSFODNN7EXAMPLE", "eyJhbGciOi", "opsKey9876"):
        assert secret not in out, secret
    assert "FORGE_S3_SECRET_KEY=[REDACTED]" in out and "RuntimeError: CUDA out of memory" in out
    assert "s3://forge/team/data" in out and "https://[REDACTED]@minio.local:9000/forge" in out


def test_log_tail_is_bounded_in_lines_and_bytes() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    assert log_tail(text).splitlines() == [f"line {i}" for i in range(80, 100)]
    long = "x" * 5000 + "\n" + "y" * 100
    assert log_tail(long) == "y" * 100
    assert len(log_tail("z" * 5000).encode()) == 2048


def test_the_same_pods_seen_again_change_no_status_so_no_write_and_no_event() -> None:
    """One status write per change: a reconcile every few seconds that sees the same pods (running but not
    ready, crash-looping, pending) leaves the status as it was."""
    not_ready = _started({"state": {"running": {"startedAt": T}}}, "Running")
    for pods in ([_pod(status=not_ready)], [_pod(status=CRASH_LOOP)], [_pod(status={"phase": "Pending"})]):
        run, dataset, deployment = ForgeTrainingRunStatus(), ForgeDatasetStatus(), ForgeDeploymentStatus()
        for tick in range(3):
            now = NOW + timedelta(seconds=10 * tick)
            seen = observe_pods(pods, now)
            new_run, _ = derive_run_status(run, _run(seen), now)
            new_dataset, _ = derive_dataset_status(dataset, DatasetObservation(
                1, job_name="d-prepare", job=JobObservation(active=1), pods=seen), now)
            new_deployment, _ = derive_deployment_status(deployment, DeploymentObservation(
                1, gate_passed=True, deployment={"status": {}}, pods=seen), now)
            if tick:
                assert (new_run, new_dataset, new_deployment) == (run, dataset, deployment)
                assert pods_event(run, new_run) is None and pods_event(deployment, new_deployment) is None
            run, dataset, deployment = new_run, new_dataset, new_deployment
    cond = get_condition(run.conditions, PODS_READY)
    assert cond is not None and cond.reason == "Pending"
    starting = get_condition(derive_run_status(ForgeTrainingRunStatus(), _run(observe_pods([_pod(status=not_ready)], NOW)),
                                               NOW)[0].conditions, PODS_READY)
    assert starting is not None and (starting.reason, starting.message) == ("Starting", "0/1 pod(s) ready, none failing")
