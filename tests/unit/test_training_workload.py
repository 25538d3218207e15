"""A ForgeTrainingRun plans into a TorchX AppDef and renders into the elastic job a cluster runs."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from forge_operator.api import ForgeTrainingRun
from forge_operator.plan.training import ResolvedRefs, plan_training_run
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.render.training import render_training
from forge_operator.settings import OperatorSettings
from forge_trainer.config import TrainConfig

SETTINGS = OperatorSettings(store_endpoint="minio.storage:9000", store_secure=False, store_bucket="acme-forge",
                            store_peer_cidrs=["10.20.30.40/32"])
REFS = ResolvedRefs(dataset_manifest="s3://acme-forge/forge/ml/forgedataset/corpus/u9/manifest.json",
                    dataset_digest="sha256:d")


def _run(**spec: Any) -> ForgeTrainingRun:
    base = {"stage": "pretrain", "datasetRef": "corpus", "model": {"size": "1b"},
            "resources": {"minNodes": 2, "maxNodes": 4, "gpusPerNode": 8, "cpu": "32", "memory": "512Gi",
                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                          "priorityClassName": "training"}}
    return ForgeTrainingRun.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
                                            "metadata": {"name": "base", "namespace": "ml", "uid": "run-uid"},
                                            "spec": {**base, **spec}})


def _objs(run: ForgeTrainingRun, attempt: int = 0) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in render_training(plan_training_run(run, SETTINGS, REFS, attempt=attempt))}


def test_app_def_has_the_ddp_shape() -> None:
    plan = plan_training_run(_run(), SETTINGS, REFS)
    (role,) = plan.app.roles
    assert (role.min_replicas, role.num_replicas) == (2, 4)
    assert role.entrypoint == "bash" and role.resource.gpu == 8 and role.resource.memMB == 512 * 1024
    assert role.port_map["c10d"] == 29400
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_job_runs_torchrun_elastic_against_pod_zero() -> None:
    job = _objs(_run())["Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "base-rdzv"
    cmd = pod["containers"][0]["command"][2]
    for part in ("--nnodes=2:4", "--nproc-per-node=8", "--rdzv-backend=c10d",
                 "--rdzv-endpoint=${FORGE_RANK0_HOST:=localhost}:${FORGE_RDZV_PORT:-29400}", "--rdzv-id=run-uid",
                 "last_call_timeout=5", "keep_alive_interval=1", "--max-restarts=3",
                 "-m forge_trainer.cli train --config /etc/forge/config.yaml"):
        assert part in cmd
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FORGE_RANK0_HOST"] == "base-train-0-0.base-rdzv"


def test_gpu_node_pool_tolerations_priority_and_shm() -> None:
    pod = _objs(_run())["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["priorityClassName"] == "training"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_headless_service_and_network_policy_fence_the_run() -> None:
    objs = _objs(_run())
    svc = objs["Service"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    np = objs["NetworkPolicy"]
    egress_ports = [p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])]
    assert 53 in egress_ports and 9000 in egress_ports
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_config_map_holds_the_resolved_trainer_config() -> None:
    cm = _objs(_run())["ConfigMap"]
    config = TrainConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert config.dataset == REFS.dataset_manifest
    assert config.output == "s3://acme-forge/forge/ml/forgetrainingrun/base/run-uid"


def test_queue_label_and_suspend() -> None:
    job = _objs(_run(resources={"queue": "gpu-h100"}))["Job"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-h100"
    assert job["spec"]["suspend"] is True
    assert _objs(_run(suspend=True))["Job"]["spec"]["suspend"] is True
    assert _objs(_run())["Job"]["spec"]["suspend"] is False


def test_attempts_get_new_job_names_and_same_service() -> None:
    a0, a1 = _objs(_run(), 0), _objs(_run(), 1)
    assert (a0["Job"]["metadata"]["name"], a1["Job"]["metadata"]["name"]) == ("base-train-0", "base-train-1")
    assert a0["Service"]["metadata"]["name"] == a1["Service"]["metadata"]["name"]


def test_manifests_validate_against_current_kubernetes() -> None:
    for obj in _objs(_run()).values():
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_bad_quantity_names_the_field() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.resources\.memory: 'lots' is not a Kubernetes quantity"):
        plan_training_run(_run(resources={"memory": "lots"}), SETTINGS, REFS)


def test_custom_verifier_source_is_mounted_from_its_configmap() -> None:
    run = _run(stage="rl", datasetRef="tasks", init={"baseRun": "tuned"}, model=None,
               rl={"reward": {"verifier": "custom", "customSource": {"name": "my-verifier", "key": "check.py"}}})
    refs = ResolvedRefs(dataset_manifest="s3://b/tasks/manifest.json", init_model_uri="s3://b/tuned/model")
    objs = {m["kind"]: m for m in render_training(plan_training_run(run, SETTINGS, refs))}
    pod = objs["Job"]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "verifier")
    assert volume["configMap"] == {"name": "my-verifier", "items": [{"key": "check.py", "path": "verifier.py"}]}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["FORGE_CUSTOM_VERIFIER"] == "/etc/forge/verifier/verifier.py"
    assert {"name": "verifier", "mountPath": "/etc/forge/verifier", "readOnly": True} in pod["containers"][0]["volumeMounts"]


@pytest.mark.parametrize(("stage", "verifier", "profile"), [
    ("rl", "python_tests", "profiles/forge-sandbox.json"),
    ("rl", "custom", "profiles/forge-sandbox.json"),
    ("rl", "exact_match", None),  # no model-written code runs: nothing beyond RuntimeDefault
    ("sft", None, None),
])
def test_only_pods_that_run_model_code_get_the_sandbox_seccomp_profile(stage: str, verifier: str | None,
                                                                        profile: str | None) -> None:
    settings = SETTINGS.model_copy(update={"sandbox_seccomp_profile": "profiles/forge-sandbox.json"})
    spec: dict[str, Any] = {"stage": stage, "datasetRef": "tasks", "init": {"baseRun": "tuned"}, "model": None}
    if verifier:
        reward: dict[str, Any] = {"verifier": verifier}
        if verifier == "custom":
            reward["customSource"] = {"name": "my-verifier", "key": "check.py"}
        spec["rl"] = {"reward": reward}
    refs = ResolvedRefs(dataset_manifest="s3://b/tasks/manifest.json", init_model_uri="s3://b/tuned/model")
    for with_setting, expected in ((settings, profile), (SETTINGS, None)):
        job = next(m for m in render_training(plan_training_run(_run(**spec), with_setting, refs)) if m["kind"] == "Job")
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]["securityContext"]
        assert container.get("seccompProfile") == (
            {"type": "Localhost", "localhostProfile": expected} if expected else None), (stage, verifier)
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert container["capabilities"] == {"drop": ["ALL"]} and container["allowPrivilegeEscalation"] is False
        kubernetes_validate.validate(job, "1.30.0", strict=True)
