"""What a workload pod may take from its node: every /tmp is bounded, /dev/shm is bounded by the pod's
memory, the vLLM server runs on a read-only root filesystem with sized writable directories, and a CPU run
is not pinned to GPU nodes."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate
import pytest

from forge_operator.api import ForgeDataset, ForgeDeployment, ForgeTrainingRun
from forge_operator.plan.dataset import plan_dataset
from forge_operator.plan.deployment import plan_deployment
from forge_operator.plan.training import ResolvedRefs, job_shape, plan_training_run, shape_changes
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.render.dataset import render_dataset
from forge_operator.render.deployment import render_deployment
from forge_operator.render.training import render_training
from forge_operator.settings import DEFAULT_VLLM_IMAGE, OperatorSettings
from tests.support.chart import render

SETTINGS = OperatorSettings(store_endpoint="minio:9000", store_secure=False)
REFS = ResolvedRefs(dataset_manifest="s3://forge/forge/ml/forgedataset/corpus/u/manifest.json")
MODEL = "s3://forge/forge/ml/forgetrainingrun/tuned/u/model"
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def _meta(name: str) -> dict[str, Any]:
    return {"name": name, "namespace": "ml", "uid": f"uid-{name}"}


def _run(**resources: Any) -> ForgeTrainingRun:
    spec: dict[str, Any] = {"stage": "pretrain", "datasetRef": "corpus", "model": {"size": "tiny"}}
    if resources:
        spec["resources"] = resources
    return ForgeTrainingRun.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
                                            "metadata": _meta("base"), "spec": spec})


def _train_pod(settings: OperatorSettings = SETTINGS, **resources: Any) -> dict[str, Any]:
    job = next(o for o in render_training(plan_training_run(_run(**resources), settings, REFS)) if o["kind"] == "Job")
    return dict(job["spec"]["template"]["spec"])


def _serve_pod(settings: OperatorSettings = SETTINGS, **spec: Any) -> dict[str, Any]:
    dep = ForgeDeployment.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDeployment",
                                          "metadata": _meta("chat"), "spec": {"modelRef": "tuned", **spec}})
    objs = render_deployment(plan_deployment(dep, settings, MODEL, "sha256:abc"))
    return dict(next(o for o in objs if o["kind"] == "Deployment")["spec"]["template"]["spec"])


def _dataset_pod() -> dict[str, Any]:
    ds = ForgeDataset.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset",
                                      "metadata": _meta("corpus"), "spec": {"source": {"uri": "s3://raw/c/"}}})
    job = next(o for o in render_dataset(plan_dataset(ds, SETTINGS)) if o["kind"] == "Job")
    return dict(job["spec"]["template"]["spec"])


def _volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(next(v for v in pod["volumes"] if v["name"] == name))


VLLM = {"runtime": "vllm", "resources": {"gpus": 1, "memory": "64Gi"}}
PODS = {"dataset": _dataset_pod, "training": lambda: _train_pod(), "training-cpu": lambda: _train_pod(gpusPerNode=0),
        "builtin": lambda: _serve_pod(), "vllm": lambda: _serve_pod(**VLLM)}


@pytest.mark.parametrize("kind", sorted(PODS))
def test_every_writable_directory_is_a_sized_empty_dir(kind: str) -> None:
    """The root filesystem is read-only; what a container may write is an emptyDir with a sizeLimit, so
    one pod cannot fill its node's disk or memory (the downloaded model's volume is sized by the model)."""
    pod = PODS[kind]()
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in pod.get("initContainers", []) + pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, container["name"]
        for mount in container["volumeMounts"]:
            if mount.get("readOnly") or "emptyDir" not in volumes[mount["name"]] or mount["name"] == "models":
                continue
            assert volumes[mount["name"]]["emptyDir"].get("sizeLimit"), f"{kind}: {mount['mountPath']} is unbounded"
        mounted = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounted, f"{kind}/{container['name']} has no writable /tmp"
    for obj in [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod}]:
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_vllm_runs_read_only_with_a_home_and_a_user_it_can_write_and_name() -> None:
    pod = _serve_pod(**VLLM)
    server = pod["containers"][0]
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e.get("value") for e in server["env"]}
    writable = {m["mountPath"] for m in server["volumeMounts"] if not m.get("readOnly")}
    # vLLM, Triton and torch.compile cache under HOME; torch.compile names its directory after
    # getpass.getuser(), which needs USER when the pod's uid has no passwd entry in the vLLM image
    assert env["HOME"] in writable and env["USER"]
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert _volume(pod, "tmp")["emptyDir"]["sizeLimit"] == "8Gi"


@pytest.mark.parametrize(("resources", "shm"), [
    ({"gpus": 1, "memory": "64Gi"}, "16Gi"),   # half of the memory, at most 16Gi
    ({"gpus": 1, "memory": "8Gi"}, "4Gi"),     # half of a small memory limit
    ({"gpus": 1}, "4Gi"),                      # memory unset: half of vLLM's default 8Gi
])
def test_vllm_shared_memory_is_bounded_by_the_pods_memory(resources: dict[str, Any], shm: str) -> None:
    pod = _serve_pod(runtime="vllm", resources=resources)
    assert _volume(pod, "dshm")["emptyDir"] == {"medium": "Memory", "sizeLimit": shm}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


@pytest.mark.parametrize(("resources", "shm"), [
    ({}, "16Gi"),                                   # no memory limit: the 16Gi default
    ({"memory": "512Gi"}, "16Gi"),                  # half of it, at most 16Gi
    ({"memory": "8Gi"}, "4Gi"),                     # half of a small memory limit
    ({"memory": "3Gi"}, "1536Mi"),
    ({"memory": "8Gi", "shmSize": "2Gi"}, "2Gi"),   # an explicit size is kept
    ({"memory": "8Gi", "shmSize": "16Gi"}, "8Gi"),  # ... but capped at the memory it counts against
    ({"shmSize": "32Gi"}, "32Gi"),                  # no memory limit: the explicit size
])
def test_training_shared_memory_is_sized_from_the_memory(resources: dict[str, Any], shm: str) -> None:
    pod = _train_pod(**resources)
    assert _volume(pod, "dshm")["emptyDir"] == {"medium": "Memory", "sizeLimit": shm}


def test_training_scratch_is_bounded_and_configurable() -> None:
    assert _volume(_train_pod(), "tmp")["emptyDir"] == {"sizeLimit": "200Gi"}
    assert _volume(_train_pod(scratchSize="1Ti"), "tmp")["emptyDir"] == {"sizeLimit": "1Ti"}


@pytest.mark.parametrize(("resources", "field"), [({"shmSize": "lots"}, "spec.resources.shmSize"),
                                                  ({"scratchSize": "-1"}, "spec.resources.scratchSize")])
def test_bad_sizes_name_the_field(resources: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpecError, match=rf"{field}: .* is not a Kubernetes quantity"):
        plan_training_run(_run(**resources), SETTINGS, REFS)


def test_bad_serving_memory_names_the_field() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.resources\.memory: 'lots' is not a Kubernetes quantity"):
        _serve_pod(runtime="vllm", resources={"gpus": 1, "memory": "lots"})


def test_an_operator_upgrade_does_not_roll_a_default_run() -> None:
    """A run without spec.resources: the shape the previous operator recorded on its Job still matches."""
    recorded = json.dumps({"gpusPerNode": 8, "maxNodes": 1, "minNodes": 1, "nodeSelector": H100,
                           "shmSize": "16Gi", "tolerations": []}, sort_keys=True, separators=(",", ":"))
    assert shape_changes(recorded, job_shape(_run().spec.resources)) == []
    # a run created under the previous CRD carries its 16Gi shmSize default explicitly: nothing rolls either
    persisted = _run(gpusPerNode=0, memory="8Gi", shmSize="16Gi").spec.resources
    assert job_shape(persisted)["shmSize"] == "16Gi"


@pytest.mark.parametrize(("resources", "selector"), [
    ({}, H100),                                         # GPUs requested: the H100 pool by default
    ({"gpusPerNode": 0}, None),                         # a CPU run goes to any node
    ({"gpusPerNode": 0, "cpu": "2", "memory": "4Gi"}, None),
    ({"gpusPerNode": 0, "nodeSelector": {"pool": "cpu"}}, {"pool": "cpu"}),  # explicit: kept
    ({"gpusPerNode": 4, "nodeSelector": {}}, None),     # explicit "anywhere" for GPU pods: kept
    ({"gpusPerNode": 4, "nodeSelector": {"nvidia.com/gpu.product": "A100"}}, {"nvidia.com/gpu.product": "A100"}),
])
def test_default_placement_only_when_gpus_are_requested(resources: dict[str, Any],
                                                        selector: dict[str, str] | None) -> None:
    pod = _train_pod(**resources)
    assert pod.get("nodeSelector") == selector


def test_vllm_image_comes_from_the_chart_values() -> None:
    """values.yaml vllm.image -> the operator's FORGE_VLLM_IMAGE -> the image of a vLLM deployment's pods."""
    pinned = "registry.acme/vllm-openai:v0.11.0@sha256:" + "b" * 64
    for values in ({"vllm": {"image": pinned}}, {}):
        operator = next(o for o in render(values) if o["kind"] == "Deployment")
        env = {e["name"]: e["value"] for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
               if "value" in e}
        image = _serve_pod(OperatorSettings.from_env(env), **VLLM)["containers"][0]["image"]
        assert image == (pinned if values else DEFAULT_VLLM_IMAGE)
    assert DEFAULT_VLLM_IMAGE.startswith("vllm/vllm-openai:v")
