"""Helpers for the cluster tier: a cluster whose node really runs Forge's images (the kube-harness in node
mode, or kind/minikube with the images loaded), the images to use, and kubectl-like shortcuts for objects
the chart does not create (an in-cluster S3, a client Pod)."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.cluster import Cluster, wait_for

NODE_KUBECONFIG_ENV = "FORGE_TEST_NODE_KUBECONFIG"
IMAGE_ENVS = ("FORGE_OPERATOR_IMAGE", "FORGE_TRAINER_IMAGE", "FORGE_S3_IMAGE")
S3_ACCESS, S3_SECRET = "forge-cluster-test", "forge-cluster-test-secret"
"""The in-cluster S3's keys (it accepts any), put in the forge-store-credentials Secrets."""
RAW_BUCKET = "corpora"
"""Where the cluster tier puts the quickstart's raw data (s3://corpora/quickstart/...): a bucket of the
company's own, beside the one Forge writes to."""
HOW = ("the cluster tier needs a cluster whose node runs Forge's images: set FORGE_TEST_NODE_KUBECONFIG and "
       "FORGE_OPERATOR_IMAGE, FORGE_TRAINER_IMAGE, FORGE_S3_IMAGE (scripts/test does all of it when "
       "../shared/kube-harness is set up for node mode; CONTRIBUTING.md shows kind and minikube)")


@dataclass(frozen=True)
class NodeCluster:
    """The cluster tier's cluster and images."""

    kubeconfig: Path
    operator_image: str
    trainer_image: str
    s3_image: str

    @classmethod
    def from_env(cls) -> NodeCluster:
        """From the environment, or skip the test saying what is missing."""
        missing = [e for e in (NODE_KUBECONFIG_ENV, *IMAGE_ENVS) if not os.environ.get(e)]
        if missing:
            pytest.skip(f"{HOW}; missing: {', '.join(missing)}")
        return cls(Path(os.environ[NODE_KUBECONFIG_ENV]), *(os.environ[e] for e in IMAGE_ENVS))


def api_client(kubeconfig: Path) -> Any:
    """A kubernetes ApiClient for this kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    return client.ApiClient(cfg)


def create_all(api: Any, objects: list[dict[str, Any]], namespace: str | None = None) -> None:
    """Create each object as `kubectl create -f` would (an existing cluster-scoped CRD is left as it is)."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.dynamic import DynamicClient

    dyn = DynamicClient(api)
    for obj in objects:
        res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        ns = obj["metadata"].get("namespace") or (namespace if res.namespaced else None)
        try:
            dyn.create(res, body=obj, namespace=ns)
        except ApiException as exc:
            if exc.status != 409 or res.namespaced:
                raise


def delete_all(api: Any, objects: list[dict[str, Any]]) -> None:
    """Delete cluster-scoped objects a test created (namespaced ones go with their namespace)."""
    from kubernetes.dynamic import DynamicClient
    from kubernetes.dynamic.exceptions import NotFoundError

    dyn = DynamicClient(api)
    for obj in reversed(objects):
        res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        if not res.namespaced and obj["kind"] != "CustomResourceDefinition":
            with contextlib.suppress(NotFoundError):
                dyn.delete(res, name=obj["metadata"]["name"])


def s3_server(namespace: str, image: str) -> list[dict[str, Any]]:
    """An in-memory S3 (moto) as a Deployment + Service `forge-s3:5000`, non-root like everything else."""
    labels = {"app": "forge-s3"}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "forge-s3", "namespace": namespace},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"automountServiceAccountToken": False,
                      "securityContext": {"runAsNonRoot": True, "runAsUser": 65534},
                      "containers": [{
                          "name": "s3", "image": image, "imagePullPolicy": "IfNotPresent",
                          "ports": [{"containerPort": 5000, "name": "s3"}],
                          "readinessProbe": {"tcpSocket": {"port": 5000}, "periodSeconds": 1},
                          "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                          "securityContext": {"allowPrivilegeEscalation": False,
                                              "capabilities": {"drop": ["ALL"]}}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "forge-s3", "namespace": namespace},
         "spec": {"selector": labels, "ports": [{"name": "s3", "port": 5000, "targetPort": 5000}]}},
    ]


