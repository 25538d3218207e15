"""A resource may only use artifacts under its own namespace's prefix of Forge's bucket
(`forge/<namespace>/...`). The check parses URIs the way the store does (`split_uri`) and compares key
segments, so spellings the store reads the same way (`S3://`, `s3://bucket//forge/...`, `..`) cannot
reach another namespace; the CRDs refuse malformed URIs before the operator sees them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from forge_operator.api import ForgeDataset, ForgeDeployment, ForgeTrainingRun
from forge_operator.api.common import STORE_URI_PATTERN
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.resolve.dataset import resolve_dataset
from forge_operator.resolve.deployment import resolve_deployment
from forge_operator.resolve.references import check_namespace
from forge_operator.resolve.training import resolve_run
from forge_trainer.store import split_uri

ROOT = Path(__file__).resolve().parents[2]
BUCKET, NS = "forge", "team-a"
WHAT = "a run may only use artifacts of its own namespace"


class NoResources:
    """A Lookup of an empty namespace."""

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        return None

    def all(self, kind: str) -> list[dict[str, Any]]:
        return []


def _body(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "forge.ai/v1alpha1", "kind": kind,
            "metadata": {"name": "x", "namespace": NS, "uid": "u", "generation": 1}, "spec": spec}


# spellings of team-b's prefix that the store reads as team-b's keys (or as a key no one wrote)
HOSTILE = [
    "s3://forge//forge/team-b/forgetrainingrun/m/u/model",
    "S3://forge/forge/team-b/forgetrainingrun/m/u/model",
    "s3://FORGE/forge/team-b/forgetrainingrun/m/u/model",
    "s3://forge/forge/team-a/../team-b/forgetrainingrun/m/u/model",
    "s3://forge/forge/./team-b/m",
    "s3://forge/forge//team-b/m",
    "s3://forge/forge/team-b",
    "s3://forge/forge",
    "s3://forge/elsewhere/team-a/model",
]
ALLOWED = [
    "s3://forge/forge/team-a/forgetrainingrun/m/u/model",
    "s3://forge/forge/team-a/forgetrainingrun/m/u/model/",
    "s3://raw-corpora/team-b/handbook/",  # another bucket: the Secret's keys decide what it may read
    "/data/models/m",
    "models/m",
]


@pytest.mark.parametrize("uri", HOSTILE)
def test_another_namespaces_prefix_is_refused_however_it_is_spelled(uri: str) -> None:
    with pytest.raises(InvalidSpecError) as err:
        check_namespace(uri, "spec.init.modelUri", BUCKET, NS, WHAT)
    assert str(err.value).startswith("spec.init.modelUri: ")
    assert str(err.value).endswith(f"{WHAT} ({NS})") or "path segment" in str(err.value)


def test_the_refusals_name_what_is_wrong() -> None:
    with pytest.raises(InvalidSpecError, match=r"^spec.modelUri: refers to namespace team-b; "):
        check_namespace("S3://forge/forge/team-b/m", "spec.modelUri", BUCKET, NS, WHAT)
    with pytest.raises(InvalidSpecError, match=r"empty, '\.' or '\.\.' path segment"):
        check_namespace("s3://forge//forge/team-a/m", "spec.modelUri", BUCKET, NS, WHAT)
    with pytest.raises(InvalidSpecError, match=r"is outside the namespace prefix forge/team-a/"):
        check_namespace("s3://forge/elsewhere/m", "spec.modelUri", BUCKET, NS, WHAT)
    with pytest.raises(InvalidSpecError, match=r"^spec.modelUri: 'gs://forge/m': unsupported URI scheme 'gs'"):
        check_namespace("gs://forge/m", "spec.modelUri", BUCKET, NS, WHAT)


def test_the_store_reads_the_hostile_spellings_as_the_other_namespaces_keys() -> None:
    """Why a string prefix was not enough: the store's own parser lands these in team-b's prefix."""
    assert split_uri(HOSTILE[0]) == ("s3", "forge", "forge/team-b/forgetrainingrun/m/u/model")
    assert split_uri(HOSTILE[1]) == ("s3", "forge", "forge/team-b/forgetrainingrun/m/u/model")


@pytest.mark.parametrize("uri", ALLOWED)
def test_own_namespace_other_buckets_and_local_paths_pass(uri: str) -> None:
    check_namespace(uri, "spec.init.modelUri", BUCKET, NS, WHAT)


@pytest.mark.parametrize(("field", "spec"), [
    ("spec.source.uri", {"source": {"uri": "s3://forge/forge/team-b/forgedataset/d/u/shards/"}}),
    ("spec.tokenizer.uri", {"source": {"uri": "s3://raw/d/"},
                            "tokenizer": {"uri": "s3://forge/forge/team-b/forgedataset/d/u/tokenizer.json"}}),
])
def test_a_dataset_may_not_read_another_namespaces_artifacts(field: str, spec: dict[str, Any]) -> None:
    ds = ForgeDataset.model_validate(_body("ForgeDataset", spec))
    with pytest.raises(InvalidSpecError, match=rf"^{re.escape(field)}: refers to namespace team-b; a dataset"):
        resolve_dataset(ds, NoResources(), bucket=BUCKET)


def test_runs_and_deployments_are_checked_through_the_same_parser() -> None:
    run = ForgeTrainingRun.model_validate(_body("ForgeTrainingRun", {
        "stage": "sft", "datasetRef": "d", "init": {"modelUri": "s3://forge/forge/team-a/../team-b/m"}}))
    with pytest.raises(InvalidSpecError, match=r"^spec.init.modelUri: .* path segment"):
        resolve_run(run, NoResources(), bucket=BUCKET, trainer_image="img")
    dep = ForgeDeployment.model_validate(_body("ForgeDeployment", {"modelUri": "s3://forge/forge/team-b/m"}))
    with pytest.raises(InvalidSpecError, match=r"^spec.modelUri: refers to namespace team-b"):
        resolve_deployment(dep, NoResources(), bucket=BUCKET)


@pytest.mark.parametrize(("kind", "spec", "field"), [
    ("ForgeDataset", {"source": {"uri": "S3://raw/d/"}}, "spec.source.uri"),
    ("ForgeDataset", {"source": {"uri": "s3://raw//d/"}}, "spec.source.uri"),
    ("ForgeDataset", {"source": {"uri": "s3://raw/d/"}, "tokenizer": {"uri": "s3://forge//forge/team-b/t"}},
     "tokenizer.uri"),
    ("ForgeTrainingRun", {"stage": "sft", "datasetRef": "d", "init": {"checkpointUri": "http://x/c"}},
     "spec.init.checkpointUri"),
    ("ForgeTrainingRun", {"stage": "sft", "datasetRef": "d", "init": {"modelUri": "s3://Forge/m"}},
     "spec.init.modelUri"),
    ("ForgeDeployment", {"modelUri": "s3://forge//forge/team-b/m"}, "spec.modelUri"),
])
def test_the_api_refuses_malformed_uris(kind: str, spec: dict[str, Any], field: str) -> None:
    model = {"ForgeDataset": ForgeDataset, "ForgeTrainingRun": ForgeTrainingRun, "ForgeDeployment": ForgeDeployment}[kind]
    with pytest.raises(ValidationError) as err:
        model.model_validate(_body(kind, spec))
    assert field.removeprefix("spec.") in str(err.value)


def _crd_schema(plural: str) -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / f"forge.ai_{plural}.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])


def test_every_uri_field_of_the_crds_carries_the_pattern() -> None:
    ds, run, dep = _crd_schema("forgedatasets"), _crd_schema("forgetrainingruns"), _crd_schema("forgedeployments")
    for field in (ds["properties"]["source"]["properties"]["uri"], run["properties"]["init"]["properties"]["modelUri"],
                  run["properties"]["init"]["properties"]["checkpointUri"], dep["properties"]["modelUri"]):
        assert field["pattern"] == STORE_URI_PATTERN
    rules = [v["rule"] for v in ds["x-kubernetes-validations"]]
    assert any("self.tokenizer.uri.matches(" in r and STORE_URI_PATTERN in r for r in rules)
    # and the pattern is the one that refuses the spellings above while local paths keep working
    for uri in ("S3://forge/x", "s3://forge//forge/team-b/x", "s3://FORGE/x", "gs://b/x"):
        assert not re.match(STORE_URI_PATTERN, uri), uri
    for uri in ("s3://forge/forge/team-a/x/", "data/corpus/", "./d", "/abs/d", "file:///abs/d"):
        assert re.match(STORE_URI_PATTERN, uri), uri
