"""ForgeDeployment (`fdep`): serve a trained model over an OpenAI-compatible HTTP API."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from forge_operator.api.common import DNS1123_SUBDOMAIN, ResourceStatus, StoreUri, Toleration
from forge_operator.api.network import ServingNetworkSpec
from forge_operator.api.training import Name
from forge_trainer.config import WireModel


class ServingRuntime(StrEnum):
    """Which server runs the model."""

    BUILTIN = "builtin"
    """Forge's OpenAI-compatible server from the trainer image (CPU or GPU)."""
    VLLM = "vllm"
    """vLLM's OpenAI-compatible server (GPU)."""


class AutoscalingSpec(WireModel):
    """Horizontal autoscaling on CPU utilisation."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.minReplicas <= self.maxReplicas",
         "message": "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"},
    ]})

    min_replicas: Annotated[int, Field(ge=1)] = 1
    """Fewest replicas."""
    max_replicas: Annotated[int, Field(ge=1)] = 4
    """Most replicas."""
    target_cpu_utilization: Annotated[int, Field(ge=1, le=100)] = 70
    """Average CPU utilisation (percent of request) the autoscaler aims for."""

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"autoscaling.minReplicas ({self.min_replicas}) must not exceed "
                             f"autoscaling.maxReplicas ({self.max_replicas})")
        return self


class ServingResources(WireModel):
    """Resources of each serving replica."""

    cpu: str | None = None
    """CPU request (Kubernetes quantity). Unset: 500m for the builtin server, 2 for vLLM."""
    memory: str | None = None
    """Memory request and limit (Kubernetes quantity). Unset: the builtin server requests 1Gi and may use up
    to 4Gi (enough for models up to about 0.5B parameters, which it holds in float32 on a CPU); vLLM gets
    8Gi. Set it for larger models."""
    gpus: Annotated[int, Field(ge=0, le=16)] = 0
    """GPUs per replica (vllm needs at least 1)."""


class GateRule(WireModel):
    """One threshold on an evaluation metric of the referenced run."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.min) || has(self.max)", "message": "evalGate: each rule needs min or max"},
    ]})

    metric: Annotated[str, Field(min_length=1)]
    """Metric name in the run's status.evalMetrics, e.g. loss, perplexity, pass_rate/exact_match."""
    min: float | None = None
    """The metric must be at least this."""
    max: float | None = None
    """The metric must be at most this."""

    @model_validator(mode="after")
    def _some_bound(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError(f"evalGate rule for {self.metric!r} needs min or max")
        return self


class ApiKeySecret(WireModel):
    """A key of a Secret in this namespace holding the API key clients must send as a Bearer token."""

    name: Annotated[str, Field(pattern=DNS1123_SUBDOMAIN, max_length=253)]
    """Secret name."""
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)] = "apiKey"
    """Key in the Secret whose value is the API key."""


class ForgeDeploymentSpec(WireModel):
    """Desired state of a ForgeDeployment."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.modelRef) != has(self.modelUri)", "message": "set exactly one of modelRef, modelUri"},
        {"rule": "self.runtime != 'vllm' || (has(self.resources) && self.resources.gpus >= 1)",
         "message": "runtime vllm needs resources.gpus >= 1"},
    ]})

    model_ref: Name | None = None
    """Name of a ForgeTrainingRun in this namespace whose final model is served."""
    model_uri: StoreUri | None = None
    """URI of a Hugging Face–format model directory to serve instead."""
    runtime: ServingRuntime = ServingRuntime.BUILTIN
    """builtin or vllm."""
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    """Replicas when autoscaling is not set."""
    autoscaling: AutoscalingSpec | None = None
    """Horizontal autoscaling; replaces replicas when set."""
    resources: ServingResources = Field(default_factory=ServingResources)
    """Resources per replica."""
    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node pool selector for the serving pods."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations for the serving pods."""
    eval_gate: list[GateRule] = Field(default_factory=list)
    """Deploy only when every rule passes on the run's evaluation metrics."""
    max_batch_size: Annotated[int, Field(ge=1, le=1024)] = 8
    """Most concurrent sequences a replica decodes together."""
    network: ServingNetworkSpec = Field(default_factory=ServingNetworkSpec)
    """Who may call the serving pods beyond their namespace (allowFrom), and extra egress for them (by
    default they reach only DNS and the object store)."""
    api_key_secret: ApiKeySecret | None = None
    """The API key clients must send as `Authorization: Bearer <key>` (unset: no key is asked)."""

    @model_validator(mode="after")
    def _model_source(self) -> Self:
        if (self.model_ref is None) == (self.model_uri is None):
            raise ValueError("set exactly one of modelRef, modelUri")
        if self.runtime is ServingRuntime.VLLM and self.resources.gpus < 1:
            raise ValueError("runtime vllm needs resources.gpus >= 1")
        return self


class DeploymentPhase(StrEnum):
    """Lifecycle of a ForgeDeployment."""

    PENDING = "Pending"
    """Waiting for the model (run not Succeeded, or eval gate not passed)."""
    PROGRESSING = "Progressing"
    """Replicas are starting or rolling out."""
    AVAILABLE = "Available"
    """All desired replicas are ready and serving."""
    FAILED = "Failed"
    """The spec is invalid or the eval gate failed."""


class DeploymentReason(StrEnum):
    """Reasons a ForgeDeployment's conditions give."""

    INVALID_SPEC = "InvalidSpec"
    WAITING = "Waiting"
    CROSS_NAMESPACE = "CrossNamespaceReference"
    EVAL_GATE_FAILED = "EvalGateFailed"
    EVAL_GATE_PASSED = "EvalGatePassed"
    ROLLING_OUT = "RollingOut"
    AVAILABLE = "Available"


class ForgeDeploymentStatus(ResourceStatus):
    """Observed state of a ForgeDeployment."""

    phase: DeploymentPhase | None = None
    """Pending, Progressing, Available or Failed."""
    replicas: int | None = None
    """Desired replicas."""
    ready_replicas: int | None = None
    """Replicas ready to serve."""
    endpoint: str | None = None
    """In-cluster URL of the OpenAI-compatible API."""
    model_uri: str | None = None
    """URI of the model served."""
    model_digest: str | None = None
    """Digest of the model served."""


class ForgeDeployment(WireModel):
    """A ForgeDeployment resource as the API server stores it."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["forge.ai/v1alpha1"] = "forge.ai/v1alpha1"
    """API version."""
    kind: Literal["ForgeDeployment"] = "ForgeDeployment"
    """Kind."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Standard object metadata."""
    spec: ForgeDeploymentSpec
    """Desired state."""
    status: ForgeDeploymentStatus = Field(default_factory=ForgeDeploymentStatus)
    """Observed state."""
