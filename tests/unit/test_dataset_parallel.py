"""A ForgeDataset split across workers: the processes `forge run` starts, the Jobs the operator applies,
and the one Job observation the status is derived from."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from forge_operator.api import ForgeDataset
from forge_operator.plan.dataset import plan_dataset, prepare_stage_args
from forge_operator.render.dataset import render_dataset
from forge_operator.settings import OperatorSettings
from forge_operator.status.job import JobObservation, merge_worker_jobs

SETTINGS = OperatorSettings(store_endpoint="minio.storage:9000", store_bucket="acme-forge",
                            trainer_image="registry.acme/forge-trainer:1.0")


def _dataset(**spec: Any) -> ForgeDataset:
    return ForgeDataset.model_validate({"apiVersion": "forge.ai/v1alpha1", "kind": "ForgeDataset",
                                        "metadata": {"name": "corpus", "namespace": "ml", "uid": "u1"},
                                        "spec": {"source": {"uri": "s3://raw/corpus/"}, **spec}})


def test_forge_run_runs_each_stage_with_every_worker_then_the_next() -> None:
    assert prepare_stage_args(1) == [[[]]]  # unsplit: today's one process
    stages = prepare_stage_args(3)
    assert [[a[1] for a in stage] for stage in stages] == [
        ["scan"] * 3, ["dedup"] * 3, ["tokenizer"], ["pack"] * 3, ["manifest"]]
    assert stages[0][2] == ["--stage", "scan", "--worker", "2", "--workers", "3"]


def test_one_job_per_worker_worker_0_named_like_an_unsplit_job() -> None:
    plan = plan_dataset(_dataset(parallelism=3), SETTINGS)
    objects = render_dataset(plan)
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == ["corpus-prepare", "corpus-prepare-1", "corpus-prepare-2"]
    for worker, job in enumerate(jobs):
        command = job["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[-6:] == ["--stage", "all", "--worker", str(worker), "--workers", "3"]
    [policy] = [o for o in objects if o["kind"] == "NetworkPolicy"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert all(selector.items() <= j["spec"]["template"]["metadata"]["labels"].items() for j in jobs)
    assert len([o for o in objects if o["kind"] == "ConfigMap"]) == 1
    single = [o for o in render_dataset(plan_dataset(_dataset(), SETTINGS)) if o["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in single] == ["corpus-prepare"]
    assert "--stage" not in single[0]["spec"]["template"]["spec"]["containers"][0]["command"]


@pytest.mark.parametrize("value", [0, 257, "two"])
def test_parallelism_out_of_range_names_the_field(value: Any) -> None:
    with pytest.raises(ValidationError, match="parallelism"):
        _dataset(parallelism=value)


def test_a_failed_worker_job_fails_the_preparation() -> None:
    running = JobObservation(active=1)
    merged = merge_worker_jobs(running, [("corpus-prepare-1", JobObservation(active=1)),
                                         ("corpus-prepare-2", JobObservation(failed=3, failed_final=True,
                                                                             message="BackoffLimitExceeded"))])
    assert merged is not None and merged.failed_final
    assert merged.message == "worker Job corpus-prepare-2 failed: BackoffLimitExceeded"
    assert merged.active == 2
    ok = merge_worker_jobs(JobObservation(succeeded=1, complete=True),
                           [("corpus-prepare-1", JobObservation(succeeded=1, complete=True))])
    assert ok is not None and ok.complete and not ok.failed_final
    assert merge_worker_jobs(None, [("corpus-prepare-1", None)]) is None
