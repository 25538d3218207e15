"""Derive a ForgeDeployment's phase and conditions."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from forge_operator.api.common import ConditionStatus, rfc3339
from forge_operator.api.deployment import DeploymentPhase, DeploymentReason, ForgeDeploymentStatus
from forge_operator.status.conditions import Action, Waiting, begin_status, mark, mark_ready, mark_references
from forge_operator.status.pods import PodsSeen, mark_pods, mark_pods_stalled, stalled_text

TRUE, FALSE = ConditionStatus.TRUE, ConditionStatus.FALSE
MODEL_READY = "ModelReady"
EVAL_GATE = "EvalGatePassed"


@dataclass(frozen=True)
class DeploymentObservation:
    """Everything one reconcile saw about a deployment."""

    generation: int
    spec_error: str | None = None
    waiting: Waiting | None = None
    resolved: list[str] = field(default_factory=lambda: [MODEL_READY])
    gate_passed: bool | None = None
    gate_message: str = ""
    deployment: dict[str, Any] | None = None
    desired_replicas: int = 1
    endpoint: str | None = None
    model_uri: str | None = None
    model_digest: str | None = None
    pods: PodsSeen | None = None
    """The serving pods (None: not looked at)."""
    pods_stalled_after: float = 600.0
    """Seconds pods may wait to start before the deployment is Stalled (the operator's podsStalledAfter)."""


def derive_deployment_status(prev: ForgeDeploymentStatus, obs: DeploymentObservation,
                             now: datetime) -> tuple[ForgeDeploymentStatus, Action]:
    """The status a deployment should have after this observation (a deployment never asks for an action)."""
    stamp = rfc3339(now)
    status = begin_status(prev, obs.generation, obs.spec_error, stamp)
    if obs.spec_error:
        status.phase = DeploymentPhase.FAILED
        mark_ready(status, FALSE, DeploymentReason.INVALID_SPEC, obs.spec_error, stamp)
        return status, Action.NONE
    if obs.waiting is not None:
        status.phase = DeploymentPhase.PENDING
        mark_references(status, [], obs.waiting, stamp)
        mark_ready(status, FALSE, DeploymentReason.WAITING, obs.waiting.message, stamp)
        return status, Action.NONE
    mark_references(status, obs.resolved, None, stamp)
    if obs.gate_passed is False:
        status.phase = DeploymentPhase.FAILED
        mark(status, EVAL_GATE, FALSE, DeploymentReason.EVAL_GATE_FAILED, obs.gate_message, stamp)
        mark_ready(status, FALSE, DeploymentReason.EVAL_GATE_FAILED, obs.gate_message, stamp)
        return status, Action.NONE
    mark(status, EVAL_GATE, TRUE, DeploymentReason.EVAL_GATE_PASSED, obs.gate_message, stamp)
    live = (obs.deployment or {}).get("status") or {}
    ready_replicas = int(live.get("readyReplicas") or 0)
    status.replicas = obs.desired_replicas
    status.ready_replicas = ready_replicas
    status.endpoint = obs.endpoint
    status.model_uri = obs.model_uri
    status.model_digest = obs.model_digest
    stalled = mark_pods(status, obs.pods, now, obs.pods_stalled_after)
    mark_pods_stalled(status, obs.pods, stalled, obs.pods_stalled_after, stamp)
    cause = obs.pods.cause if obs.pods is not None else None
    if ready_replicas >= max(1, obs.desired_replicas) and obs.deployment is not None:
        status.phase = DeploymentPhase.AVAILABLE
        mark_ready(status, TRUE, DeploymentReason.AVAILABLE, f"{ready_replicas} replica(s) serving at {obs.endpoint}",
                   stamp)
    else:
        status.phase = DeploymentPhase.PROGRESSING
        replicas = f"{ready_replicas}/{obs.desired_replicas} replicas ready"
        if stalled and obs.pods is not None:
            mark_ready(status, FALSE, "Stalled", f"{replicas}; {stalled_text(obs.pods, obs.pods_stalled_after)}", stamp)
        elif cause is not None and obs.pods is not None:
            mark_ready(status, FALSE, cause.trouble.value, f"{replicas}; {obs.pods.headline()}", stamp)
        else:
            mark_ready(status, FALSE, DeploymentReason.ROLLING_OUT, replicas, stamp)
    return status, Action.NONE
