"""Derive a ForgeDeployment's phase and conditions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from forge_operator.api.common import ConditionStatus
from forge_operator.api.deployment import DeploymentPhase, DeploymentReason, ForgeDeploymentStatus
from forge_operator.status.conditions import INVALID_SPEC, READY, set_condition

T, F = ConditionStatus.TRUE, ConditionStatus.FALSE
MODEL_READY = "ModelReady"
EVAL_GATE = "EvalGatePassed"


@dataclass(frozen=True)
class DeploymentObservation:
    """Everything one reconcile saw about a deployment."""

    generation: int
    spec_error: str | None = None
    waiting_for: str | None = None
    gate_passed: bool | None = None
    gate_message: str = ""
    deployment: dict[str, Any] | None = None
    desired_replicas: int = 1
    endpoint: str | None = None
    model_uri: str | None = None
    model_digest: str | None = None


def derive_deployment_status(prev: ForgeDeploymentStatus, obs: DeploymentObservation,
                             now: str) -> ForgeDeploymentStatus:
    """The status a deployment should have after this observation."""
    gen = obs.generation
    status = prev.model_copy(deep=True)
    status.observed_generation = gen
    conds = set_condition(status.conditions, INVALID_SPEC, T if obs.spec_error else F,
                          "InvalidSpec" if obs.spec_error else "Valid", obs.spec_error or "", gen, now)

    def cond(type_: str, st: ConditionStatus, reason: str, message: str) -> None:
        nonlocal conds
        conds = set_condition(conds, type_, st, reason, message, gen, now)

    def ready(st: ConditionStatus, reason: DeploymentReason, message: str) -> None:
        cond(READY, st, reason.value, message)
        status.message = message

    if obs.spec_error:
        status.phase = DeploymentPhase.FAILED
        ready(F, DeploymentReason.INVALID_SPEC, obs.spec_error)
    elif obs.waiting_for:
        status.phase = DeploymentPhase.PENDING
        cond(MODEL_READY, F, DeploymentReason.WAITING.value, obs.waiting_for)
        ready(F, DeploymentReason.WAITING, obs.waiting_for)
    elif obs.gate_passed is False:
        status.phase = DeploymentPhase.FAILED
        cond(MODEL_READY, T, "Resolved", "")
        cond(EVAL_GATE, F, DeploymentReason.EVAL_GATE_FAILED.value, obs.gate_message)
        ready(F, DeploymentReason.EVAL_GATE_FAILED, obs.gate_message)
    else:
        cond(MODEL_READY, T, "Resolved", "")
        cond(EVAL_GATE, T, DeploymentReason.EVAL_GATE_PASSED.value, obs.gate_message)
        live = (obs.deployment or {}).get("status") or {}
        ready_replicas = int(live.get("readyReplicas") or 0)
        status.replicas = obs.desired_replicas
        status.ready_replicas = ready_replicas
        status.endpoint = obs.endpoint
        status.model_uri = obs.model_uri
        status.model_digest = obs.model_digest
        if ready_replicas >= max(1, obs.desired_replicas) and obs.deployment is not None:
            status.phase = DeploymentPhase.AVAILABLE
            ready(T, DeploymentReason.AVAILABLE, f"{ready_replicas} replica(s) serving at {obs.endpoint}")
        else:
            status.phase = DeploymentPhase.PROGRESSING
            ready(F, DeploymentReason.ROLLING_OUT,
                  f"{ready_replicas}/{obs.desired_replicas} replicas ready")
    status.conditions = conds
    return status
