"""Resolve a ForgeDeployment: the model it serves and the eval gate that model must pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forge_operator.api.deployment import ForgeDeployment
from forge_operator.plan.deployment import GateResult, evaluate_gate
from forge_operator.resolve.lookup import Lookup, status_of
from forge_operator.resolve.references import check_namespace, succeeded_run
from forge_operator.status.conditions import Waiting
from forge_operator.status.deployment import MODEL_READY


@dataclass(frozen=True)
class ResolvedModel:
    """The model a deployment serves, and the outcome of its eval gate."""

    uri: str
    digest: str | None
    gate: GateResult


def gate_metrics(run_status: dict[str, Any]) -> dict[str, float]:
    """The metrics an eval gate sees for a run: its status.evalMetrics, plus `loss` (the final training
    loss, status.loss) when the evaluation reported none, so a `loss` rule works with or without an eval
    dataset, on a cluster and under `forge run` alike."""
    metrics = {str(k): float(v) for k, v in (run_status.get("evalMetrics") or {}).items()}
    if run_status.get("loss") is not None:
        metrics.setdefault("loss", float(run_status["loss"]))
    return metrics


def resolve_deployment(dep: ForgeDeployment, lookup: Lookup, *, bucket: str) -> ResolvedModel | Waiting:
    """The model of spec.modelRef (a Succeeded run, its metrics checked by spec.evalGate) or spec.modelUri
    (no metrics: only an empty gate passes), or what we wait for. A modelUri of another namespace is an
    InvalidSpecError."""
    spec = dep.spec
    if spec.model_ref:
        run = succeeded_run(lookup, spec.model_ref, "spec.modelRef", MODEL_READY)
        if isinstance(run, Waiting):
            return run
        status = status_of(run)
        return ResolvedModel(str(status["finalModelUri"]), status.get("finalModelDigest"),
                             evaluate_gate(spec.eval_gate, gate_metrics(status)))
    uri = str(spec.model_uri)
    check_namespace(uri, "spec.modelUri", bucket, dep.metadata["namespace"],
                    "a deployment may only serve models of its own namespace")
    return ResolvedModel(uri, None, evaluate_gate(spec.eval_gate, {}))
