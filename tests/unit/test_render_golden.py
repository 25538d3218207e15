"""Golden manifests: each case below is planned and rendered, and every object the operator would apply
must equal tests/unit/golden/<case>.yaml. A change to what the operator applies shows up as a diff of
those files in review. Regenerate them after an intended change with
`FORGE_UPDATE_GOLDEN=1 pytest tests/unit/test_render_golden.py` and read the diff."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

import forge_operator.render
from forge_operator.api import ForgeDataset, ForgeDeployment, ForgeTrainingRun
from forge_operator.plan.dataset import plan_dataset
from forge_operator.plan.deployment import plan_deployment
from forge_operator.plan.training import ResolvedRefs, plan_training_run
from forge_operator.render.dataset import render_dataset
from forge_operator.render.deployment import render_deployment
from forge_operator.render.training import render_training
from forge_operator.settings import OperatorSettings

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_ENV = "FORGE_UPDATE_GOLDEN"
SETTINGS = OperatorSettings(store_endpoint="minio.storage:9000", store_secure=False, store_bucket="acme-forge",
                            trainer_image="registry.acme/forge-trainer:1.0",
                            store_peer_namespace_labels={"kubernetes.io/metadata.name": "storage"},
                            store_peer_pod_labels={"app": "minio"}, prometheus_namespace="monitoring")
META = {"namespace": "ml", "generation": 3}
EXTRA_EGRESS = [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 443}]}]
GPU_POOL = {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}


def _dataset(name: str, **spec: Any) -> ForgeDataset:
    return ForgeDataset.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset",
                                        "metadata": {"name": name, "uid": f"uid-{name}", **META}, "spec": spec})


def _run(name: str, **spec: Any) -> ForgeTrainingRun:
    return ForgeTrainingRun.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeTrainingRun",
                                            "metadata": {"name": name, "uid": f"uid-{name}", **META}, "spec": spec})


def _deployment(name: str, **spec: Any) -> ForgeDeployment:
    return ForgeDeployment.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDeployment",
                                           "metadata": {"name": name, "uid": f"uid-{name}", **META}, "spec": spec})


def _plans() -> dict[str, Any]:
    """One plan per kind and notable variant, keyed by the golden file's name."""
    base_refs = ResolvedRefs(dataset_manifest="s3://acme-forge/forge/ml/forgedataset/corpus/uid-corpus/manifest.json",
                             dataset_digest="sha256:d1")
    tuned_refs = ResolvedRefs(dataset_manifest="s3://acme-forge/forge/ml/forgedataset/chats/uid-chats/manifest.json",
                              dataset_digest="sha256:d2",
                              init_model_uri="s3://acme-forge/forge/ml/forgetrainingrun/base/uid-base/model",
                              base_model_digest="sha256:m1")
    model = "s3://acme-forge/forge/ml/forgetrainingrun/tuned/uid-tuned/model"
    return {
        "dataset-pretrain": plan_dataset(_dataset("corpus", source={"uri": "s3://raw/corpus/"},
                                                  tokenizer={"vocabSize": 8000}), SETTINGS),
        "dataset-pretrain-parallel": plan_dataset(_dataset("corpus", source={"uri": "s3://raw/corpus/"},
                                                           tokenizer={"vocabSize": 8000}, parallelism=3), SETTINGS),
        "dataset-sft-reused-tokenizer-extra-egress": plan_dataset(
            _dataset("chats", source={"uri": "s3://raw/chats/", "credentialsSecret": {"name": "raw-reader"}},
                     purpose="sft", format="jsonl", tokenizer={"datasetRef": "corpus"},
                     network={"extraEgress": EXTRA_EGRESS}),
            SETTINGS, reused_tokenizer_uri="s3://acme-forge/forge/ml/forgedataset/corpus/uid-corpus/tokenizer.json"),
        "training-pretrain-elastic-gpu-queued": plan_training_run(
            _run("base", stage="pretrain", datasetRef="corpus", model={"size": "1b"},
                 resources={"minNodes": 2, "maxNodes": 4, "gpusPerNode": 8, "cpu": "32", "memory": "512Gi",
                            "priorityClassName": "training", "queue": "gpu-h100", **GPU_POOL}),
            SETTINGS, base_refs, attempt=1),
        "training-sft-lora-cpu-suspended": plan_training_run(
            _run("tuned", stage="sft", datasetRef="chats", init={"baseRun": "base"}, method="lora", suspend=True,
                 resources={"gpusPerNode": 0, "cpu": "4", "memory": "16Gi"},
                 network={"extraEgress": EXTRA_EGRESS}),
            SETTINGS, tuned_refs),
        "training-rl-custom-verifier": plan_training_run(
            _run("reasoner", stage="rl", datasetRef="tasks", init={"baseRun": "tuned"},
                 rl={"reward": {"verifier": "custom", "customSource": {"name": "my-verifier", "key": "check.py"}}},
                 resources={"gpusPerNode": 1}),
            SETTINGS, replace(tuned_refs, dataset_manifest="s3://acme-forge/forge/ml/forgedataset/tasks/uid-tasks/manifest.json",
                              dataset_digest="sha256:d3")),
        "deployment-builtin": plan_deployment(_deployment("chat", modelRef="tuned"), SETTINGS, model, "sha256:abc"),
        "deployment-builtin-api-key-pinned": plan_deployment(
            _deployment("chat-private", modelUri="s3://models/chat/", replicas=2, apiKeySecret={"name": "chat-key"},
                        resources={"cpu": "2", "memory": "8Gi"}, **GPU_POOL),
            SETTINGS, "s3://models/chat/", None),
        "deployment-vllm-autoscaled-extra-egress": plan_deployment(
            _deployment("chat-gpu", modelRef="tuned", runtime="vllm", resources={"gpus": 1, "memory": "64Gi"},
                        autoscaling={"minReplicas": 1, "maxReplicas": 3}, apiKeySecret={"name": "chat-key"},
                        network={"extraEgress": EXTRA_EGRESS}),
            SETTINGS, model, "sha256:abc"),
    }


