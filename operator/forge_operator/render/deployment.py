"""Render a deployment's serving workload: a NetworkPolicy, the Deployment (builtin server or vLLM), a
Service, and an HPA when autoscaling is set."""

from __future__ import annotations

from typing import Any

from forge_operator.api.deployment import ServingRuntime
from forge_operator.plan.deployment import SERVING_PORT, DeploymentPlan
from forge_operator.render.network_policy import network_policy, port_ingress, scrapers
from forge_operator.render.pod import (
    container_security_context,
    object_meta,
    pod_security_context,
    resource_requirements,
    scratch_volume,
    shm_volume,
    store_env,
)

MODEL_DIR = "/models/model"
_MODELS = {"name": "models", "mountPath": "/models"}
BUILTIN_API_KEY_ENV = "FORGE_API_KEY"
"""The builtin server reads its API key from this variable (`forge-trainer serve --api-key`)."""
VLLM_API_KEY_ENV = "VLLM_API_KEY"
"""vLLM reads its `--api-key` from this variable; an env var keeps the key off the process command line."""
BUILTIN_SCRATCH_SIZE = "1Gi"
"""/tmp of a builtin serving pod: the model is fetched into its own volume, so only small temporary files."""
VLLM_SCRATCH_SIZE = "8Gi"
"""/tmp of a vLLM pod, also its HOME (the root filesystem is read-only): torch.compile, Triton and
FlashInfer write their kernel caches there."""
VLLM_ENV = {
    "HF_HUB_OFFLINE": "1",  # the model is local; the NetworkPolicy would refuse the Hub anyway
    "HOME": "/tmp",
    # the pod's uid has no passwd entry in the vLLM image, and torch.compile names its cache directory
    # after getpass.getuser(), which falls back to the passwd database only when USER is unset
    "USER": "forge",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}


def _api_key_env(plan: DeploymentPlan, name: str) -> list[dict[str, Any]]:
    """The API key from spec.apiKeySecret as the variable `name`; nothing when the API is open."""
    ref = plan.spec.api_key_secret
    if ref is None:
        return []
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def _probes(path_ready: str, path_live: str) -> dict[str, Any]:
    http = {"port": SERVING_PORT}
    return {
        "readinessProbe": {"httpGet": {**http, "path": path_ready}, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {"httpGet": {**http, "path": path_live}, "periodSeconds": 10, "failureThreshold": 6},
        # loading a large model can take a while; liveness starts counting once it has started
        "startupProbe": {"httpGet": {**http, "path": path_live}, "periodSeconds": 10, "failureThreshold": 90},
    }


def _requirements(plan: DeploymentPlan, gpus: dict[str, str] | None) -> dict[str, Any]:
    """The server container's requests and limits: the planned size, a memory limit above the request
    when the default lets the builtin server burst to load its model, and the GPUs."""
    out = resource_requirements(plan.size.cpu, plan.size.memory_request, gpus)
    out["limits"]["memory"] = plan.size.memory_limit
    return out


def _fetch_container(plan: DeploymentPlan) -> dict[str, Any]:
    """The init container that fetches and verifies the model into the pod's `models` volume: the only
    container that holds the store credentials, and it has exited before the server starts."""
    fetch = ["forge-trainer", "fetch", "--uri", plan.model_uri, "--dest", MODEL_DIR]
    if plan.model_digest:
        fetch += ["--digest", plan.model_digest]
    if plan.store.endpoint and not plan.store.secure:
        fetch.append("--store-insecure")
    return {"name": "fetch-model", "image": plan.trainer_image, "imagePullPolicy": plan.image_pull_policy,
            "command": fetch, "env": store_env(plan.store), "volumeMounts": [_MODELS, scratch_volume()[1]],
            "securityContext": container_security_context()}


def _builtin_container(plan: DeploymentPlan) -> dict[str, Any]:
    args = ["forge-trainer", "serve", "--model", MODEL_DIR, "--model-name", plan.model_name,
            "--host", "0.0.0.0", "--port", str(SERVING_PORT), "--max-batch-size", str(plan.spec.max_batch_size)]
    if plan.model_digest:  # checked again on the local copy (the server hashes it for /v1/models anyway)
        args += ["--model-digest", plan.model_digest]
    gpus = plan.spec.resources.gpus
    env = _api_key_env(plan, BUILTIN_API_KEY_ENV)
    return {
        "name": "server", "image": plan.trainer_image, "imagePullPolicy": plan.image_pull_policy,
        "command": args, **({"env": env} if env else {}),
        "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "volumeMounts": [{**_MODELS, "readOnly": True}, scratch_volume()[1]],
        "securityContext": container_security_context(),
        "resources": _requirements(plan, {"nvidia.com/gpu": str(gpus)} if gpus else None),
        **_probes("/readyz", "/healthz"),
    }


def _vllm_container(plan: DeploymentPlan) -> dict[str, Any]:
    gpus = plan.spec.resources.gpus
    return {
        "name": "server", "image": plan.vllm_image, "imagePullPolicy": plan.image_pull_policy,
        "command": ["vllm", "serve", MODEL_DIR, "--served-model-name", plan.model_name, "--host", "0.0.0.0",
                    "--port", str(SERVING_PORT), "--max-num-seqs", str(plan.spec.max_batch_size)],
        "env": [*({"name": k, "value": v} for k, v in VLLM_ENV.items()), *_api_key_env(plan, VLLM_API_KEY_ENV)],
        "ports": [{"name": "http", "containerPort": SERVING_PORT, "protocol": "TCP"}],
        "volumeMounts": [{**_MODELS, "readOnly": True}, scratch_volume()[1], shm_volume(plan.shm_size)[1]],
        "securityContext": container_security_context(),
        "resources": _requirements(plan, {"nvidia.com/gpu": str(max(1, gpus))}),
        **_probes("/health", "/health"),
    }


def render_serving_deployment(plan: DeploymentPlan) -> dict[str, Any]:
    """The apps/v1 Deployment running the serving runtime."""
    spec = plan.spec
    vllm = spec.runtime is ServingRuntime.VLLM
    scratch = scratch_volume(VLLM_SCRATCH_SIZE if vllm else BUILTIN_SCRATCH_SIZE)[0]
    volumes: list[dict[str, Any]] = [scratch, {"name": "models", "emptyDir": {}}]
    pod: dict[str, Any] = {"automountServiceAccountToken": False, "securityContext": pod_security_context()}
    # both runtimes: only the init container sees the store credentials; the server reads the local copy
    pod["initContainers"] = [_fetch_container(plan)]
    if vllm:
        pod["containers"] = [_vllm_container(plan)]
        volumes.append(shm_volume(plan.shm_size)[0])
    else:
        pod["containers"] = [_builtin_container(plan)]
    pod["volumes"] = volumes
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.to_wire() for t in spec.tolerations]
    body: dict[str, Any] = {
        "selector": {"matchLabels": dict(plan.meta.labels)},
        "template": {"metadata": {"labels": dict(plan.meta.labels),
                                  "annotations": {"forge.ai/model-digest": plan.model_digest or ""}},
                     "spec": pod},
    }
    if spec.autoscaling is None:
        body["replicas"] = spec.replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": object_meta(plan.deployment_name, plan.meta), "spec": body}


