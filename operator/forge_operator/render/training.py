"""Render a training run's attempt: a headless Service for the rendezvous, a ConfigMap with the
trainer config, an Indexed Job whose pods run torchrun, and a NetworkPolicy fencing the pods in."""

from __future__ import annotations

import json
from typing import Any

from torchx.specs import macros

from forge_operator.plan.training import METRICS_PORT, RDZV_PORT, TrainingPlan
from forge_operator.render.config_map import config_map
from forge_operator.render.network_policy import network_policy, port_ingress, scrapers
from forge_operator.render.pod import (
    config_volume,
    container_security_context,
    object_meta,
    pod_security_context,
    resource_requirements,
    scratch_volume,
    shm_volume,
    store_env,
)

RANK0_ENV = "FORGE_RANK0_HOST"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ATTEMPT_LABEL = "forge.ai/attempt"
SHAPE_ANNOTATION = "forge.ai/job-shape"
GPU_RESOURCE = "nvidia.com/gpu"
VERIFIER_DIR = "/etc/forge/verifier"


def render_training_service(plan: TrainingPlan) -> dict[str, Any]:
    """Headless Service giving pod 0 a stable DNS name for the c10d rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(plan.service_name, plan.meta),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,  # the rendezvous happens before any pod is ready
            "selector": dict(plan.meta.labels),
            "ports": [{"name": "c10d", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"},
                      {"name": "metrics", "port": METRICS_PORT, "targetPort": METRICS_PORT, "protocol": "TCP"}],
        },
    }


def render_training_config(plan: TrainingPlan) -> dict[str, Any]:
    """The ConfigMap with the TrainConfig every worker reads."""
    return config_map(plan.config_name, plan.meta, plan.config.to_wire())


def render_training_job(plan: TrainingPlan) -> dict[str, Any]:
    """The Indexed Job: one pod per node (completions = parallelism = max nodes), torchrun in each."""
    role = macros.Values(img_root="", app_id=plan.rdzv_id, replica_id="$(JOB_COMPLETION_INDEX)",
                         rank0_env=RANK0_ENV).apply(plan.app.roles[0])
    res = plan.resources
    config_vol, config_mount = config_volume(plan.config_name)
    tmp_vol, tmp_mount = scratch_volume(plan.scratch_size)
    shm_vol, shm_mount = shm_volume(plan.shm_size)
    env = [{"name": k, "value": v} for k, v in sorted(role.env.items())]
    env.append({"name": RANK0_ENV, "value": plan.rank0_host})
    env += store_env(plan.store)
    gpus = {GPU_RESOURCE: str(res.gpus_per_node)} if res.gpus_per_node else None
    container = {
        "name": "trainer",
        "image": role.image,
        "imagePullPolicy": plan.image_pull_policy,
        "command": [role.entrypoint, *role.args],
        "env": env,
        "ports": [{"name": "c10d", "containerPort": RDZV_PORT, "protocol": "TCP"}, {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "volumeMounts": [config_mount, tmp_mount, shm_mount],
        "securityContext": container_security_context(),
        "resources": resource_requirements(res.cpu, res.memory, gpus),
    }
    if plan.sandbox_seccomp_profile:  # what the verifier sandbox needs for its namespaces, and only then
        container["securityContext"]["seccompProfile"] = {"type": "Localhost",
                                                          "localhostProfile": plan.sandbox_seccomp_profile}
    reward = plan.config.rl.reward if plan.config.stage.value == "rl" else None
    if reward is not None and reward.custom_source is not None:
        # the custom verifier's source, from a ConfigMap in the run's namespace, read-only
        container["volumeMounts"].append({"name": "verifier", "mountPath": VERIFIER_DIR, "readOnly": True})
        container["env"].append({"name": "FORGE_CUSTOM_VERIFIER", "value": f"{VERIFIER_DIR}/verifier.py"})
        extra_volumes = [{"name": "verifier", "configMap": {
            "name": reward.custom_source.name, "items": [{"key": reward.custom_source.key, "path": "verifier.py"}]}}]
    else:
        extra_volumes = []
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "subdomain": plan.service_name,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 120,  # time to write the SIGTERM checkpoint
        "containers": [container],
        "volumes": [config_vol, tmp_vol, shm_vol, *extra_volumes],
    }
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in res.tolerations]
    if res.priority_class_name:
        pod_spec["priorityClassName"] = res.priority_class_name
    labels = {ATTEMPT_LABEL: str(plan.attempt)}
    if plan.queue:
        labels[QUEUE_LABEL] = plan.queue
    meta = object_meta(plan.job_name, plan.meta, labels)
    # what the Job was built from: a change of spec.resources rolls the Job (it cannot change in place)
    meta["annotations"] = {SHAPE_ANNOTATION: json.dumps(plan.job_shape, sort_keys=True, separators=(",", ":"))}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": res.max_nodes,
            "parallelism": res.max_nodes,
            # a lost node's pod is recreated with the same index and rejoins the elastic group;
            # beyond this the Job fails and the operator recreates it (spec.maxRestarts)
            "backoffLimit": max(1, res.max_nodes),
            "suspend": plan.suspend,
            "template": {"metadata": {"labels": {**plan.meta.labels, ATTEMPT_LABEL: str(plan.attempt)}},
                         "spec": pod_spec},
        },
    }


def render_training_network_policy(plan: TrainingPlan) -> dict[str, Any]:
    """Pods talk only to their peers, kube-dns and the object store (plus spec.network.extraEgress); only
    peers talk to them, and the metrics port answers the run's namespace and Prometheus's."""
    peers = {"podSelector": {"matchLabels": dict(plan.meta.labels)}}
    return network_policy(plan.network_policy_name, plan.meta, plan.store, plan.fence, peers=True,
                          ingress=[{"from": [peers]}, port_ingress(METRICS_PORT, scrapers(plan.fence))],
                          extra_egress=plan.network.egress_rules())


def render_training(plan: TrainingPlan) -> list[dict[str, Any]]:
    """Every object of the attempt, in apply order (the Job last, once what it mounts exists)."""
    return [render_training_network_policy(plan), render_training_service(plan), render_training_config(plan),
            render_training_job(plan)]
