"""The API models accept what the docs show and reject bad specs with messages naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from forge_operator.api import ForgeDatasetSpec, ForgeDeploymentSpec, ForgeTrainingRunSpec
from forge_operator.api.errors import spec_error_message


def _error(model: Any, spec: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        model.model_validate(spec)
    return spec_error_message(exc.value)


PRETRAIN = {"stage": "pretrain", "datasetRef": "corpus", "model": {"size": "tiny"}}


def test_minimal_specs_get_documented_defaults() -> None:
    run = ForgeTrainingRunSpec.model_validate(PRETRAIN)
    assert run.resources.min_nodes == 1 and run.resources.gpus_per_node == 8
    assert run.resources.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert run.hyperparameters.min_learning_rate == pytest.approx(run.hyperparameters.learning_rate / 10)
    ds = ForgeDatasetSpec.model_validate({"source": {"uri": "s3://b/p"}})
    assert ds.tokenizer.vocab_size == 32000 and ds.processing.near_dedup.threshold == 0.8
    dep = ForgeDeploymentSpec.model_validate({"modelRef": "run"})
    assert dep.runtime.value == "builtin" and dep.replicas == 1


def test_wire_format_is_camel_case_and_round_trips() -> None:
    run = ForgeTrainingRunSpec.model_validate(PRETRAIN)
    wire = run.to_wire()
    assert "datasetRef" in wire and "maxRestarts" in wire and "dataset_ref" not in wire
    assert wire["resources"]["minNodes"] == 1
    assert ForgeTrainingRunSpec.model_validate(wire) == run


@pytest.mark.parametrize(("model", "spec", "expected"), [
    (ForgeTrainingRunSpec, {**PRETRAIN, "resources": {"minNodes": 4, "maxNodes": 2}},
     "spec.resources: resources.minNodes (4) must not exceed resources.maxNodes (2)"),
    (ForgeTrainingRunSpec, {"stage": "rl", "datasetRef": "tasks", "init": {"baseRun": "base"}},
     "rl.reward is required when stage is rl"),
    (ForgeTrainingRunSpec, {"stage": "rl", "datasetRef": "tasks", "init": {"baseRun": "base"}, "rl": {}},
     "rl.reward is required when stage is rl"),
    (ForgeTrainingRunSpec, {"stage": "rl", "datasetRef": "t", "init": {"baseRun": "b"}, "method": "qlora",
                            "rl": {"reward": {"verifier": "exact_match"}}},
     "method qlora is only allowed with stage sft"),
    (ForgeTrainingRunSpec, {**PRETRAIN, "method": "lora"}, "method lora is not allowed with stage pretrain"),
    (ForgeTrainingRunSpec, {"stage": "sft", "datasetRef": "chats"},
     "stage sft needs init.baseRun, init.modelUri or init.checkpointUri"),
    (ForgeTrainingRunSpec, {"stage": "pretrain", "datasetRef": "corpus"},
     "model is required when training from scratch"),
    (ForgeTrainingRunSpec, {**PRETRAIN, "init": {"baseRun": "a", "modelUri": "s3://b/m"}},
     "spec.init: init: set at most one of baseRun, modelUri, checkpointUri"),
    (ForgeTrainingRunSpec, {"stage": "rl", "datasetRef": "t", "init": {"baseRun": "b"},
                            "rl": {"reward": {"verifier": "custom"}}},
     "rl.reward.customSource is required when rl.reward.verifier is custom"),
    (ForgeTrainingRunSpec, {**PRETRAIN, "model": {"architecture": "dense", "size": "tiny", "numExperts": 8}},
     "model.numExperts and model.expertsPerToken need model.architecture: moe"),
    (ForgeTrainingRunSpec, {**PRETRAIN, "model": {"hiddenSize": 100, "numLayers": 2, "numHeads": 3}},
     "model.hiddenSize (100) must be divisible by model.numHeads (3)"),
    (ForgeTrainingRunSpec, {**PRETRAIN, "hyperparameters": {"microBatchSize": 64, "globalBatchSize": 8}},
     "hyperparameters.microBatchSize (64) must not exceed hyperparameters.globalBatchSize (8)"),
    (ForgeDatasetSpec, {"source": {"uri": "s3://b/p"}, "tokenizer": {"vocabSize": 1000, "uri": "s3://x"}},
     "spec.tokenizer: set only one of vocabSize, datasetRef, uri (got vocabSize, uri)"),
    (ForgeDatasetSpec, {"source": {"uri": "s3://b/p"}, "processing": {"quality": {"minChars": 10, "maxChars": 5}}},
     "spec.processing.quality: minChars (10) must not exceed maxChars (5)"),
    (ForgeDeploymentSpec, {"modelRef": "a", "modelUri": "s3://b/m"}, "set exactly one of modelRef, modelUri"),
    (ForgeDeploymentSpec, {}, "set exactly one of modelRef, modelUri"),
    (ForgeDeploymentSpec, {"modelRef": "a", "runtime": "vllm"}, "runtime vllm needs resources.gpus >= 1"),
    (ForgeDeploymentSpec, {"modelRef": "a", "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
     "spec.autoscaling: autoscaling.minReplicas (5) must not exceed autoscaling.maxReplicas (2)"),
    (ForgeDeploymentSpec, {"modelRef": "a", "evalGate": [{"metric": "loss"}]},
     "evalGate rule for 'loss' needs min or max"),
])
def test_cross_field_rules_name_the_field(model: Any, spec: dict[str, Any], expected: str) -> None:
    assert expected in _error(model, spec)


@pytest.mark.parametrize(("spec", "expected"), [
    ({**PRETRAIN, "stage": "finetune"}, "spec.stage: Input should be 'pretrain', 'sft' or 'rl'"),
    ({**PRETRAIN, "maxRestarts": "many"}, "spec.maxRestarts: Input should be a valid integer"),
    ({**PRETRAIN, "resources": {"minNode": 2}}, "spec.resources.minNode: Extra inputs are not permitted"),
    ({**PRETRAIN, "datasetRef": "Not_A_Name"}, "spec.datasetRef: String should match pattern"),
])
def test_wrong_types_unknown_enums_and_typos_are_refused(spec: dict[str, Any], expected: str) -> None:
    assert expected in _error(ForgeTrainingRunSpec, spec)


def test_every_field_is_documented() -> None:
    from pydantic import BaseModel

    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            for arg in (*getattr(field.annotation, "__args__", ()), field.annotation):
                for inner in (*getattr(arg, "__args__", ()), arg):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        walk(inner)

    for model in (ForgeDatasetSpec, ForgeTrainingRunSpec, ForgeDeploymentSpec):
        walk(model)
    assert len(seen) > 15