def render_serving_service(plan: DeploymentPlan) -> dict[str, Any]:
    """The Service clients call (named after the ForgeDeployment)."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": object_meta(plan.service_name, plan.meta),
            "spec": {"selector": dict(plan.meta.labels),
                     "ports": [{"name": "http", "port": SERVING_PORT, "targetPort": SERVING_PORT, "protocol": "TCP"}]}}


def render_serving_hpa(plan: DeploymentPlan) -> dict[str, Any] | None:
    """An autoscaling/v2 HPA on CPU utilisation, when autoscaling is set (v2beta2, whose fields for a CPU
    target are the same, where the API server has no v2)."""
    auto = plan.spec.autoscaling
    if auto is None:
        return None
    # the literal names the kind's API group (what tests/unit/test_chart_role_grants.py reads); the version
    # is the plan's
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": object_meta(plan.deployment_name, plan.meta),
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.deployment_name},
                    "minReplicas": auto.min_replicas, "maxReplicas": auto.max_replicas,
                    "metrics": [{"type": "Resource", "resource": {
                        "name": "cpu", "target": {"type": "Utilization",
                                                  "averageUtilization": auto.target_cpu_utilization}}}]}}
    hpa["apiVersion"] = plan.hpa_api_version
    return hpa


def render_serving_network_policy(plan: DeploymentPlan) -> dict[str, Any]:
    """The serving port answers the deployment's namespace, Prometheus's and spec.network.allowFrom; the
    pods reach only kube-dns and the object store (the model), plus spec.network.extraEgress."""
    clients = scrapers(plan.fence) + plan.spec.network.ingress_peers()
    return network_policy(plan.deployment_name, plan.meta, plan.store, plan.fence,
                          ingress=[port_ingress(SERVING_PORT, clients)],
                          extra_egress=plan.spec.network.egress_rules())


def render_deployment(plan: DeploymentPlan) -> list[dict[str, Any]]:
    """Every object of the serving workload, in apply order (the fence before the pods)."""
    objs = [render_serving_network_policy(plan), render_serving_service(plan), render_serving_deployment(plan)]
    hpa = render_serving_hpa(plan)
    return [*objs, hpa] if hpa else objs
