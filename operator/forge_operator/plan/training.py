"""Plan a ForgeTrainingRun: the resolved trainer config, and the elastic job as a TorchX AppDef.

The AppDef has the shape of TorchX's `dist.ddp` component (one role, `bash -c "torchrun ..."`, a
c10d rendezvous port, min/max replicas). `render/training.py` turns it into Kubernetes objects, and
the local runner hands the very same AppDef to TorchX's local scheduler.

In a cluster no agent hosts the c10d rendezvous store: each run has its own store pod
(`forge-trainer rendezvous-store`) behind a Service, and every agent is its client (`is_host=false`).
Losing any training pod then costs the others a re-rendezvous, never the store, and no agent needs
another pod's hostname. On one machine (`forge run`) the first agent hosts it, as torchrun does.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from torchx import specs
from torchx.specs import macros

from forge_operator.api import TRAINING_RUN
from forge_operator.api.errors import spec_error_message
from forge_operator.api.network import NetworkSpec
from forge_operator.api.training import ForgeTrainingRun, TrainingResources
from forge_operator.plan.naming import child_name, common_labels, output_uri
from forge_operator.plan.quantity import parse_quantity, plan_shm_size
from forge_operator.plan.workload import (
    InvalidSpecError,
    NetworkFence,
    OwnerRef,
    StoreAccess,
    WorkloadMeta,
    config_hash,
)
from forge_operator.settings import OperatorSettings
from forge_trainer.config import ModelConfig, TrainConfig, VerifierKind

KIND = TRAINING_RUN.kind
RDZV_PORT = 29400
RDZV_PORT_ENV = "FORGE_RDZV_PORT"
RDZV_HOST_ENV = "FORGE_RDZV_HOST"
"""The rendezvous store's host (TorchX's rank0_env); unset on one machine: localhost."""
RDZV_IS_HOST_ENV = "FORGE_RDZV_IS_HOST"
"""`false` in a cluster: the agent is a client of the run's store pod; unset: torchrun's own guess."""
METRICS_PORT = 9400
CONFIG_PATH = "/etc/forge/config.yaml"
# Rendezvous settings learned the hard way: a short last call so a re-forming group does not wait
# long for stragglers, a fast keep-alive so a dead node is noticed quickly; and an agent waits up to
# 5 minutes for the store to accept it (its pod may still be pulling the image on its node).
RDZV_CONF = "last_call_timeout=5,keep_alive_interval=1,join_timeout=600,read_timeout=300"
DEFAULT_SHM_SIZE = "16Gi"
"""/dev/shm of a training pod when neither spec.resources.shmSize nor a memory limit says otherwise."""
DEFAULT_SCRATCH_SIZE = "200Gi"
"""/tmp of a training pod unless spec.resources.scratchSize is set: room for a large model's download,
checkpoint staging and export, yet a bound on what one pod can write to the node's disk."""
ELASTIC_ENV = {
    # without it, a re-rendezvous reads stale store addresses and fails about half the time
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    "PYTHONUNBUFFERED": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass(frozen=True)
class ResolvedRefs:
    """What a run's references resolved to (the handler reads them; the plan only uses them)."""

    dataset_manifest: str
    dataset_digest: str | None = None
    eval_manifest: str | None = None
    eval_digest: str | None = None
    init_model_uri: str | None = None
    init_checkpoint_uri: str | None = None
    base_model_digest: str | None = None
    model: ModelConfig | None = None


@dataclass(frozen=True)
class TrainingPlan:
    """Everything needed to render (or run locally) one attempt of a training run."""

    meta: WorkloadMeta
    attempt: int
    job_name: str
    config_name: str
    network_policy_name: str
    rdzv_name: str
    """Name of the rendezvous store's Deployment, Service and NetworkPolicy."""
    rdzv_meta: WorkloadMeta
    """Identity of the rendezvous store: the run's owner, its own component label."""
    rdzv_replicas: int
    """Pods of the rendezvous store's Deployment: 1, or 0 for a run that is held or settled."""
    output_uri: str
    config: TrainConfig
    config_hash: str
    app: specs.AppDef
    store: StoreAccess
    resources: TrainingResources
    suspend: bool
    queue: str | None
    rdzv_id: str
    image: str
    image_pull_policy: str
    network: NetworkSpec = field(default_factory=NetworkSpec)
    shm_size: str = DEFAULT_SHM_SIZE
    """sizeLimit of the pods' memory-backed /dev/shm (see `plan_training_shm_size`)."""
    scratch_size: str = DEFAULT_SCRATCH_SIZE
    """sizeLimit of the pods' /tmp."""
    fence: NetworkFence = field(default_factory=NetworkFence)
    sandbox_seccomp_profile: str | None = None
    """The Localhost seccomp profile of the trainer container, when its verifier sandbox needs one."""
    """Where the pods may connect (the installation's store and DNS peers) and who may scrape them."""

    @property
    def job_shape(self) -> dict[str, Any]:
        """What of spec.resources is baked into the Job (see `job_shape`)."""
        return job_shape(self.resources)

    @property
    def rdzv_host(self) -> str:
        """DNS name of the rendezvous store: its Service (cluster domain left to the pods' DNS search)."""
        return f"{self.rdzv_name}.{self.meta.namespace}.svc"


def torchrun_command(min_nodes: int, max_nodes: int, nproc: int, max_restarts: int, config_path: str) -> str:
    """The torchrun command line of every node, with TorchX macros for the rendezvous host and id.

    `forge-trainer torchrun` is torchrun that leaves the rendezvous at once on SIGTERM (as a
    container's process 1, torchrun ignores SIGTERM until its workers start)."""
    return " ".join([
        "forge-trainer", "torchrun", "--",
        f"--nnodes={min_nodes}:{max_nodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        # `$$` escapes TorchX's macro syntax: the shell sees ${<rank0 env var>:=localhost}
        # the port: 29400 in a pod; `forge run` sets FORGE_RDZV_PORT to a free one, so two local runs coexist
        f"--rdzv-endpoint=$${{{macros.rank0_env}:=localhost}}:$${{{RDZV_PORT_ENV}:-{RDZV_PORT}}}",
        f"--rdzv-id={macros.app_id}",
        # `,is_host=false` where the environment says so: a cluster's agents are clients of the store pod
        f"--rdzv-conf={RDZV_CONF}$${{{RDZV_IS_HOST_ENV}:+,is_host=$${RDZV_IS_HOST_ENV}}}",
        f"--max-restarts={max_restarts}",
        "-m", "forge_trainer.cli", "train", "--config", config_path,
    ])


def plan_app_def(name: str, image: str, resources: TrainingResources, max_restarts: int,
                 config_path: str = CONFIG_PATH, env: dict[str, str] | None = None) -> specs.AppDef:
    """The run's elastic job as a TorchX AppDef (the shape of `torchx.components.dist.ddp`)."""
    nproc = max(1, resources.gpus_per_node)
    cpu = math.ceil(parse_quantity(resources.cpu, "spec.resources.cpu")) if resources.cpu else 1
    mem_mb = int(parse_quantity(resources.memory, "spec.resources.memory") // 2**20) if resources.memory else 1024
    role = specs.Role(
        name="trainer",
        image=image,
        entrypoint="bash",
        args=["-c", torchrun_command(resources.min_nodes, resources.max_nodes, nproc, max_restarts, config_path)],
        env={**ELASTIC_ENV, **(env or {})},
        min_replicas=resources.min_nodes,
        num_replicas=resources.max_nodes,
        max_retries=max_restarts,
        resource=specs.Resource(cpu=cpu, gpu=resources.gpus_per_node, memMB=mem_mb),
        port_map={"c10d": RDZV_PORT, "metrics": METRICS_PORT},
    )
    return specs.AppDef(name=name, roles=[role])


def plan_training_shm_size(resources: TrainingResources) -> str:
    """The sizeLimit of a training pod's /dev/shm: spec.resources.shmSize capped at spec.resources.memory,
    else half of spec.resources.memory at most 16Gi, else 16Gi (see `plan_shm_size`)."""
    return plan_shm_size(resources.shm_size, resources.memory, "spec.resources", DEFAULT_SHM_SIZE)


def plan_scratch_size(resources: TrainingResources) -> str:
    """The sizeLimit of a training pod's /tmp: spec.resources.scratchSize, else DEFAULT_SCRATCH_SIZE."""
    if resources.scratch_size is None:
        return DEFAULT_SCRATCH_SIZE
    parse_quantity(resources.scratch_size, "spec.resources.scratchSize")
    return resources.scratch_size


def job_shape(resources: TrainingResources) -> dict[str, Any]:
    """The part of spec.resources a Job is built from and cannot change in place (torchrun's --nnodes,
    an Indexed Job's completions/parallelism, the pod template): everything but the Kueue queue. An unset
    shmSize is recorded as planned: a run without spec.resources recorded the 16Gi default before the
    size followed the memory, and an operator upgrade must not roll its Job."""
    shape = resources.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"queue"})
    shape.setdefault("shmSize", plan_training_shm_size(resources))
    return shape


