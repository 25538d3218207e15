"""ForgeDeployment handlers: parse, resolve the model (and its eval gate), plan, render, apply,
observe, derive, patch once."""

from __future__ import annotations

import contextlib
from typing import Any, NoReturn

import kopf
from pydantic import ValidationError

from forge_operator.api.common import GROUP, VERSION, now_rfc3339
from forge_operator.api.deployment import ForgeDeployment, ForgeDeploymentStatus
from forge_operator.api.errors import spec_error_message
from forge_operator.handlers.references import Waiting, foreign_namespace, succeeded_run
from forge_operator.handlers.runtime import parse_status, publish_status, runtime, timed_reconcile
from forge_operator.plan.deployment import evaluate_gate, plan_deployment
from forge_operator.render.deployment import render_deployment
from forge_operator.settings import OperatorSettings
from forge_operator.status.deployment import DeploymentObservation, derive_deployment_status

KIND = "ForgeDeployment"
PLURAL = "forgedeployments"
_INTERVAL = OperatorSettings.from_env().reconcile_interval


def reconcile_deployment(body: dict[str, Any]) -> None:
    """One reconcile of a ForgeDeployment."""
    timed_reconcile(KIND, _reconcile, body)


def _fail_invalid(body: dict[str, Any], prev: ForgeDeploymentStatus, gen: int, message: str, now: str) -> NoReturn:
    publish_status(body, prev, derive_deployment_status(prev, DeploymentObservation(gen, spec_error=message), now))
    raise kopf.PermanentError(message)


def _reconcile(body: dict[str, Any]) -> None:
    rt = runtime()
    meta = body["metadata"]
    ns, gen = meta["namespace"], int(meta.get("generation") or 1)
    prev = parse_status(ForgeDeploymentStatus, body)
    now = now_rfc3339()
    try:
        dep = ForgeDeployment.model_validate(body)
    except ValidationError as exc:
        _fail_invalid(body, prev, gen, spec_error_message(exc), now)
    spec = dep.spec
    metrics_of_run: dict[str, float] = {}
    if spec.model_ref:
        run = succeeded_run(rt.kube, ns, spec.model_ref, "spec.modelRef")
        if isinstance(run, Waiting):
            publish_status(body, prev, derive_deployment_status(
                prev, DeploymentObservation(gen, waiting_for=run.message), now))
            raise kopf.TemporaryError(run.message, delay=rt.settings.reconcile_interval)
        model_uri = str(run["status"]["finalModelUri"])
        digest = run["status"].get("finalModelDigest")
        metrics_of_run = dict(run["status"].get("evalMetrics") or {})
    else:
        model_uri, digest = str(spec.model_uri), None
        other = foreign_namespace(model_uri, rt.settings.store_bucket, ns)
        if other:
            _fail_invalid(body, prev, gen, f"spec.modelUri: refers to namespace {other}; a deployment may only "
                                           f"serve models of its own namespace ({ns})", now)
    gate = evaluate_gate(spec.eval_gate, metrics_of_run)
    if not gate.passed:
        publish_status(body, prev, derive_deployment_status(
            prev, DeploymentObservation(gen, gate_passed=False, gate_message=gate.message), now))
        return
    plan = plan_deployment(dep, rt.settings, model_uri, digest)
    for manifest in render_deployment(plan):
        rt.kube.apply(manifest)
    live = rt.kube.get("apps/v1", "Deployment", ns, plan.deployment_name)
    desired = spec.autoscaling.min_replicas if spec.autoscaling else spec.replicas
    obs = DeploymentObservation(gen, gate_passed=True, gate_message=gate.message, deployment=live,
                                desired_replicas=desired, endpoint=plan.endpoint, model_uri=model_uri,
                                model_digest=digest)
    publish_status(body, prev, derive_deployment_status(prev, obs, now))


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=_INTERVAL * 5)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=_INTERVAL * 5)
def on_change(body: kopf.Body, **_: Any) -> None:
    """Reconcile at once on creation, spec change and operator start."""
    reconcile_deployment(dict(body))


@kopf.timer(GROUP, VERSION, PLURAL, interval=_INTERVAL, initial_delay=_INTERVAL)
def on_timer(body: kopf.Body, **_: Any) -> None:
    """Reconcile periodically: see the model become ready and replicas come up."""
    with contextlib.suppress(kopf.PermanentError, kopf.TemporaryError):
        reconcile_deployment(dict(body))
