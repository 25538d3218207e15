"""A run started from an open-weights directory (init.modelUri) records that directory's digest in its
lineage: the trainer writes it into progress.json and the operator mirrors it; a base run's digest, known
from the run it names, is kept as resolved."""

from __future__ import annotations

from datetime import UTC, datetime

from forge_operator.api.training import ForgeTrainingRunStatus, Lineage
from forge_operator.status.job import JobObservation
from forge_operator.status.training import RunObservation, derive_run_status
from forge_trainer.config import TrainProgress

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32
RESOLVED = Lineage(dataset_digest="sha256:" + "01" * 32, trainer_image="forge-trainer:1")


def reconcile(prev: ForgeTrainingRunStatus, progress: TrainProgress | None,
              lineage: Lineage = RESOLVED) -> ForgeTrainingRunStatus:
    obs = RunObservation(1, job_name="r-train-0", output_uri="s3://b/r", job=JobObservation(active=2),
                         progress=progress, lineage=lineage)
    return derive_run_status(prev, obs, NOW)[0]


def test_the_trainer_digest_of_an_init_model_uri_reaches_the_lineage_and_stays() -> None:
    first = reconcile(ForgeTrainingRunStatus(), TrainProgress(step=0))
    assert first.lineage is not None and first.lineage.base_model_digest is None  # not computed yet
    seen = reconcile(first, TrainProgress(step=1, base_model_digest=DIGEST))
    assert seen.lineage == RESOLVED.model_copy(update={"base_model_digest": DIGEST})
    unread = reconcile(seen, None)  # the store did not answer this time: the digest is not forgotten
    assert unread.lineage is not None and unread.lineage.base_model_digest == DIGEST


def test_a_base_run_digest_resolved_by_the_operator_is_kept() -> None:
    resolved = RESOLVED.model_copy(update={"base_model_digest": "sha256:" + "cd" * 32})
    status = reconcile(ForgeTrainingRunStatus(), TrainProgress(step=1, base_model_digest=DIGEST), resolved)
    assert status.lineage == resolved