def shape_changes(live: str | None, desired: dict[str, Any]) -> list[str]:
    """What differs between a live Job's recorded shape (its annotation, JSON) and the desired one, as
    `spec.resources.<field> <old> -> <new>`; nothing when the Job records no (readable) shape."""
    if not live:
        return []
    try:
        old = json.loads(live)
    except ValueError:
        return []
    if not isinstance(old, dict):
        return []
    return [f"spec.resources.{key} {_shape_value(old.get(key))} -> {_shape_value(desired.get(key))}"
            for key in sorted(set(old) | set(desired)) if old.get(key) != desired.get(key)]


def _shape_value(value: Any) -> str:
    """A field of a Job's shape as a change message shows it."""
    return "unset" if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def plan_training_run(run: ForgeTrainingRun, settings: OperatorSettings, refs: ResolvedRefs,
                      attempt: int = 0, *, config_path: str = CONFIG_PATH, output: str | None = None,
                      rdzv_replicas: int = 1) -> TrainingPlan:
    """The workload of attempt `attempt` of `run` (attempts are the operator's job recreations).

    The local runner passes where it writes the config file (`config_path`) and, with a local
    directory store, the prefix the run writes under (`output`); the operator passes how many pods the
    rendezvous store should have now (`rdzv_replicas`, status/run_job.py's store_replicas)."""
    meta = run.metadata
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    spec = run.spec
    model = spec.model or refs.model
    out = output or output_uri(settings.store_bucket, namespace, KIND, name, uid)
    try:
        config = TrainConfig(
            stage=spec.stage, model=model, dataset=refs.dataset_manifest, output=out,
            eval_dataset=refs.eval_manifest, init_model=refs.init_model_uri,
            init_checkpoint=refs.init_checkpoint_uri, method=spec.method,
            lora=spec.lora or TrainConfig.model_fields["lora"].get_default(call_default_factory=True),
            rl=spec.rl or TrainConfig.model_fields["rl"].get_default(call_default_factory=True),
            hyperparameters=spec.hyperparameters, precision=spec.precision, checkpointing=spec.checkpointing,
            store=settings.store, metrics_port=METRICS_PORT,
        )
        app = plan_app_def(child_name(name, "train"), settings.trainer_image, spec.resources, spec.max_restarts,
                           config_path=config_path)
        shm_size, scratch_size = plan_training_shm_size(spec.resources), plan_scratch_size(spec.resources)
    except ValidationError as exc:
        raise InvalidSpecError(spec_error_message(exc, root="spec")) from exc
    except ValueError as exc:
        raise InvalidSpecError(str(exc)) from exc
    job_name = child_name(name, f"train-{attempt}")
    return TrainingPlan(
        meta=WorkloadMeta(namespace=namespace, owner=OwnerRef.of(run.model_dump(by_alias=True)),
                          labels=common_labels(KIND, name, "train")),
        attempt=attempt,
        job_name=job_name,
        config_name=child_name(name, "train-config"),
        network_policy_name=child_name(name, "train"),
        # not `<run>-rdzv`: runs started before the store pod have a headless Service of that name
        rdzv_name=child_name(name, "rendezvous"),
        rdzv_meta=WorkloadMeta(namespace=namespace, owner=OwnerRef.of(run.model_dump(by_alias=True)),
                               labels=common_labels(KIND, name, "rendezvous")),
        rdzv_replicas=rdzv_replicas,
        output_uri=out,
        config=config,
        config_hash=config_hash(config),
        app=app,
        store=StoreAccess.of(settings),
        resources=spec.resources,
        suspend=spec.suspend or spec.resources.queue is not None,
        queue=spec.resources.queue,
        rdzv_id=uid,
        image=settings.trainer_image,
        image_pull_policy=settings.image_pull_policy,
        network=spec.network,
        shm_size=shm_size,
        scratch_size=scratch_size,
        fence=NetworkFence.of(settings),
        sandbox_seccomp_profile=(settings.sandbox_seccomp_profile or None) if runs_model_code(config) else None,
    )


def runs_model_code(config: TrainConfig) -> bool:
    """Whether the run executes model-written code in the verifier sandbox (rl with python_tests or custom)."""
    reward = config.rl.reward if config.stage.value == "rl" else None
    return reward is not None and reward.verifier in (VerifierKind.PYTHON_TESTS, VerifierKind.CUSTOM)
