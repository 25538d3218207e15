"""ForgeDeployment: the reconcile's steps for a deployment (the model, its eval gate, the serving
workload), and its Kopf handlers."""

from __future__ import annotations

from typing import Any

import kopf

from forge_operator.api import DEPLOYMENT, GROUP, VERSION
from forge_operator.api.deployment import ForgeDeployment, ForgeDeploymentStatus
from forge_operator.handlers.adapter import Adapter, Pass
from forge_operator.handlers.pod_faults import look_at_pods, tell_pod_trouble
from forge_operator.handlers.reconcile import on_event, on_tick
from forge_operator.handlers.replica import server_lacks
from forge_operator.handlers.runtime import runtime
from forge_operator.plan.deployment import DeploymentPlan, plan_deployment
from forge_operator.render.deployment import render_deployment
from forge_operator.resolve.deployment import ResolvedModel, resolve_deployment
from forge_operator.resolve.lookup import Lookup
from forge_operator.settings import OperatorSettings
from forge_operator.status.conditions import Action, Waiting
from forge_operator.status.deployment import DeploymentObservation, derive_deployment_status

KIND, PLURAL = DEPLOYMENT.kind, DEPLOYMENT.plural
_INTERVAL = OperatorSettings.from_env().reconcile_interval
Rc = Pass[ForgeDeployment, ForgeDeploymentStatus]


class DeploymentAdapter(Adapter[ForgeDeployment, ForgeDeploymentStatus]):
    """The reconcile's steps for a ForgeDeployment. A failed gate plans nothing: the serving workload
    is left as it is and the status says which metric failed."""

    info = DEPLOYMENT
    resource_model = ForgeDeployment
    status_model = ForgeDeploymentStatus
    settled: frozenset[str] = frozenset()  # replicas come and go: always observed

    def resolve(self, rc: Rc, lookup: Lookup) -> ResolvedModel | Waiting:
        return resolve_deployment(rc.resource, lookup, bucket=runtime().settings.store_bucket)

    def plan(self, rc: Rc, resolved: ResolvedModel) -> DeploymentPlan | None:
        if not resolved.gate.passed:
            return None
        # an older server gets the autoscaler in the API version it serves (autoscaling/v2beta2 before 1.23)
        return plan_deployment(rc.resource, runtime().settings, resolved.uri, resolved.digest, missing=server_lacks())

    def render(self, plan: DeploymentPlan | None) -> list[dict[str, Any]]:
        return render_deployment(plan) if plan is not None else []

    def apply(self, rc: Rc, plan: DeploymentPlan | None, manifests: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Apply the serving workload (and remove the autoscaler of a spec that dropped autoscaling); the live
        Deployment."""
        kube = runtime().kube
        for manifest in manifests:
            kube.apply(manifest)
        if plan is None:
            return None
        if plan.spec.autoscaling is None and rc.prev.observed_generation != rc.generation:
            # autoscaling removed from the spec (or never there): an HPA left behind would keep overriding
            # spec.replicas, so it goes, once per spec change
            kube.delete(plan.hpa_api_version, "HorizontalPodAutoscaler", rc.namespace, plan.deployment_name)
        return kube.get("apps/v1", "Deployment", rc.namespace, plan.deployment_name)

    def observe(self, rc: Rc, resolved: ResolvedModel, plan: DeploymentPlan | None,
                applied: dict[str, Any] | None) -> DeploymentObservation:
        gate = resolved.gate
        if plan is None:
            return DeploymentObservation(rc.generation, gate_passed=False, gate_message=gate.message)
        spec = rc.resource.spec
        desired = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
        pods = look_at_pods(KIND, rc.name, rc.namespace, rc.now, rc.prev)  # every ReplicaSet's: a rollout's too
        return DeploymentObservation(rc.generation, gate_passed=True, gate_message=gate.message, deployment=applied,
                                     desired_replicas=desired, endpoint=plan.endpoint, model_uri=resolved.uri,
                                     model_digest=resolved.digest, pods=pods,
                                     pods_stalled_after=runtime().settings.pods_stalled_after)

    def carry_out(self, rc: Rc, plan: DeploymentPlan | None, applied: dict[str, Any] | None,
                  status: ForgeDeploymentStatus, action: Action) -> None:
        """Post the Warning Event of a new pod trouble."""
        tell_pod_trouble(rc.body, rc.prev, status)


ADAPTER = DeploymentAdapter(DeploymentObservation, derive_deployment_status)


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=_INTERVAL * 5)
def on_change(body: kopf.Body, **kwargs: Any) -> None:
    """Reconcile at once on creation, spec change and operator start."""
    on_event(ADAPTER, body, kwargs)


@kopf.timer(GROUP, VERSION, PLURAL, interval=_INTERVAL, initial_delay=_INTERVAL)
def on_timer(body: kopf.Body, **kwargs: Any) -> None:
    """Reconcile periodically: see the model become ready and replicas come up."""
    on_tick(ADAPTER, body, kwargs)