def store_client(api: Any, namespace: str, access: str, secret: str) -> Any:
    """A minio client for the in-cluster S3 of `namespace`, through its pod's address (on the harness this
    machine is the node, so pod IPs are routable from here)."""
    from kubernetes import client
    from minio import Minio

    core = client.CoreV1Api(api)
    pod = wait_for("the S3 pod to be ready", lambda: next(
        (p for p in core.list_namespaced_pod(namespace, label_selector="app=forge-s3").items
         if any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])), None), timeout=180)
    s3 = Minio(f"{pod.status.pod_ip}:5000", access_key=access, secret_key=secret, secure=False)
    wait_for("the S3 server to answer", lambda: _answers(s3), timeout=30)
    return s3


def _answers(s3: Any) -> bool:
    with contextlib.suppress(Exception):
        s3.list_buckets()
        return True
    return False


def secret(namespace: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    """A Secret as `kubectl create secret generic --from-literal` makes it."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "type": "Opaque", "stringData": data}


def run_pod(api: Any, namespace: str, name: str, image: str, command: list[str], timeout: float = 120,
            labels: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a one-off Pod to completion (as `kubectl run --rm -i` would); its exit code and log."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                 "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
                 "containers": [{"name": "main", "image": image, "imagePullPolicy": "IfNotPresent",
                                 "command": command,
                                 "securityContext": {"allowPrivilegeEscalation": False,
                                                     "capabilities": {"drop": ["ALL"]}}}]}})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod(name, namespace)
        state = (pod.status.container_statuses or [None])[0]
        if pod.status.phase in ("Succeeded", "Failed") and state and state.state.terminated:
            return state.state.terminated.exit_code, _log(core, namespace, name)
        time.sleep(1)
    log = ""
    with contextlib.suppress(Exception):
        log = _log(core, namespace, name)
    pytest.fail(f"pod {namespace}/{name} did not finish within {timeout:.0f}s "
                f"(phase {pod.status.phase}); log:\n{log}")


def _log(core: Any, namespace: str, name: str) -> str:
    """A pod's log as text (the client's own decoding turns it into the repr of bytes)."""
    return str(core.read_namespaced_pod_log(name, namespace, _preload_content=False).data.decode(errors="replace"))


def describe(api: Any, namespace: str) -> str:
    """What `kubectl get pods,events` would show of a namespace: for a failing test's output."""
    from kubernetes import client

    core = client.CoreV1Api(api)
    lines = []
    for pod in core.list_namespaced_pod(namespace).items:
        states = [(s.name, s.ready, s.restart_count, s.state.to_dict()) for s in pod.status.container_statuses or []]
        lines.append(f"pod {pod.metadata.name}: {pod.status.phase} {states}")
    for ev in core.list_namespaced_event(namespace).items[-40:]:
        lines.append(f"event {ev.involved_object.kind}/{ev.involved_object.name}: {ev.reason}: {ev.message}")
    return "\n".join(lines)


def load_manifests(path: Path) -> list[dict[str, Any]]:
    """Every document of a YAML file."""
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@dataclass(frozen=True)
class Install:
    """What the tier's tests share: the API, the two namespaces and the images."""

    api: Any
    node: NodeCluster
    system: str
    """The operator's namespace."""
    ml: str
    """The namespace of the Forge resources, their workloads and the S3 server."""
    objects: list[dict[str, Any]]
    operator_ready_seconds: float
    """From creating the chart's objects to both operator replicas Ready."""

    @property
    def cluster(self) -> Cluster:
        """A kubectl-like view of the workloads' namespace."""
        return Cluster(self.api, self.ml)

    def store(self) -> Any:
        """A minio client for the in-cluster S3."""
        return store_client(self.api, self.ml, S3_ACCESS, S3_SECRET)
