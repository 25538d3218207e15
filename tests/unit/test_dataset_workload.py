"""A ForgeDataset plans and renders into the ConfigMap + Job a platform engineer expects."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
import yaml

from forge_operator.api import ForgeDataset
from forge_operator.plan.dataset import plan_dataset
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.render.dataset import render_dataset
from forge_operator.settings import OperatorSettings
from forge_trainer.config import PrepareConfig

SETTINGS = OperatorSettings(store_endpoint="minio.storage:9000", store_secure=False, store_bucket="acme-forge",
                            trainer_image="registry.acme/forge-trainer:1.0")


def _dataset(**spec: Any) -> ForgeDataset:
    return ForgeDataset.model_validate({
        "apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset",
        "metadata": {"name": "handbook", "namespace": "ml", "uid": "u-123", "generation": 1},
        "spec": {"source": {"uri": "s3://raw/handbook/"}, **spec},
    })


def _render(ds: ForgeDataset) -> dict[str, dict[str, Any]]:
    return {m["kind"]: m for m in render_dataset(plan_dataset(ds, SETTINGS))}


def test_job_runs_prepare_with_its_config_from_a_configmap() -> None:
    objs = _render(_dataset(tokenizer={"vocabSize": 8000}))
    cm, job = objs["ConfigMap"], objs["Job"]
    assert cm["metadata"]["name"] == "handbook-prepare-config" and job["metadata"]["name"] == "handbook-prepare"
    config = PrepareConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert config.source == "s3://raw/handbook/"
    assert config.output == "s3://acme-forge/forge/ml/forgedataset/handbook/u-123"
    assert config.tokenizer.vocab_size == 8000
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["forge-trainer", "prepare", "--config", "/etc/forge/config.yaml"]
    assert container["image"] == "registry.acme/forge-trainer:1.0"
    assert {"name": "config", "mountPath": "/etc/forge", "readOnly": True} in container["volumeMounts"]


def test_split_bytes_reaches_the_workload_and_has_a_floor() -> None:
    cm = _render(_dataset(source={"uri": "s3://raw/handbook/", "splitBytes": 1 << 20}))["ConfigMap"]
    assert PrepareConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"])).piece_bytes == 1 << 20
    cm = _render(_dataset())["ConfigMap"]
    assert PrepareConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"])).piece_bytes == 256 << 20
    with pytest.raises(ValueError, match=r"source\.splitBytes[\s\S]*greater than or equal to 65536"):
        _dataset(source={"uri": "s3://raw/handbook/", "splitBytes": 1000})


def test_children_are_owned_by_the_dataset_and_labelled() -> None:
    objs = _render(_dataset())
    assert set(objs) == {"NetworkPolicy", "ConfigMap", "Job"}
    for obj in objs.values():
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset", "name": "handbook",
                         "uid": "u-123", "controller": True, "blockOwnerDeletion": True}
        assert obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["labels"]["forge.ai/forgedataset"] == "handbook"


def test_pod_is_non_root_and_credentials_come_only_from_a_secret() -> None:
    objs = _render(_dataset(source={"uri": "s3://raw/x", "credentialsSecret": {"name": "raw-reader"}}))
    pod = objs["Job"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in container["env"]}
    assert env["FORGE_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "raw-reader", "key": "accessKey"}
    assert env["FORGE_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "raw-reader", "key": "secretKey"}
    assert "secret" not in objs["ConfigMap"]["data"]["config.yaml"].lower()


def test_rendered_manifests_validate_against_current_kubernetes() -> None:
    for obj in _render(_dataset(resources={"cpu": "4", "memory": "16Gi"})).values():
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_local_source_is_refused_on_kubernetes() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec.source.uri: '/data/corpus' must be an s3://"):
        plan_dataset(_dataset(source={"uri": "/data/corpus"}), SETTINGS)


def test_reused_tokenizer_is_resolved_to_a_uri() -> None:
    ds = _dataset(tokenizer={"datasetRef": "base-corpus"})
    with pytest.raises(InvalidSpecError, match=r"tokenizer\.datasetRef"):
        plan_dataset(ds, SETTINGS)
    plan = plan_dataset(ds, SETTINGS, reused_tokenizer_uri="s3://acme-forge/x/tokenizer.json")
    assert plan.config.tokenizer.uri == "s3://acme-forge/x/tokenizer.json"
    assert plan.config.tokenizer.vocab_size is None


def test_names_are_deterministic_and_short_enough() -> None:
    from forge_operator.plan.naming import child_name

    long = "a" * 60
    assert child_name(long, "prepare") == child_name(long, "prepare")
    assert len(child_name(long, "prepare")) <= 63
    assert child_name("short", "prepare") == "short-prepare"