def _render(plan: Any) -> list[dict[str, Any]]:
    kind = type(plan).__name__
    renderers: dict[str, Callable[[Any], list[dict[str, Any]]]] = {
        "DatasetPlan": render_dataset, "TrainingPlan": render_training, "DeploymentPlan": render_deployment}
    return renderers[kind](plan)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (a ConfigMap's config.yaml) as literal blocks, so their diffs read line by line."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _str)


def _text(objects: list[dict[str, Any]]) -> str:
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=True, default_flow_style=False, width=120)


PLANS = _plans()


@pytest.mark.parametrize("case", sorted(PLANS))
def test_rendered_manifests_match_the_golden_file(case: str) -> None:
    path = GOLDEN / f"{case}.yaml"
    text = _text(_render(PLANS[case]))
    if os.environ.get(UPDATE_ENV) == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with {UPDATE_ENV}=1 to write it"
    assert text == path.read_text(), f"{case} renders differently from {path} ({UPDATE_ENV}=1 regenerates it)"


def test_every_golden_file_belongs_to_a_case() -> None:
    files = {p.stem for p in GOLDEN.glob("*.yaml")}
    assert files == set(PLANS), f"golden files without a case: {sorted(files - set(PLANS))}"


def _plan_renderers() -> list[tuple[str, Callable[[Any], Any], type]]:
    """Every public render_* function of the render package that takes a plan, with the plan's type."""
    found = []
    for info in pkgutil.walk_packages(forge_operator.render.__path__, "forge_operator.render."):
        module = importlib.import_module(info.name)
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("render_") or fn.__module__ != module.__name__:
                continue
            hints = typing.get_type_hints(fn)
            first = next(iter(inspect.signature(fn).parameters))
            if isinstance(hints.get(first), type) and hints[first].__name__.endswith("Plan"):
                found.append((f"{module.__name__}.{name}", fn, hints[first]))
    return found


def test_every_render_function_is_in_some_golden_file() -> None:
    renderers = _plan_renderers()
    assert len(renderers) >= 12, [name for name, _, _ in renderers]  # 4 kinds of object for each of the 3 kinds
    rendered = {case: _render(plan) for case, plan in PLANS.items()}
    for name, fn, plan_type in renderers:
        cases = [case for case, plan in PLANS.items() if isinstance(plan, plan_type)]
        assert cases, f"no golden case plans a {plan_type.__name__} for {name}"
        outputs = [fn(PLANS[case]) for case in cases]
        objects = [o for out in outputs for o in (out if isinstance(out, list) else [out]) if o is not None]
        assert objects, f"{name} rendered nothing in any golden case: add a case that makes it render"
        covered = [o for o in objects if any(o in rendered[case] for case in cases)]
        assert covered == objects, f"{name} renders objects that are in no golden file"
