"""The CRDs in crds/ are exactly what the models generate, structural, and accept the examples."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from forge_operator import crdgen
from forge_operator.api import KINDS
from forge_operator.manifests import load_manifests

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


def _crds() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        out[crd["spec"]["names"]["kind"]] = crd
    return out


def test_crds_match_the_models() -> None:
    assert crdgen.drift(CRDS) == [], "crds/ is stale: run `forge crds`"


def test_drift_is_detected(tmp_path: Path) -> None:
    crdgen.write(tmp_path)
    victim = tmp_path / crdgen.crd_filename(KINDS[0])
    victim.write_text(victim.read_text().replace("shortNames", "shortnames"))
    assert crdgen.drift(tmp_path) == [victim]


def _walk(node: Any, path: str = "") -> list[str]:
    bad = []
    if isinstance(node, dict):
        for key in ("$ref", "title", "anyOf", "allOf", "oneOf", "$defs"):
            if key in node:
                bad.append(f"{path}/{key}")
        if node.get("additionalProperties") is False:
            bad.append(f"{path}/additionalProperties: false")
        if "properties" in node and node.get("type") != "object":
            bad.append(f"{path}: properties without type object")
        for key, value in node.items():
            bad += _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            bad += _walk(value, f"{path}/{i}")
    return bad


@pytest.mark.parametrize("kind", [k.kind for k in KINDS])
def test_schema_is_structural_with_descriptions_defaults_and_enums(kind: str) -> None:
    crd = _crds()[kind]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    assert _walk(schema) == []
    spec = schema["properties"]["spec"]
    assert spec["description"]
    assert all("description" in prop for prop in spec["properties"].values())
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["forge"]
    assert any(c["jsonPath"] == ".status.phase" for c in version["additionalPrinterColumns"])
    if kind == "ForgeTrainingRun":
        assert spec["properties"]["stage"]["enum"] == ["pretrain", "sft", "rl"]
        assert spec["properties"]["maxRestarts"]["default"] == 3
        rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
        assert any("rl.reward" in r for r in rules)
        assert spec["properties"]["resources"]["x-kubernetes-validations"][0]["rule"] == "self.minNodes <= self.maxNodes"
        assert spec["properties"]["stage"]["x-kubernetes-validations"][0]["rule"] == "self == oldSelf"


def test_short_names() -> None:
    assert {k: c["spec"]["names"]["shortNames"] for k, c in _crds().items()} == {
        "ForgeDataset": ["fds"], "ForgeTrainingRun": ["ftr"], "ForgeDeployment": ["fdep"]}


def _openapi_validator(schema: dict[str, Any]) -> jsonschema.Draft4Validator:
    # OpenAPI v3.0 schemas are close to JSON Schema draft 4 once the Kubernetes extensions are dropped.
    clean = json.loads(json.dumps(schema))

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            for key in [k for k in node if k.startswith("x-kubernetes")]:
                node.pop(key)
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(clean)
    return jsonschema.Draft4Validator(clean)


def test_examples_validate_against_models_and_crd_schemas() -> None:
    crds = _crds()
    loaded = load_manifests([ROOT / "examples"])
    assert {m.kind for m in loaded} == {"ForgeDataset", "ForgeTrainingRun", "ForgeDeployment"}
    for m in loaded:
        schema = crds[m.kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        errors = list(_openapi_validator(schema).iter_errors(m.body))
        assert errors == [], f"{m.path}: {[e.message for e in errors]}"


def test_crd_schema_rejects_a_wrong_type_and_an_unknown_enum() -> None:
    schema = _crds()["ForgeTrainingRun"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    good = {"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun", "metadata": {"name": "x"},
            "spec": {"stage": "pretrain", "datasetRef": "d", "model": {"size": "tiny"}}}
    validator = _openapi_validator(schema)
    assert list(validator.iter_errors(good)) == []
    bad = copy.deepcopy(good)
    bad["spec"]["stage"] = "finetune"
    bad["spec"]["maxRestarts"] = "three"
    messages = sorted(e.message for e in validator.iter_errors(bad))
    assert any("'finetune' is not one of" in m for m in messages)
    assert any("'three' is not of type 'integer'" in m for m in messages)


def test_crds_validate_against_a_current_kubernetes() -> None:
    import kubernetes_validate

    for crd in _crds().values():
        kubernetes_validate.validate(crd, "1.30.0", strict=True)


def _descriptions(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["description"]] if isinstance(node.get("description"), str) else []
        return found + [d for v in node.values() for d in _descriptions(v)]
    if isinstance(node, list):
        return [d for v in node for d in _descriptions(v)]
    return []


@pytest.mark.parametrize("kind", [k.kind for k in KINDS])
def test_descriptions_read_as_text_not_as_the_docstrings_line_breaks(kind: str) -> None:
    """`kubectl explain` shows every newline of a description: a docstring wrapped at the source's width
    must reach the CRD as one line per paragraph."""
    wrapped = [d for d in _descriptions(_crds()[kind]) if "\n" in d.replace("\n\n", "")]
    assert wrapped == []
