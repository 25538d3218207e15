"""References resolve the same way on a cluster and under `forge run`: every case runs against both
Lookups — the operator's (its Kopf index functions over the bodies, as the watch feeds them) and the
local runner's (its records) — and must give the same answer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from forge_operator.api import ForgeDataset, ForgeDeployment, ForgeTrainingRun
from forge_operator.handlers.indexes import cluster_lookup, forge_datasets, forge_deployments, forge_runs
from forge_operator.local.lookup import RecordLookup
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.resolve.dataset import ResolvedDataset, resolve_dataset
from forge_operator.resolve.deployment import ResolvedModel, resolve_deployment
from forge_operator.resolve.lookup import Lookup
from forge_operator.resolve.references import MAX_CHAIN, model_of_chain
from forge_operator.resolve.training import ResolvedRun, check_pinned, pin, resolve_run
from forge_operator.resolve.usage import usage
from forge_operator.status.conditions import Waiting

NS, BUCKET = "ml", "acme-forge"
API = "forge.ai/v1alpha1"


def body(kind: str, name: str, spec: dict[str, Any], status: dict[str, Any] | None = None,
         deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": NS, "uid": f"u-{name}", "generation": 1}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"apiVersion": API, "kind": kind, "metadata": meta, "spec": spec, "status": status or {}}


def dataset(name: str, phase: str | None = "Ready", **status: Any) -> dict[str, Any]:
    st = {"phase": phase, "manifestUri": f"s3://{BUCKET}/forge/{NS}/forgedataset/{name}/u/manifest.json",
          "digest": f"sha256:{name}", "tokenizerUri": f"s3://{BUCKET}/forge/{NS}/forgedataset/{name}/u/tok.json",
          **status} if phase else {}
    return body("ForgeDataset", name, {"source": {"uri": f"s3://raw/{name}/"}}, st)


def run(name: str, phase: str | None = "Succeeded", spec: dict[str, Any] | None = None, deleting: bool = False,
        **status: Any) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": phase, **status} if phase else {}
    if phase == "Succeeded":
        st.setdefault("finalModelUri", f"s3://{BUCKET}/forge/{NS}/forgetrainingrun/{name}/u/model")
        st.setdefault("finalModelDigest", f"sha256:{name}")
    return body("ForgeTrainingRun", name, spec or {"stage": "pretrain", "datasetRef": "corpus",
                                                   "model": {"size": "tiny"}}, st, deleting)


def deployment(name: str, spec: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    return body("ForgeDeployment", name, spec, None, deleting)


def operator_lookup(world: list[dict[str, Any]]) -> Lookup:
    """What the operator resolves against: its Kopf index functions applied to every body (plus a
    namespace it must not see into), handed over the way Kopf hands indexes to a handler."""
    functions = {"ForgeDataset": forge_datasets, "ForgeTrainingRun": forge_runs, "ForgeDeployment": forge_deployments}
    indexes: dict[str, dict[tuple[str | None, str], list[dict[str, Any]]]] = {f.__name__: {}  # type: ignore[attr-defined]
                                                                              for f in functions.values()}
    elsewhere = [{**b, "metadata": {**b["metadata"], "namespace": "other"}} for b in world]
    for b in world + elsewhere:
        fn = functions[b["kind"]]
        meta = b["metadata"]
        for key, value in fn(body=b, namespace=meta["namespace"], name=meta["name"]).items():
            indexes[fn.__name__].setdefault(key, []).append(value)  # type: ignore[attr-defined]
    return cluster_lookup(NS, indexes)


def local_lookup(world: list[dict[str, Any]]) -> Lookup:
    """What `forge run` resolves against: the records of the resources it ran."""
    return RecordLookup({(b["kind"], b["metadata"]["name"]): b for b in world})


LOOKUPS: list[Callable[[list[dict[str, Any]]], Lookup]] = [operator_lookup, local_lookup]
both = pytest.mark.parametrize("lookup_of", LOOKUPS, ids=["operator", "forge-run"])


def parse_run(spec: dict[str, Any]) -> ForgeTrainingRun:
    return ForgeTrainingRun.model_validate(body("ForgeTrainingRun", "r", spec))


PRETRAIN = {"stage": "pretrain", "datasetRef": "corpus", "model": {"size": "tiny"}}
SFT = {"stage": "sft", "datasetRef": "chats", "evalDatasetRef": "held", "init": {"baseRun": "base"}}

RUN_CASES: list[tuple[str, dict[str, Any], list[dict[str, Any]], str]] = [
    ("dataset missing", PRETRAIN, [], "DatasetReady: waiting for ForgeDataset corpus (spec.datasetRef): it does "
                                     "not exist yet"),
    ("dataset preparing", PRETRAIN, [dataset("corpus", "Running")],
     "DatasetReady: waiting for ForgeDataset corpus (spec.datasetRef) to be Ready (phase Running)"),
    ("dataset ready", PRETRAIN, [dataset("corpus")], "resolved DatasetReady"),
    ("eval dataset pending", SFT, [dataset("chats"), dataset("held", None), run("base")],
     "DatasetReady: waiting for ForgeDataset held (spec.evalDatasetRef) to be Ready (phase Pending)"),
    ("base run training", SFT, [dataset("chats"), dataset("held"), run("base", "Running")],
     "BaseModelReady: waiting for ForgeTrainingRun base (spec.init.baseRun) to succeed (phase Running)"),
    ("base run succeeded", SFT, [dataset("chats"), dataset("held"), run("base")],
     "resolved DatasetReady,BaseModelReady"),
]


def outcome(result: ResolvedRun | ResolvedDataset | ResolvedModel | Waiting) -> str:
    if isinstance(result, Waiting):
        return f"{result.condition}: {result.message}"
    if isinstance(result, ResolvedModel):
        return f"serve {result.uri}: {result.gate.message}"
    return "resolved " + ",".join(result.resolved)


@both
@pytest.mark.parametrize(("spec", "world", "expected"), [c[1:] for c in RUN_CASES], ids=[c[0] for c in RUN_CASES])
def test_run_references(lookup_of: Callable[[list[dict[str, Any]]], Lookup], spec: dict[str, Any],
                        world: list[dict[str, Any]], expected: str) -> None:
    result = resolve_run(parse_run(spec), lookup_of(world), bucket=BUCKET, trainer_image="img")
    assert outcome(result) == expected


@both
def test_a_resolved_run_carries_uris_digests_and_the_model_of_its_chain(
        lookup_of: Callable[[list[dict[str, Any]]], Lookup]) -> None:
    world = [dataset("chats"), dataset("held"), run("base", spec={"stage": "sft", "datasetRef": "chats",
                                                                 "init": {"baseRun": "root"}}),
             run("root", spec={"stage": "pretrain", "datasetRef": "corpus", "model": {"size": "125m"}})]
    result = resolve_run(parse_run(SFT), lookup_of(world), bucket=BUCKET, trainer_image="img")
    assert isinstance(result, ResolvedRun)
    refs = result.refs
    assert refs.dataset_manifest.endswith("/chats/u/manifest.json") and refs.eval_digest == "sha256:held"
    assert refs.init_model_uri == f"s3://{BUCKET}/forge/{NS}/forgetrainingrun/base/u/model"
    assert refs.base_model_digest == "sha256:base" and refs.model is not None and refs.model.size == "125m"
    assert result.lineage.dataset_digest == "sha256:chats" and result.lineage.trainer_image == "img"


@both
def test_a_cyclic_or_overlong_chain_has_no_model(lookup_of: Callable[[list[dict[str, Any]]], Lookup]) -> None:
    def link(name: str, base: str) -> dict[str, Any]:
        return run(name, spec={"stage": "sft", "datasetRef": "d", "init": {"baseRun": base}})

    assert model_of_chain(lookup_of([link("a", "b"), link("b", "a")]), link("a", "b")) is None
    chain = [link(f"r{i}", f"r{i + 1}") for i in range(MAX_CHAIN)] + [run(f"r{MAX_CHAIN}")]
    assert model_of_chain(lookup_of(chain), chain[1]) is not None  # MAX_CHAIN - 1 links away: found
    assert model_of_chain(lookup_of(chain), chain[0]) is None  # MAX_CHAIN links away: not followed


def test_artifacts_of_another_namespace_are_refused() -> None:
    spec = {**PRETRAIN, "init": {"checkpointUri": f"s3://{BUCKET}/forge/team-b/forgetrainingrun/x/u/ckpt"}}
    with pytest.raises(InvalidSpecError) as err:
        resolve_run(parse_run(spec), local_lookup([dataset("corpus")]), bucket=BUCKET, trainer_image="img")
    assert str(err.value) == ("spec.init.checkpointUri: refers to namespace team-b; a run may only use artifacts of "
                              "its own namespace (ml)")
    dep = ForgeDeployment.model_validate(deployment("web", {"modelUri": f"s3://{BUCKET}/forge/team-b/m"}))
    with pytest.raises(InvalidSpecError) as err:
        resolve_deployment(dep, local_lookup([]), bucket=BUCKET)
    assert str(err.value).startswith("spec.modelUri: refers to namespace team-b; a deployment may only serve models")


def test_immutable_fields_are_pinned_once_the_run_started() -> None:
    started = parse_run(PRETRAIN)
    check_pinned(started, None)  # not started yet
    check_pinned(started, pin(started))
    check_pinned(started, "not json")  # an unreadable pin is ignored, not fatal
    changed = parse_run({**PRETRAIN, "stage": "sft", "datasetRef": "other", "init": {"baseRun": "b"}})
    with pytest.raises(InvalidSpecError) as err:
        check_pinned(changed, pin(started))
    assert str(err.value) == ("spec.stage is immutable once the run started (was 'pretrain'); create a new run "
                              "instead; spec.datasetRef is immutable once the run started (was 'corpus'); create a "
                              "new run instead")


TOKENIZER_CASES = [
    ("base missing", [], "TokenizerReady: waiting for ForgeDataset base (spec.tokenizer.datasetRef): it does not "
                         "exist yet"),
    ("base preparing", [dataset("base", "Running")],
     "TokenizerReady: waiting for ForgeDataset base (spec.tokenizer.datasetRef) to be Ready (phase Running)"),
    ("base ready without a tokenizer", [dataset("base", tokenizerUri=None)],
     "TokenizerReady: waiting for ForgeDataset base (spec.tokenizer.datasetRef) to be Ready (phase Ready)"),
    ("base ready", [dataset("base")], "resolved TokenizerReady"),
]


@both
@pytest.mark.parametrize(("world", "expected"), [c[1:] for c in TOKENIZER_CASES], ids=[c[0] for c in TOKENIZER_CASES])
def test_dataset_tokenizer_reference(lookup_of: Callable[[list[dict[str, Any]]], Lookup],
                                     world: list[dict[str, Any]], expected: str) -> None:
    ds = ForgeDataset.model_validate(body("ForgeDataset", "d", {"source": {"uri": "s3://raw/d/"},
                                                               "tokenizer": {"datasetRef": "base"}}))
    result = resolve_dataset(ds, lookup_of(world), bucket=BUCKET)
    assert outcome(result) == expected
    if isinstance(result, ResolvedDataset):
        assert result.reused_tokenizer_uri == f"s3://{BUCKET}/forge/{NS}/forgedataset/base/u/tok.json"


MODEL = f"s3://{BUCKET}/forge/{NS}/forgetrainingrun/tuned/u/model"
GATE_CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]] = [
    ("no gate", [run("tuned")], {}, f"serve {MODEL}: no eval gate"),
    ("run training", [run("tuned", "Running")], {},
     "ModelReady: waiting for ForgeTrainingRun tuned (spec.modelRef) to succeed (phase Running)"),
    # the drift this table pins down: `forge run` saw status.loss, the operator did not (it waited forever)
    ("loss gate on the training loss passes", [run("tuned", loss=1.2)], {"metric": "loss", "max": 2.0},
     f"serve {MODEL}: eval gate passed (loss)"),
    ("loss gate on the training loss fails", [run("tuned", loss=1.2)], {"metric": "loss", "max": 1.0},
     f"serve {MODEL}: eval gate failed: loss = 1.2 is above the maximum 1"),
    ("an evaluated loss wins over the training loss", [run("tuned", loss=1.2, evalMetrics={"loss": 2.5})],
     {"metric": "loss", "max": 2.0}, f"serve {MODEL}: eval gate failed: loss = 2.5 is above the maximum 2"),
    ("a metric the run never reported", [run("tuned", loss=1.2)], {"metric": "pass_rate/exact", "min": 0.5},
     f"serve {MODEL}: eval gate failed: pass_rate/exact is missing from the run's evalMetrics"),
]


@both
@pytest.mark.parametrize(("world", "rule", "expected"), [c[1:] for c in GATE_CASES], ids=[c[0] for c in GATE_CASES])
def test_deployment_model_and_eval_gate(lookup_of: Callable[[list[dict[str, Any]]], Lookup],
                                        world: list[dict[str, Any]], rule: dict[str, Any], expected: str) -> None:
    dep = ForgeDeployment.model_validate(deployment("web", {"modelRef": "tuned", "evalGate": [rule] if rule else []}))
    assert outcome(resolve_deployment(dep, lookup_of(world), bucket=BUCKET)) == expected


def tokenizer_reuser(name: str, phase: str | None) -> dict[str, Any]:
    """A dataset that reuses the tokenizer of `corpus`."""
    reuser = dataset(name, phase)
    reuser["spec"]["tokenizer"] = {"datasetRef": "corpus"}
    return reuser


USAGE_WORLD = [
    dataset("corpus"), dataset("chats"),
    tokenizer_reuser("notes", "Running"), tokenizer_reuser("copied", "Ready"),
    run("base", spec=PRETRAIN),
    run("chat", "Running", spec={"stage": "sft", "datasetRef": "chats", "evalDatasetRef": "corpus",
                                 "init": {"baseRun": "base"}}),
    run("done", spec={"stage": "sft", "datasetRef": "chats", "init": {"baseRun": "base"}}),
    run("leaving", "Running", deleting=True, spec={"stage": "sft", "datasetRef": "corpus", "init": {"baseRun": "base"}}),
    deployment("web", {"modelRef": "base"}), deployment("old", {"modelRef": "base"}, deleting=True),
    deployment("other", {"modelRef": "chat"}),
]
USAGE_CASES = [
    # `notes` still fetches corpus's tokenizer; `copied` is Ready with its own copy
    ("ForgeDataset", "corpus", ["ForgeDataset notes", "ForgeTrainingRun base", "ForgeTrainingRun chat"]),
    ("ForgeDataset", "chats", ["ForgeTrainingRun chat", "ForgeTrainingRun done"]),
    ("ForgeTrainingRun", "base", ["ForgeDeployment web", "ForgeTrainingRun chat"]),  # `done` finished with it
    ("ForgeTrainingRun", "chat", ["ForgeDeployment other"]),
    ("ForgeTrainingRun", "done", []),
    ("ForgeDeployment", "web", []),
]


@both
@pytest.mark.parametrize(("kind", "name", "users"), USAGE_CASES, ids=[f"{k} {n}" for k, n, _ in USAGE_CASES])
def test_who_still_uses_a_resource(lookup_of: Callable[[list[dict[str, Any]]], Lookup], kind: str, name: str,
                                   users: list[str]) -> None:
    assert usage(kind, name, lookup_of(USAGE_WORLD)) == users
