"""Render a dataset's preparation workload: a NetworkPolicy fencing it, a ConfigMap with its config and
a Job running it; a preparation split across workers is one Job per worker (docs/architecture.md,
"Dataset preparation across workers")."""

from __future__ import annotations

from typing import Any

from forge_operator.plan.dataset import DatasetPlan, prepare_worker_args
from forge_operator.render.config_map import config_map
from forge_operator.render.network_policy import network_policy
from forge_operator.render.pod import (
    CONFIG_DIR,
    CONFIG_FILE,
    config_volume,
    container_security_context,
    object_meta,
    pod_security_context,
    resource_requirements,
    scratch_volume,
    store_env,
)

BACKOFF_LIMIT = 2


def render_dataset_config(plan: DatasetPlan) -> dict[str, Any]:
    """The ConfigMap holding the PrepareConfig the workload reads."""
    return config_map(plan.config_name, plan.meta, plan.config.to_wire())


def render_dataset_job(plan: DatasetPlan, worker: int = 0) -> dict[str, Any]:
    """The Job that runs `forge-trainer prepare` (for one worker of a split preparation: all its stages; worker
    0's Job, named like an unsplit one, writes the manifest and so completes last)."""
    name = plan.worker_job_names[worker] if plan.worker_job_names else plan.job_name
    config_vol, config_mount = config_volume(plan.config_name)
    tmp_vol, tmp_mount = scratch_volume()
    container = {
        "name": "prepare",
        "image": plan.image,
        "imagePullPolicy": plan.image_pull_policy,
        "command": ["forge-trainer", "prepare", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}",
                    *prepare_worker_args(worker, plan.parallelism)],
        "env": store_env(plan.store),
        "volumeMounts": [config_mount, tmp_mount],
        "securityContext": container_security_context(),
        "resources": resource_requirements(plan.resources.cpu, plan.resources.memory),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(name, plan.meta),
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "template": {
                "metadata": {"labels": dict(plan.meta.labels)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": pod_security_context(),
                    "containers": [container],
                    "volumes": [config_vol, tmp_vol],
                },
            },
        },
    }


def render_dataset_network_policy(plan: DatasetPlan) -> dict[str, Any]:
    """The preparation pod reaches only kube-dns and the object store (plus spec.network.extraEgress);
    nothing reaches it."""
    return network_policy(plan.network_policy_name, plan.meta, plan.store, plan.fence, ingress=[],
                          extra_egress=plan.network.egress_rules())


def render_dataset(plan: DatasetPlan) -> list[dict[str, Any]]:
    """Every object the dataset's workload needs, in apply order (the fence before the pod)."""
    jobs = [render_dataset_job(plan, worker) for worker in range(plan.parallelism)]
    return [render_dataset_network_policy(plan), render_dataset_config(plan), *jobs]
