"""Render a training run's attempt: the run's rendezvous store (a Deployment of one pod behind a
ClusterIP Service), a ConfigMap with the trainer config, an Indexed Job whose pods run torchrun as the
store's clients, and NetworkPolicies fencing the pods and the store in."""

from __future__ import annotations

import json
from typing import Any

from torchx.specs import macros

from forge_operator.plan.training import (
    METRICS_PORT,
    RDZV_HOST_ENV,
    RDZV_IS_HOST_ENV,
    RDZV_PORT,
    TrainingPlan,
)
from forge_operator.render.config_map import config_map
from forge_operator.render.network_policy import (
    network_policy,
    port_egress,
    port_ingress,
    scrapers,
    sealed_network_policy,
)
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

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
ATTEMPT_LABEL = "forge.ai/attempt"
SHAPE_ANNOTATION = "forge.ai/job-shape"
GPU_RESOURCE = "nvidia.com/gpu"
VERIFIER_DIR = "/etc/forge/verifier"
LOCAL_ADDR_ENV = "PET_LOCAL_ADDR"
"""torchrun's --local-addr: the address the other nodes reach this one at (the pod IP, not a hostname)."""
TERMINATION_GRACE_SECONDS = 120
"""How long a training pod has after SIGTERM: time to write the SIGTERM checkpoint."""
SHUTDOWN_TIMEOUT_ENV = "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"
"""How long torchrun waits for its workers after forwarding SIGTERM before it kills them (default 30 s)."""
RDZV_RESOURCES = ("100m", "512Mi")
"""cpu and memory of the rendezvous store pod (a Python process with torch loaded: about 230 MiB)."""


def _rdzv_pod_labels(plan: TrainingPlan) -> dict[str, str]:
    """Labels of the attempt's store pod: the attempt label lets its Service reach only this attempt's store,
    and lets a new attempt wait for the old store to go (as for the old attempt's training pods)."""
    return {**plan.rdzv_meta.labels, ATTEMPT_LABEL: str(plan.attempt)}


def render_rendezvous_deployment(plan: TrainingPlan) -> dict[str, Any]:
    """The run's c10d rendezvous store: one pod running `forge-trainer rendezvous-store`, replaced with a
    fresh one (empty store) for each attempt; none while the run is held or once it has settled."""
    tmp_vol, tmp_mount = scratch_volume("64Mi")
    container = {
        "name": "rendezvous",
        "image": plan.image,
        "imagePullPolicy": plan.image_pull_policy,
        "command": ["forge-trainer", "rendezvous-store", "--port", str(RDZV_PORT)],
        "ports": [{"name": "c10d", "containerPort": RDZV_PORT, "protocol": "TCP"}],
        # ready once the store accepts connections; agents retry their connection until then
        "readinessProbe": {"tcpSocket": {"port": RDZV_PORT}, "periodSeconds": 2},
        "livenessProbe": {"tcpSocket": {"port": RDZV_PORT}, "initialDelaySeconds": 30, "periodSeconds": 10},
        "volumeMounts": [tmp_mount],
        "securityContext": container_security_context(),
        "resources": resource_requirements(*RDZV_RESOURCES),
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": 10,  # nothing to save: it exits on SIGTERM at once
        "containers": [container],
        "volumes": [tmp_vol],
    }
    res = plan.resources
    # where the training pods go (their node pool, which has the image and tolerates nothing else)
    if res.node_selector:
        pod_spec["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod_spec["tolerations"] = [t.to_wire() for t in res.tolerations]
    if res.priority_class_name:  # preempted before the training pods, it would stall them
        pod_spec["priorityClassName"] = res.priority_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(plan.rdzv_name, plan.rdzv_meta),
        "spec": {
            "replicas": plan.rdzv_replicas,
            # never two stores at once: agents of one attempt must all meet in the same one
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": dict(plan.rdzv_meta.labels)},
            "template": {"metadata": {"labels": _rdzv_pod_labels(plan)}, "spec": pod_spec},
        },
    }


def render_rendezvous_service(plan: TrainingPlan) -> dict[str, Any]:
    """ClusterIP Service in front of the attempt's store pod: the agents' --rdzv-endpoint."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(plan.rdzv_name, plan.rdzv_meta),
        "spec": {
            "type": "ClusterIP",
            "selector": _rdzv_pod_labels(plan),
            "ports": [{"name": "c10d", "port": RDZV_PORT, "targetPort": RDZV_PORT, "protocol": "TCP"}],
        },
    }


def render_rendezvous_network_policy(plan: TrainingPlan) -> dict[str, Any]:
    """The store pod answers only the run's training pods, on the rendezvous port, and connects nowhere."""
    trainers = {"podSelector": {"matchLabels": dict(plan.meta.labels)}}
    return sealed_network_policy(plan.rdzv_name, plan.rdzv_meta, ingress=[port_ingress(RDZV_PORT, [trainers])])


def render_training_config(plan: TrainingPlan) -> dict[str, Any]:
    """The ConfigMap with the TrainConfig every worker reads."""
    return config_map(plan.config_name, plan.meta, plan.config.to_wire())


def render_training_job(plan: TrainingPlan) -> dict[str, Any]:
    """The Indexed Job: one pod per node (completions = parallelism = max nodes), torchrun in each."""
    role = macros.Values(img_root="", app_id=plan.rdzv_id, replica_id="$(JOB_COMPLETION_INDEX)",
                         rank0_env=RDZV_HOST_ENV).apply(plan.app.roles[0])
    res = plan.resources
    config_vol, config_mount = config_volume(plan.config_name)
    tmp_vol, tmp_mount = scratch_volume(plan.scratch_size)
    shm_vol, shm_mount = shm_volume(plan.shm_size)
    env = [{"name": k, "value": v} for k, v in sorted(role.env.items())]
    env += [{"name": RDZV_HOST_ENV, "value": plan.rdzv_host}, {"name": RDZV_IS_HOST_ENV, "value": "false"},
            {"name": LOCAL_ADDR_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            # the workers' checkpoint may take the pod's whole grace period, less a margin for torchrun to exit
            {"name": SHUTDOWN_TIMEOUT_ENV, "value": str(TERMINATION_GRACE_SECONDS - 15)}]
    env += store_env(plan.store)
    gpus = {GPU_RESOURCE: str(res.gpus_per_node)} if res.gpus_per_node else None
    container = {
        "name": "trainer",
        "image": role.image,
        "imagePullPolicy": plan.image_pull_policy,
        "command": [role.entrypoint, *role.args],
        "env": env,
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
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
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
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
    """Pods talk only to their peers, their rendezvous store, kube-dns and the object store (plus
    spec.network.extraEgress); only peers talk to them, and the metrics port answers the run's namespace
    and Prometheus's."""
    peers = {"podSelector": {"matchLabels": dict(plan.meta.labels)}}
    rdzv = port_egress(RDZV_PORT, [{"podSelector": {"matchLabels": dict(plan.rdzv_meta.labels)}}])
    return network_policy(plan.network_policy_name, plan.meta, plan.store, plan.fence, peers=True,
                          ingress=[{"from": [peers]}, port_ingress(METRICS_PORT, scrapers(plan.fence))],
                          extra_egress=[rdzv, *plan.network.egress_rules()])


def render_training(plan: TrainingPlan) -> list[dict[str, Any]]:
    """Every object of the attempt, in apply order (the Job last, once what it mounts and the store it
    meets in exist)."""
    return [render_training_network_policy(plan), render_rendezvous_network_policy(plan),
            render_rendezvous_service(plan), render_rendezvous_deployment(plan), render_training_config(plan),
            render_training_job(plan)]
