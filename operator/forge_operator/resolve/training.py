"""Resolve a ForgeTrainingRun: its datasets, the run it starts from, the fields pinned once it started."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from forge_operator.api.training import ForgeTrainingRun, Lineage
from forge_operator.plan.training import ResolvedRefs
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.resolve.lookup import Lookup, status_of
from forge_operator.resolve.references import check_namespace, model_of_chain, ready_dataset, succeeded_run
from forge_operator.status.conditions import Waiting
from forge_operator.status.training import BASE_MODEL_READY, DATASET_READY

PINNED = "forge.ai/immutable-spec"
"""The annotation that records the immutable fields of a run once it started (JSON)."""


@dataclass(frozen=True)
class ResolvedRun:
    """What a run's references resolved to."""

    refs: ResolvedRefs
    lineage: Lineage
    resolved: list[str] = field(default_factory=list)
    """The reference conditions that are now True."""


def resolve_run(run: ForgeTrainingRun, lookup: Lookup, *, bucket: str, trainer_image: str) -> ResolvedRun | Waiting:
    """The run's datasets (Ready), the run it starts from (Succeeded) and the model it trains, or the
    first reference still waited for. A store URI of another namespace is an InvalidSpecError."""
    spec = run.spec
    namespace = run.metadata["namespace"]
    for field_, uri in (("spec.init.modelUri", spec.init.model_uri),
                        ("spec.init.checkpointUri", spec.init.checkpoint_uri)):
        check_namespace(uri, field_, bucket, namespace, "a run may only use artifacts of its own namespace")
    ds = ready_dataset(lookup, spec.dataset_ref, "spec.datasetRef", DATASET_READY, "manifestUri")
    if isinstance(ds, Waiting):
        return ds
    evaluation: dict[str, Any] = {}
    if spec.eval_dataset_ref:
        ev = ready_dataset(lookup, spec.eval_dataset_ref, "spec.evalDatasetRef", DATASET_READY, "manifestUri")
        if isinstance(ev, Waiting):
            return ev
        evaluation = ev
    resolved = [DATASET_READY]
    init_model, base_digest, model = spec.init.model_uri, None, spec.model
    if spec.init.base_run:
        base = succeeded_run(lookup, spec.init.base_run, "spec.init.baseRun", BASE_MODEL_READY)
        if isinstance(base, Waiting):
            return base
        resolved.append(BASE_MODEL_READY)
        init_model = status_of(base)["finalModelUri"]
        base_digest = status_of(base).get("finalModelDigest")
        model = model or model_of_chain(lookup, base)
    refs = ResolvedRefs(dataset_manifest=ds["manifestUri"], dataset_digest=ds.get("digest"),
                        eval_manifest=evaluation.get("manifestUri"), eval_digest=evaluation.get("digest"),
                        init_model_uri=init_model, init_checkpoint_uri=spec.init.checkpoint_uri,
                        base_model_digest=base_digest, model=model)
    lineage = Lineage(dataset_digest=refs.dataset_digest, eval_dataset_digest=refs.eval_digest,
                      base_model_digest=base_digest, trainer_image=trainer_image)
    return ResolvedRun(refs, lineage, resolved)


def immutable_fields(run: ForgeTrainingRun) -> dict[str, Any]:
    """The spec fields that may not change once a run started."""
    spec = run.spec
    return {"stage": spec.stage.value, "datasetRef": spec.dataset_ref,
            "model": spec.model.to_wire() if spec.model else None}


def pin(run: ForgeTrainingRun) -> str:
    """The PINNED annotation's value for this run."""
    return json.dumps(immutable_fields(run))


def check_pinned(run: ForgeTrainingRun, pinned: str | None) -> None:
    """Refuse (InvalidSpecError, naming each field) a change of an immutable field since the run started;
    `pinned` is the PINNED annotation (None before the run started; unreadable counts as none)."""
    try:
        was = json.loads(pinned) if pinned else {}
    except ValueError:
        was = {}
    if not isinstance(was, dict) or not was:
        return
    current = immutable_fields(run)
    changed = [k for k in current if was.get(k) != current[k]]
    if changed:
        raise InvalidSpecError("; ".join(
            f"spec.{k} is immutable once the run started (was {was.get(k)!r}); create a new run instead"
            for k in changed))
