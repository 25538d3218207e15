"""Order manifests by their references, so each resource runs after what it needs."""

from __future__ import annotations

from dataclasses import dataclass

from forge_operator.api import DATASET, TRAINING_RUN
from forge_operator.api.dataset import ForgeDataset
from forge_operator.api.deployment import ForgeDeployment
from forge_operator.api.training import ForgeTrainingRun
from forge_operator.manifests import LoadedManifest, ManifestError


@dataclass(frozen=True)
class Reference:
    """One reference from a resource to another, by kind and name, with the field that makes it."""

    kind: str
    name: str
    field: str


def references_of(m: LoadedManifest) -> list[Reference]:
    """What `m` refers to."""
    res = m.resource
    refs: list[Reference] = []
    if isinstance(res, ForgeDataset) and res.spec.tokenizer.dataset_ref:
        refs.append(Reference(DATASET.kind, res.spec.tokenizer.dataset_ref, "spec.tokenizer.datasetRef"))
    elif isinstance(res, ForgeTrainingRun):
        refs.append(Reference(DATASET.kind, res.spec.dataset_ref, "spec.datasetRef"))
        if res.spec.eval_dataset_ref:
            refs.append(Reference(DATASET.kind, res.spec.eval_dataset_ref, "spec.evalDatasetRef"))
        if res.spec.init.base_run:
            refs.append(Reference(TRAINING_RUN.kind, res.spec.init.base_run, "spec.init.baseRun"))
    elif isinstance(res, ForgeDeployment) and res.spec.model_ref:
        refs.append(Reference(TRAINING_RUN.kind, res.spec.model_ref, "spec.modelRef"))
    return refs


def order_manifests(loaded: list[LoadedManifest]) -> list[LoadedManifest]:
    """`loaded` in an order where every resource follows what it refers to (otherwise file order).
    A reference to a resource missing from the folder, a duplicate name or a cycle is a ManifestError
    naming the file and field."""
    by_key: dict[tuple[str, str], LoadedManifest] = {}
    problems: list[str] = []
    for m in loaded:
        key = (m.kind, m.name)
        if key in by_key:
            problems.append(f"{m.path} (document {m.index + 1}): {m.kind} {m.name} is also defined in "
                            f"{by_key[key].path}")
        by_key[key] = m
    for m in loaded:
        for ref in references_of(m):
            if (ref.kind, ref.name) not in by_key:
                problems.append(f"{m.path} (document {m.index + 1}): {m.kind} {m.name}: {ref.field}: "
                                f"{ref.kind} {ref.name} is not in the manifests given")
    if problems:
        raise ManifestError("\n".join(problems))
    ordered: list[LoadedManifest] = []
    state: dict[tuple[str, str], str] = {}

    def visit(m: LoadedManifest, chain: list[str]) -> None:
        key = (m.kind, m.name)
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            raise ManifestError(f"{m.path}: reference cycle: {' -> '.join([*chain, f'{m.kind} {m.name}'])}")
        state[key] = "visiting"
        for ref in references_of(m):
            visit(by_key[(ref.kind, ref.name)], [*chain, f"{m.kind} {m.name} ({ref.field})"])
        state[key] = "done"
        ordered.append(m)

    for m in loaded:
        visit(m, [])
    return ordered
