"""The dataset's progress.json of a split preparation, merged from every worker's commits and live progress."""

from __future__ import annotations

from typing import Any

from forge_trainer.config import DatasetCounts, DatasetProgress
from forge_trainer.data.progress_merge import WorkerSeen, manifest_started, merge_progress, worker_stages
from forge_trainer.data.stages import _merged_counts

NOW = "2026-12-01T00:00:00Z"


def _scan(read: int, size: int, dropped: dict[str, int] | None = None) -> dict[str, Any]:
    return {"read": read, "bytes": size, "dropped": dropped or {}, "examples": {}}


def _pack(kept: int) -> dict[str, Any]:
    return {"kept": kept, "dropped": {}, "examples": {}, "redactions": {}, "tokens": [0, 0]}


def _live(read: int, done: int, total: int | None, error: str | None = None) -> DatasetProgress:
    return DatasetProgress(stage="scan", bytes_done=done, bytes_total=total, error=error,
                           counts=DatasetCounts(documents_read=read))


def test_a_scan_under_way_shows_every_workers_live_reads_summed() -> None:
    seen = [WorkerSeen(0, {"scan": _scan(100, 4000, {"too_short": 3})}),
            WorkerSeen(1, {}, "scan", _live(40, 1500, 5000)),
            WorkerSeen(2, {}, "scan", _live(0, 0, None))]
    progress = merge_progress(3, seen, _merged_counts, NOW)
    assert progress.stage == "scan 1/5 (1/3 workers)"
    assert progress.documents_done == progress.counts.documents_read == 140
    assert progress.counts.dropped == {"too_short": 3}  # drops count once committed
    assert progress.bytes_done == 5500
    assert progress.bytes_total is None  # worker 2 has not listed its part yet
    assert [(w.worker, w.stage, w.committed, w.documents_read, w.bytes_done, w.bytes_total)
            for w in progress.workers] == [(0, "scan", True, 100, 4000, 4000), (1, "scan", False, 40, 1500, 5000),
                                           (2, "scan", False, 0, 0, None)]
    assert progress.error is None
    wire = progress.to_wire()
    assert wire["workers"][1] == {"worker": 1, "stage": "scan", "committed": False, "documentsRead": 40,
                                  "bytesDone": 1500, "bytesTotal": 5000}
    assert DatasetProgress.model_validate(wire) == progress


def test_a_worker_between_stages_shows_what_it_committed_and_totals_are_summed() -> None:
    seen = [WorkerSeen(0, {"scan": _scan(10, 100), "dedup": {}}, "tokenizer", DatasetProgress(stage="tokenizer")),
            WorkerSeen(1, {"scan": _scan(20, 300), "dedup": {}})]
    progress = merge_progress(2, seen, _merged_counts, NOW)
    assert progress.stage == "tokenizer 3/5 (0/1 workers)"
    assert (progress.bytes_done, progress.bytes_total, progress.documents_done) == (400, 400, 30)
    assert [(w.stage, w.committed) for w in progress.workers] == [("tokenizer", False), ("dedup", True)]


def test_a_worker_not_started_is_starting_and_commits_never_go_back() -> None:
    seen = [WorkerSeen(0, {"scan": _scan(10, 100)}), WorkerSeen(1)]
    progress = merge_progress(2, seen, _merged_counts, NOW)
    assert progress.workers[1].stage == "starting" and progress.counts.documents_read == 10
    # a retried worker's live file starts from zero again: the committed reads of the others stay
    seen = [WorkerSeen(0, {"scan": _scan(10, 100)}), WorkerSeen(1, {}, "scan", _live(0, 0, 50))]
    assert merge_progress(2, seen, _merged_counts, NOW).counts.documents_read == 10


def test_a_failed_worker_fails_the_merged_progress_and_names_itself() -> None:
    seen = [WorkerSeen(0, {"scan": _scan(10, 100)}, "dedup", DatasetProgress(stage="dedup")),
            WorkerSeen(1, {}, "scan", _live(5, 50, 90, error="scan worker 1: reading source s3://raw/ failed"))]
    progress = merge_progress(2, seen, _merged_counts, NOW)
    assert progress.stage == "failed"
    assert progress.error == "scan worker 1: reading source s3://raw/ failed"
    assert progress.workers[1].error == progress.error and progress.workers[0].error is None


def test_packs_committed_leave_the_file_to_the_manifest_stage() -> None:
    assert worker_stages(0) == ["scan", "dedup", "tokenizer", "pack"]
    assert worker_stages(3) == ["scan", "dedup", "pack"]
    packs = [WorkerSeen(w, {"scan": _scan(1, 1), "dedup": {}, "pack": _pack(1)}) for w in range(2)]
    assert manifest_started(2, packs)
    assert not manifest_started(2, [packs[0], WorkerSeen(1, {"scan": _scan(1, 1), "dedup": {}})])
    assert merge_progress(2, packs, _merged_counts, NOW).counts.documents_kept == 2
