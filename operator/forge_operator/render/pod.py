"""Pieces every workload pod shares: ownership, security, store credentials, config volume."""

from __future__ import annotations

from typing import Any

from forge_operator.plan.workload import OwnerRef, StoreAccess, WorkloadMeta

CONFIG_DIR = "/etc/forge"
CONFIG_FILE = "config.yaml"
WORKLOAD_UID = 1000
DEFAULT_SCRATCH_SIZE = "200Gi"
"""/tmp of a workload pod unless its kind sizes it: a dataset spills its cleaned corpus and packs its shards
there, a training run stages checkpoints and the exported model."""


def owner_reference(owner: OwnerRef) -> dict[str, Any]:
    """The ownerReference that makes the garbage collector remove a child with its owner."""
    return {"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def object_meta(name: str, meta: WorkloadMeta, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """metadata of a child object."""
    return {"name": name, "namespace": meta.namespace, "labels": {**meta.labels, **(labels or {})},
            "ownerReferences": [owner_reference(meta.owner)]}


def pod_security_context() -> dict[str, Any]:
    """Non-root, restricted pod security."""
    return {"runAsNonRoot": True, "runAsUser": WORKLOAD_UID, "runAsGroup": WORKLOAD_UID,
            "fsGroup": WORKLOAD_UID, "seccompProfile": {"type": "RuntimeDefault"}}


def container_security_context() -> dict[str, Any]:
    """No privilege escalation, no capabilities, read-only root filesystem."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def store_env(store: StoreAccess) -> list[dict[str, Any]]:
    """Environment a workload reads the store settings from; keys only ever come from the Secret."""
    env: list[dict[str, Any]] = []
    if store.endpoint:
        env.append({"name": "FORGE_S3_ENDPOINT", "value": store.endpoint})
    env += [
        {"name": "FORGE_S3_ACCESS_KEY",
         "valueFrom": {"secretKeyRef": {"name": store.credentials_secret, "key": "accessKey"}}},
        {"name": "FORGE_S3_SECRET_KEY",
         "valueFrom": {"secretKeyRef": {"name": store.credentials_secret, "key": "secretKey"}}},
    ]
    return env


def resource_requirements(cpu: str | None, memory: str | None,
                          extra: dict[str, str] | None = None) -> dict[str, Any]:
    """requests (and limits for memory and extended resources such as GPUs)."""
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = memory
        limits["memory"] = memory
    for key, value in (extra or {}).items():
        requests[key] = value
        limits[key] = value
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def config_volume(config_map: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) that put a ConfigMap's config.yaml at /etc/forge/config.yaml."""
    return ({"name": "config", "configMap": {"name": config_map}},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})


def scratch_volume(size_limit: str = DEFAULT_SCRATCH_SIZE) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of a writable /tmp, since the root filesystem is read-only; bounded, so one pod
    cannot fill the node's disk (the kubelet evicts a pod whose emptyDir outgrows its sizeLimit)."""
    return ({"name": "tmp", "emptyDir": {"sizeLimit": size_limit}}, {"name": "tmp", "mountPath": "/tmp"})


def shm_volume(size_limit: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, volumeMount) of a memory-backed /dev/shm of at most `size_limit` (it counts against the
    container's memory limit; the runtime's default of 64Mi is too small for NCCL and data loaders)."""
    return ({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": size_limit}},
            {"name": "dshm", "mountPath": "/dev/shm"})
