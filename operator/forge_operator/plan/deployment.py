"""Plan a ForgeDeployment: which model, with which runtime, gated by the run's evaluation."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from forge_operator.api import DEPLOYMENT
from forge_operator.api.deployment import ForgeDeployment, ForgeDeploymentSpec, GateRule, ServingRuntime
from forge_operator.plan.capabilities import HPA_V2
from forge_operator.plan.naming import child_name, common_labels
from forge_operator.plan.quantity import plan_shm_size
from forge_operator.plan.workload import InvalidSpecError, NetworkFence, OwnerRef, StoreAccess, WorkloadMeta
from forge_operator.settings import OperatorSettings

KIND = DEPLOYMENT.kind
SERVING_PORT = 8000
DEFAULT_SHM_SIZE = "16Gi"
"""/dev/shm of a vLLM pod without a memory limit (vLLM's workers and NCCL share tensors through it)."""


@dataclass(frozen=True)
class ServingSize:
    """CPU and memory of each serving replica."""

    cpu: str
    """CPU request."""
    memory_request: str
    """Memory the scheduler reserves."""
    memory_limit: str
    """Memory the replica may use before it is OOM-killed."""


BUILTIN_SIZE = ServingSize(cpu="500m", memory_request="1Gi", memory_limit="4Gi")
"""The builtin server without spec.resources: it idles at ~0.4 GiB (torch and the HTTP stack) and holds the
model in float32 on a CPU, so a small model fits the request and up to ~0.5B parameters fit the limit; a
small node (1 CPU, 2 GiB free) can schedule it."""
VLLM_SIZE = ServingSize(cpu="2", memory_request="8Gi", memory_limit="8Gi")
"""vLLM without spec.resources (its weights live on the GPU; host memory holds the loader and the
shared-memory buffers)."""


def plan_serving_size(spec: ForgeDeploymentSpec) -> ServingSize:
    """What each replica requests: spec.resources where set (memory is then both request and limit), else
    the runtime's default."""
    default = VLLM_SIZE if spec.runtime is ServingRuntime.VLLM else BUILTIN_SIZE
    res = spec.resources
    return ServingSize(cpu=res.cpu or default.cpu, memory_request=res.memory or default.memory_request,
                       memory_limit=res.memory or default.memory_limit)


@dataclass(frozen=True)
class GateResult:
    """The outcome of the evaluation gate."""

    passed: bool
    message: str


def evaluate_gate(rules: list[GateRule], metrics: dict[str, float]) -> GateResult:
    """Check every rule against the run's evaluation metrics; the message names each failing metric
    with its value and threshold."""
    failures = []
    for rule in rules:
        value = metrics.get(rule.metric)
        if value is None:
            failures.append(f"{rule.metric} is missing from the run's evalMetrics")
        elif rule.min is not None and value < rule.min:
            failures.append(f"{rule.metric} = {value:g} is below the minimum {rule.min:g}")
        elif rule.max is not None and value > rule.max:
            failures.append(f"{rule.metric} = {value:g} is above the maximum {rule.max:g}")
    if failures:
        return GateResult(False, "eval gate failed: " + "; ".join(failures))
    checked = ", ".join(r.metric for r in rules)
    return GateResult(True, f"eval gate passed ({checked})" if rules else "no eval gate")


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything needed to render a deployment's serving workload."""

    meta: WorkloadMeta
    name: str
    deployment_name: str
    service_name: str
    model_uri: str
    model_digest: str | None
    model_name: str
    spec: ForgeDeploymentSpec
    trainer_image: str
    vllm_image: str
    image_pull_policy: str
    store: StoreAccess
    size: ServingSize = BUILTIN_SIZE
    """CPU and memory of each replica (spec.resources, else the runtime's default)."""
    shm_size: str = DEFAULT_SHM_SIZE
    """sizeLimit of the vLLM pods' memory-backed /dev/shm: half of the replica's memory limit, at most 16Gi."""
    fence: NetworkFence = field(default_factory=NetworkFence)
    """Where the pods may connect (the installation's store and DNS peers) and who may scrape them."""
    hpa_api_version: str = "autoscaling/v2"
    """The HorizontalPodAutoscaler's API: autoscaling/v2beta2 (the same fields for a CPU target) on a
    server without autoscaling/v2 (before Kubernetes 1.23)."""

    @property
    def endpoint(self) -> str:
        """In-cluster base URL of the OpenAI-compatible API."""
        return f"http://{self.service_name}.{self.meta.namespace}.svc:{SERVING_PORT}/v1"


def plan_deployment(dep: ForgeDeployment, settings: OperatorSettings, model_uri: str,
                    model_digest: str | None, *, missing: Collection[str] = ()) -> DeploymentPlan:
    """The serving workload of `dep` for a resolved model; `missing`: the names of the capabilities the API
    server lacks (plan/capabilities.py)."""
    meta = dep.metadata
    name, namespace = meta["name"], meta["namespace"]
    size = plan_serving_size(dep.spec)
    try:
        shm_size = plan_shm_size(None, size.memory_limit, "spec.resources", DEFAULT_SHM_SIZE)
    except ValueError as exc:
        raise InvalidSpecError(str(exc)) from exc
    return DeploymentPlan(
        meta=WorkloadMeta(namespace=namespace, owner=OwnerRef.of(dep.model_dump(by_alias=True)),
                          labels=common_labels(KIND, name, "serve")),
        name=name,
        deployment_name=child_name(name, "serve"),
        service_name=name,
        model_uri=model_uri,
        model_digest=model_digest,
        model_name=dep.spec.model_ref or name,
        spec=dep.spec,
        trainer_image=settings.trainer_image,
        vllm_image=settings.vllm_image,
        size=size,
        shm_size=shm_size,
        image_pull_policy=settings.image_pull_policy,
        store=StoreAccess.of(settings),
        fence=NetworkFence.of(settings),
        hpa_api_version="autoscaling/v2beta2" if HPA_V2 in missing else "autoscaling/v2",
    )
