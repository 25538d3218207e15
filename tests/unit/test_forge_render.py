"""`forge render PATH... [--namespace NS]` prints, as YAML, every object the operator would apply for the
manifests (references taken as Ready, placeholder digests), like `helm template`: a reviewer sees the Jobs,
Deployments and NetworkPolicies in a pull request, and a policy checker can read them."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from forge_operator.preview import PLACEHOLDER_DIGEST, PLACEHOLDER_UID
from tests.support.forge_render import ACME_PIPELINE, EXAMPLES, Rendered, forge_render

SETTINGS = {"FORGE_STORE_PEER_CIDRS": "10.20.30.40/32", "FORGE_STORE_BUCKET": "acme-forge",
            "FORGE_TRAINER_IMAGE": "registry.acme/forge-trainer:1.2.3"}


@pytest.fixture(scope="module")
def pipeline() -> Rendered:
    out = forge_render(*ACME_PIPELINE, settings=SETTINGS, namespace="ml")
    assert out.returncode == 0, out.stderr
    return out


def test_every_resource_becomes_the_objects_the_operator_applies(pipeline: Rendered) -> None:
    kinds = [(o["kind"], o["metadata"]["name"]) for o in pipeline.objects]
    # a dataset: fence, config, Job; a run: fences, its rendezvous store (Service, Deployment), config, Job; a deployment: fence,
    # Service, Deployment and (autoscaling) an HPA; each fence before the pods it fences
    assert kinds[:3] == [("NetworkPolicy", "handbook-corpus-prepare"), ("ConfigMap", "handbook-corpus-prepare-config"),
                         ("Job", "handbook-corpus-prepare")]
    assert [(k, n) for k, n in kinds if n.startswith("acme-1b-base")] == [
        ("NetworkPolicy", "acme-1b-base-train"), ("NetworkPolicy", "acme-1b-base-rendezvous"),
        ("Service", "acme-1b-base-rendezvous"), ("Deployment", "acme-1b-base-rendezvous"),
        ("ConfigMap", "acme-1b-base-train-config"), ("Job", "acme-1b-base-train-0")]
    assert [k for k, n in kinds if n.startswith("acme-router")] == [
        "NetworkPolicy", "Service", "Deployment", "HorizontalPodAutoscaler"]
    runs = [j for j in pipeline.of_kind("Job") if j["metadata"]["name"].endswith("-train-0")]
    # one fence per workload, one more per run for its rendezvous store
    assert len(pipeline.of_kind("Job")) == 6 and len(pipeline.of_kind("NetworkPolicy")) == 7 + len(runs)
    for obj in pipeline.objects:
        assert obj["metadata"]["namespace"] == "ml"
        assert obj["metadata"]["ownerReferences"][0]["uid"] == PLACEHOLDER_UID
        kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_references_are_taken_as_ready_with_placeholder_uris_and_digests(pipeline: Rendered) -> None:
    configs = {c["metadata"]["name"]: yaml.safe_load(c["data"]["config.yaml"]) for c in pipeline.of_kind("ConfigMap")}
    sft = next(v for k, v in configs.items() if k.startswith("acme-1b-support"))
    text = yaml.safe_dump(sft)
    assert f"s3://acme-forge/forge/ml/forgedataset/support-chats/{PLACEHOLDER_UID}/manifest.json" in text
    assert f"s3://acme-forge/forge/ml/forgetrainingrun/acme-1b-base/{PLACEHOLDER_UID}/model" in text
    (serving,) = [d for d in pipeline.of_kind("Deployment")
                  if d["metadata"]["labels"]["app.kubernetes.io/component"] != "rendezvous"]
    fetch = serving["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert f"s3://acme-forge/forge/ml/forgetrainingrun/acme-1b-router/{PLACEHOLDER_UID}/model" in fetch
    assert PLACEHOLDER_DIGEST in fetch
    assert all(c["image"] == "registry.acme/forge-trainer:1.2.3" for j in pipeline.of_kind("Job")
               for c in j["spec"]["template"]["spec"]["containers"])


def test_a_manifest_that_names_its_namespace_keeps_it(tmp_path: Path) -> None:
    doc = yaml.safe_load((EXAMPLES / "pipeline" / "05-deployment.yaml").read_text())
    doc["metadata"]["namespace"] = "serving"
    (tmp_path / "dep.yaml").write_text(yaml.safe_dump(doc))
    out = forge_render(tmp_path, settings=SETTINGS, namespace="ml")
    assert out.returncode == 0, out.stderr
    assert {o["metadata"]["namespace"] for o in out.objects} == {"serving"}
    fetch = out.of_kind("Deployment")[0]["spec"]["template"]["spec"]["initContainers"][0]["command"]
    assert any(a.startswith("s3://acme-forge/forge/serving/") for a in fetch)


def test_what_the_operator_would_refuse_is_named_and_the_rest_still_printed(tmp_path: Path) -> None:
    # a local folder as the source: fine for `forge run`, refused on a cluster
    (tmp_path / "a.yaml").write_text("apiVersion: forge.ai/v1alpha1\nkind: ForgeDataset\nmetadata: {name: notes}\n"
                                     "spec: {source: {uri: data/corpus/}}\n---\n"
                                     "apiVersion: forge.ai/v1alpha1\nkind: ForgeTrainingRun\nmetadata: {name: base}\n"
                                     "spec: {stage: pretrain, datasetRef: notes, model: {size: tiny}}\n")
    out = forge_render(tmp_path, settings=SETTINGS)
    assert out.returncode == 1
    assert "a.yaml (document 1): ForgeDataset notes: spec.source.uri: 'data/corpus/' must be an s3://" in out.stderr
    assert [o["kind"] for o in out.objects] == ["NetworkPolicy", "NetworkPolicy", "Service", "Deployment",
                                                 "ConfigMap", "Job"]
    assert out.objects[-1]["metadata"]["name"] == "base-train-0"


def test_a_malformed_manifest_prints_nothing_and_names_file_and_field(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("apiVersion: forge.ai/v1alpha1\nkind: ForgeTrainingRun\nmetadata: {name: r}\n"
                                       "spec: {stage: pretrain, datasetRef: d, model: {size: tiny}, maxRestarts: -1}\n")
    out = forge_render(tmp_path, settings=SETTINGS)
    assert out.returncode == 1 and out.objects == []
    assert "bad.yaml (document 1): ForgeTrainingRun r: spec.maxRestarts" in out.stderr


def test_a_reference_outside_the_manifests_is_taken_as_ready(tmp_path: Path) -> None:
    (tmp_path / "dep.yaml").write_text("apiVersion: forge.ai/v1alpha1\nkind: ForgeDeployment\nmetadata: {name: web}\n"
                                       "spec: {modelRef: elsewhere}\n")
    out = forge_render(tmp_path, settings=SETTINGS)
    assert out.returncode == 0, out.stderr
    assert [o["kind"] for o in out.objects] == ["NetworkPolicy", "Service", "Deployment"]
