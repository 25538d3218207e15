"""The operator's own settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import json
import os
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from forge_operator.api.network import checked_cidr
from forge_trainer.config import StoreConfig

DEFAULT_TRAINER_IMAGE = "ghcr.io/forge-ai/forge-trainer:0.1.0"
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
"""The label Kubernetes puts on every namespace, holding its name."""
Labels = dict[Annotated[str, Field(min_length=1, max_length=317)], Annotated[str, Field(max_length=63)]]
_JSON_FIELDS = ("store_peer_cidrs", "store_peer_namespace_labels", "store_peer_pod_labels", "dns_peer_cidrs",
                "dns_namespace_labels", "dns_pod_labels")


class OperatorSettings(BaseModel):
    """Settings of one operator installation."""

    trainer_image: str = DEFAULT_TRAINER_IMAGE
    """Image of the workloads (prepare, train, builtin serving)."""
    vllm_image: str = DEFAULT_VLLM_IMAGE
    """Image of the serving pods of a ForgeDeployment with runtime vllm (pin it by digest in a registry
    you control: image@sha256:...)."""
    image_pull_policy: str = "IfNotPresent"
    """Pull policy of workload images."""
    sandbox_seccomp_profile: str = ""
    """Localhost seccomp profile (path under the kubelet's seccomp root) for the trainer container of rl runs
    whose verifier runs model-written code (python_tests, custom): RuntimeDefault plus `unshare`, `mount`,
    `umount2`, `pivot_root` and `mount_setattr`, which the verifier sandbox needs for its namespaces. Empty:
    RuntimeDefault, under which the sandbox uses its fallback layers (see README, Security)."""
    store_endpoint: str | None = None
    """S3 endpoint host[:port] of the company's object store."""
    store_secure: bool = True
    """Use HTTPS for the object store."""
    store_region: str | None = None
    """S3 region, if needed."""
    store_bucket: str = "forge"
    """Bucket that holds everything Forge produces."""
    credentials_secret: str = "forge-store-credentials"
    """Secret (in each resource's namespace) with accessKey/secretKey that workloads use by default."""
    store_peer_cidrs: list[str] = Field(default_factory=list)
    """Addresses of the object store as CIDRs (e.g. ["10.20.30.40/32"]): workload pods may reach the store's
    port there. JSON or comma-separated in FORGE_STORE_PEER_CIDRS."""
    store_peer_namespace_labels: Labels = Field(default_factory=dict)
    """An in-cluster store: labels of its namespace (e.g. {"kubernetes.io/metadata.name": "minio"})."""
    store_peer_pod_labels: Labels = Field(default_factory=dict)
    """An in-cluster store: labels of its pods (with store_peer_namespace_labels: those pods in those
    namespaces; alone: pods in the workload's own namespace)."""
    store_peer_port: Annotated[int, Field(ge=1, le=65535)] | None = None
    """The port the store's pods listen on, when it differs from the endpoint's port (a Service mapping
    port 80 to 9000: NetworkPolicies see the pod's port)."""
    dns_peer_cidrs: list[str] = Field(default_factory=list)
    """Extra DNS server addresses (e.g. ["169.254.20.10/32"] for NodeLocal DNSCache)."""
    dns_namespace_labels: Labels = Field(default_factory=lambda: {NAMESPACE_NAME_LABEL: "kube-system"})
    """Labels of the cluster DNS's namespace: the only place workload pods send DNS queries to."""
    dns_pod_labels: Labels = Field(default_factory=lambda: {"k8s-app": "kube-dns"})
    """Labels of the cluster DNS pods (CoreDNS keeps k8s-app=kube-dns)."""
    prometheus_namespace: str | None = None
    """Namespace of the Prometheus that scrapes workloads: besides the resource's own namespace, the only
    one allowed to reach the metrics (9400) and serving (8000) ports."""
    reconcile_interval: Annotated[float, Field(gt=0)] = 10.0
    """Seconds between reconciles of a resource that is not settled."""
    pods_stalled_after: Annotated[float, Field(gt=0)] = 600.0
    """Seconds a workload's pods may wait to start (unschedulable, image not pulled, not created) before its
    resource is marked Stalled; before that its PodsReady condition already says why they wait."""
    metrics_port: int = 8080
    """Port of the operator's /metrics endpoint (0 disables)."""
    api_connections: Annotated[int, Field(ge=4, le=512)] = 32
    """Most concurrent connections to the API server (watches + Kopf's patches; the handlers' own calls
    share another pool of 16). Each open TLS connection costs ~0.3 MB, so a burst must not open
    hundreds."""

    @field_validator(*_JSON_FIELDS, mode="before")
    @classmethod
    def _from_text(cls, value: Any, info: ValidationInfo) -> Any:
        """An environment variable holds JSON (a list of CIDRs may also be comma-separated)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if not text:
            return [] if str(info.field_name).endswith("cidrs") else {}
        if text[0] in "[{":
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ValueError(f"not valid JSON: {exc}") from None
        return [part.strip() for part in text.split(",") if part.strip()]

    @field_validator("store_peer_cidrs", "dns_peer_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        return [checked_cidr(cidr) for cidr in value]

    @property
    def has_store_peer(self) -> bool:
        """Whether workloads may reach the store: some CIDR or label selector names where it is."""
        return bool(self.store_peer_cidrs or self.store_peer_namespace_labels or self.store_peer_pod_labels)

    @property
    def store(self) -> StoreConfig:
        """The object-store connection workloads and the operator use (no credentials)."""
        return StoreConfig(endpoint=self.store_endpoint, secure=self.store_secure, region=self.store_region)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorSettings:
        """Settings from FORGE_* environment variables; unset ones keep their defaults."""
        env = dict(os.environ if env is None else env)
        values: dict[str, object] = {}
        for name in cls.model_fields:
            key = f"FORGE_{name.upper()}"
            if key in env:
                values[name] = env[key]
        if "FORGE_S3_ENDPOINT" in env and "store_endpoint" not in values:
            values["store_endpoint"] = env["FORGE_S3_ENDPOINT"]
        return cls.model_validate(values)
