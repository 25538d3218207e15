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
    """The rendered objects by kind (the training pods' NetworkPolicy as `NetworkPolicy`, the rendezvous
    store's as `NetworkPolicy/rendezvous`)."""
    objs: dict[str, dict[str, Any]] = {}
    for m in render_training(plan_training_run(run, SETTINGS, REFS, attempt=attempt)):
        component = m["metadata"]["labels"]["app.kubernetes.io/component"]
        objs[m["kind"] if m["kind"] != "NetworkPolicy" or component == "train" else f"{m['kind']}/{component}"] = m
    return objs


def test_app_def_has_the_ddp_shape() -> None:
    plan = plan_training_run(_run(), SETTINGS, REFS)
    (role,) = plan.app.roles
    assert (role.min_replicas, role.num_replicas) == (2, 4)
    assert role.entrypoint == "bash" and role.resource.gpu == 8 and role.resource.memMB == 512 * 1024
    assert role.port_map["c10d"] == 29400
    assert role.env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_job_runs_torchrun_elastic_as_clients_of_the_run_store() -> None:
    job = _objs(_run())["Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 4
    pod = spec["template"]["spec"]
    assert "subdomain" not in pod  # no pod's hostname is part of the rendezvous
    cmd = pod["containers"][0]["command"][2]
    assert cmd.startswith("forge-trainer torchrun -- ")
    for part in ("--nnodes=2:4", "--nproc-per-node=8", "--rdzv-backend=c10d",
                 "--rdzv-endpoint=${FORGE_RDZV_HOST:=localhost}:${FORGE_RDZV_PORT:-29400}", "--rdzv-id=run-uid",
                 "last_call_timeout=5", "keep_alive_interval=1",
                 "${FORGE_RDZV_IS_HOST:+,is_host=$FORGE_RDZV_IS_HOST}", "--max-restarts=3",
                 "-m forge_trainer.cli train --config /etc/forge/config.yaml"):
        assert part in cmd
    env = {e["name"]: e.get("value") or e.get("valueFrom") for e in pod["containers"][0]["env"]}
    assert env["FORGE_RDZV_HOST"] == "base-rendezvous.ml.svc" and env["FORGE_RDZV_IS_HOST"] == "false"
    # the address other nodes reach rank 0's workers at: the pod IP, never a hostname
    assert env["PET_LOCAL_ADDR"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # torchrun gives the workers time for their SIGTERM checkpoint within the pod's grace period, not 30 s
    assert 30 < int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"]) < pod["terminationGracePeriodSeconds"]


def test_the_rendered_command_is_a_store_client_in_a_pod_and_hosts_the_store_alone() -> None:
    import subprocess

    cmd = _objs(_run())["Job"]["spec"]["template"]["spec"]["containers"][0]["command"]
    echo = [cmd[0], cmd[1], "echo " + cmd[2].split(" -- ")[1].split(" --max-restarts")[0]]
    pod_env = {"FORGE_RDZV_HOST": "base-rendezvous.ml.svc", "FORGE_RDZV_IS_HOST": "false", "PATH": "/usr/bin:/bin"}
    in_pod = subprocess.run(echo, env=pod_env, capture_output=True, text=True, check=True).stdout
    assert "--rdzv-endpoint=base-rendezvous.ml.svc:29400 " in in_pod
    assert in_pod.strip().endswith(",read_timeout=300,is_host=false")
    alone = subprocess.run(echo, env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, check=True).stdout
    assert "--rdzv-endpoint=localhost:29400 " in alone and "is_host" not in alone


def test_rendezvous_store_is_one_locked_down_pod_per_attempt_behind_a_cluster_ip() -> None:
    objs = _objs(_run(), attempt=2)
    dep, svc = objs["Deployment"], objs["Service"]
    assert dep["metadata"]["name"] == svc["metadata"]["name"] == "base-rendezvous"
    assert dep["metadata"]["ownerReferences"][0]["kind"] == "ForgeTrainingRun"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    # the Service reaches only this attempt's store; the Deployment's (immutable) selector any attempt's
    assert svc["spec"]["selector"] == pod_labels and pod_labels["forge.ai/attempt"] == "2"
    assert "forge.ai/attempt" not in dep["spec"]["selector"]["matchLabels"]
    assert set(dep["spec"]["selector"]["matchLabels"].items()) <= set(pod_labels.items())
    assert svc["spec"]["type"] == "ClusterIP" and "clusterIP" not in svc["spec"]
    assert svc["spec"]["ports"] == [{"name": "c10d", "port": 29400, "targetPort": 29400, "protocol": "TCP"}]
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["forge-trainer", "rendezvous-store", "--port", "29400"]
    assert container["readinessProbe"]["tcpSocket"] == {"port": 29400}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    # on the training pods' node pool (which has the image), with their priority
    trainer_pod = objs["Job"]["spec"]["template"]["spec"]
    for key in ("priorityClassName", "nodeSelector", "tolerations"):
        assert pod[key] == trainer_pod[key], key
    assert container["resources"]["limits"] == {"memory": "512Mi"} and "nvidia.com/gpu" not in container["resources"]
    # the store pod is not a training pod: a selector for the run's trainers does not match it
    train_labels = objs["Job"]["spec"]["template"]["metadata"]["labels"]
    assert train_labels["app.kubernetes.io/component"] == "train" != pod_labels["app.kubernetes.io/component"]


def test_gpu_node_pool_tolerations_priority_and_shm() -> None:
    pod = _objs(_run())["Job"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu" and pod["priorityClassName"] == "training"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_network_policies_fence_the_run_and_its_store() -> None:
    objs = _objs(_run())
    np = objs["NetworkPolicy"]
    egress_ports = [p["port"] for rule in np["spec"]["egress"] for p in rule.get("ports", [])]
    assert 53 in egress_ports and 9000 in egress_ports
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]
    store_pods = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    trainer_pods = objs["Job"]["spec"]["template"]["metadata"]["labels"]

    def selects(peer: dict[str, Any], labels: dict[str, str]) -> bool:
        """Whether a same-namespace pod peer (or a policy's podSelector) matches pods with `labels`."""
        if "podSelector" not in peer or "namespaceSelector" in peer:
            return False
        return set(peer["podSelector"].get("matchLabels", {}).items()) <= set(labels.items())

    # the trainers reach their store on the rendezvous port, and only there
    (to_store,) = [r for r in np["spec"]["egress"] if any(selects(p, store_pods) for p in r.get("to", []))]
    assert to_store["ports"] == [{"protocol": "TCP", "port": 29400}]
    # the store answers the run's trainers on that port, and connects nowhere
    sealed = objs["NetworkPolicy/rendezvous"]
    assert sealed["metadata"]["name"] == "base-rendezvous"
    assert set(sealed["spec"]["podSelector"]["matchLabels"].items()) <= set(store_pods.items())
    assert not selects(sealed["spec"], trainer_pods)
    (ingress,) = sealed["spec"]["ingress"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": 29400}]
    assert [selects(p, trainer_pods) for p in ingress["from"]] == [True]
    assert sealed["spec"]["egress"] == [] and sealed["spec"]["policyTypes"] == ["Ingress", "Egress"]


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


def test_attempts_get_new_job_names_and_same_store_names() -> None:
    a0, a1 = _objs(_run(), 0), _objs(_run(), 1)
    assert (a0["Job"]["metadata"]["name"], a1["Job"]["metadata"]["name"]) == ("base-train-0", "base-train-1")
    for kind in ("Service", "Deployment", "NetworkPolicy/rendezvous"):
        assert a0[kind]["metadata"]["name"] == a1[kind]["metadata"]["name"]
    assert a0["Deployment"]["spec"]["selector"] == a1["Deployment"]["spec"]["selector"]


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
