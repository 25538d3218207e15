"""Plan the preparation Job of a ForgeDataset."""

from __future__ import annotations

from dataclasses import dataclass, field

from forge_operator.api import DATASET
from forge_operator.api.common import ComputeResources
from forge_operator.api.dataset import ForgeDataset
from forge_operator.api.network import NetworkSpec
from forge_operator.plan.naming import child_name, common_labels, output_uri
from forge_operator.plan.workload import (
    InvalidSpecError,
    NetworkFence,
    OwnerRef,
    StoreAccess,
    WorkloadMeta,
    config_hash,
)
from forge_operator.settings import OperatorSettings
from forge_trainer.config import PrepareConfig, TokenizerConfig
from forge_trainer.config.data import PREPARE_SINGLE_WORKER_STAGES, PREPARE_STAGES

KIND = DATASET.kind


@dataclass(frozen=True)
class DatasetPlan:
    """Everything needed to render a dataset's workload."""

    meta: WorkloadMeta
    job_name: str
    config_name: str
    output_uri: str
    config: PrepareConfig
    config_hash: str
    image: str
    image_pull_policy: str
    store: StoreAccess
    resources: ComputeResources
    network: NetworkSpec = field(default_factory=NetworkSpec)
    fence: NetworkFence = field(default_factory=NetworkFence)
    """Where the pods may connect (the installation's store and DNS peers) and who may scrape them."""
    parallelism: int = 1
    """Workers the preparation is split across."""
    worker_job_names: tuple[str, ...] = ()
    """With parallelism above 1: the Job of each worker, worker 0's first (it is `job_name`: it writes the
    manifest, so it completes last and its Job says whether the dataset is prepared)."""

    @property
    def network_policy_name(self) -> str:
        """The NetworkPolicy fencing the preparation pod (named like its Job)."""
        return self.job_name


def prepare_stage_args(parallelism: int) -> list[list[list[str]]]:
    """What follows `forge-trainer prepare --config FILE` for every process of a preparation, stage by stage
    (each stage starts once the one before has finished): one process without arguments when it is not split."""
    if parallelism == 1:
        return [[[]]]
    return [[["--stage", stage, "--worker", str(w), "--workers", str(parallelism)]
             for w in range(1 if stage in PREPARE_SINGLE_WORKER_STAGES else parallelism)] for stage in PREPARE_STAGES]


def prepare_worker_args(worker: int, parallelism: int) -> list[str]:
    """What follows `forge-trainer prepare --config FILE` for one worker that runs all its stages, waiting for
    the other workers between stages through the store (one pod per worker)."""
    if parallelism == 1:
        return []
    return ["--stage", "all", "--worker", str(worker), "--workers", str(parallelism)]


def plan_dataset(ds: ForgeDataset, settings: OperatorSettings, *, reused_tokenizer_uri: str | None = None,
                 local: bool = False, output: str | None = None) -> DatasetPlan:
    """The preparation workload of `ds`.

    `reused_tokenizer_uri` is the tokenizer URI of the dataset named by spec.tokenizer.datasetRef,
    resolved by the caller (the referenced dataset must be Ready). `local` (the local runner) also
    accepts a local source path; `output` replaces the store prefix the dataset writes under."""
    meta = ds.metadata
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    spec = ds.spec
    if not local and not spec.source.uri.startswith("s3://"):
        raise InvalidSpecError(f"spec.source.uri: {spec.source.uri!r} must be an s3://bucket/prefix URI on "
                               "Kubernetes (local paths work only with `forge run`)")
    tokenizer = spec.tokenizer
    if tokenizer.dataset_ref is not None:
        if reused_tokenizer_uri is None:
            raise InvalidSpecError("spec.tokenizer.datasetRef: the referenced dataset's tokenizer is not resolved")
        tokenizer = TokenizerConfig(uri=reused_tokenizer_uri)
    out = output or output_uri(settings.store_bucket, namespace, KIND, name, uid)
    config = PrepareConfig(
        source=spec.source.uri, output=out, format=spec.format, purpose=spec.purpose,
        text_field=spec.text_field, processing=spec.processing, tokenizer=tokenizer, split=spec.split,
        sharding=spec.sharding, store=settings.store, split_bytes=spec.source.split_bytes,
    )
    secret = spec.source.credentials_secret.name if spec.source.credentials_secret else None
    return DatasetPlan(
        meta=WorkloadMeta(namespace=namespace, owner=OwnerRef.of(ds.model_dump(by_alias=True)),
                          labels=common_labels(KIND, name, "prepare")),
        job_name=child_name(name, "prepare"),
        config_name=child_name(name, "prepare-config"),
        output_uri=out,
        config=config,
        config_hash=config_hash(config),
        image=settings.trainer_image,
        image_pull_policy=settings.image_pull_policy,
        store=StoreAccess.of(settings, secret),
        resources=spec.resources,
        network=spec.network,
        fence=NetworkFence.of(settings),
        parallelism=spec.parallelism,
        worker_job_names=tuple(child_name(name, "prepare" if w == 0 else f"prepare-{w}")
                               for w in range(spec.parallelism)) if spec.parallelism > 1 else (),
    )
