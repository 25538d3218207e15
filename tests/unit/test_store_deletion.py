"""A deletion report in a local directory store: hashed on the spot (no store checksum there), one record
per object over passes, and the summary in the place the one-shot report had."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from forge_operator.api.common import RetentionPolicy
from forge_operator.store.deletion import DeletionJournal, DeletionReport, delete_artifacts
from forge_trainer.store import LocalStore


def test_local_deletion_records_sha256_once_per_object_across_passes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    for i in range(7):
        store.put_bytes(f"forge/ns/forgedataset/d/u/records/r{i}.bin", b"x" * i)
    store.put_bytes("forge/ns/forgedataset/d/u/progress.json", b"{}")
    report = DeletionReport("ForgeDataset", "ns", "d", "u", "Delete", "file:///x")
    first = DeletionJournal(store, "forge/ns/_audit", report)
    first.resume()
    assert not delete_artifacts(store, "forge/ns/forgedataset/d/u", RetentionPolicy.DELETE, first, batch=3,
                                max_batches=1)
    second = DeletionJournal(store, "forge/ns/_audit", report)
    assert second.resume().deleted_objects == 3
    assert delete_artifacts(store, "forge/ns/forgedataset/d/u", RetentionPolicy.DELETE, second, batch=3)
    where = second.finish()
    assert where == (tmp_path / "forge/ns/_audit/forgedataset/d-u.json").as_uri()
    summary = json.loads((tmp_path / "forge/ns/_audit/forgedataset/d-u.json").read_text())
    assert (summary["deletedObjects"], summary["deletedBytes"], len(summary["parts"])) == (8, 23, 3)
    records = [json.loads(line) for part in sorted((tmp_path / "forge/ns/_audit/forgedataset/d-u").iterdir())
               for line in part.read_text().splitlines()]
    assert len({r["key"] for r in records}) == len(records) == 8
    r3 = next(r for r in records if r["key"].endswith("r3.bin"))
    assert r3["sha256"] == "sha256:" + hashlib.sha256(b"xxx").hexdigest()
    assert not list(store.list("forge/ns/forgedataset/d/u/"))
