"""Reading workload progress and removing a resource's artifacts as its retention policy says."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from forge_operator.api.common import RetentionPolicy, now_rfc3339
from forge_trainer.config import StoreConfig
from forge_trainer.store import ObjectStore, StoreError, join_key, open_uri, write_json_atomic

PROGRESS = "progress.json"
M = TypeVar("M", bound=BaseModel)

# What "final output" means per kind, for the KeepFinal policy (paths relative to the prefix).
FINAL_PREFIXES = ("model/", "manifest.json", "tokenizer.json", "shards/", "records/", "eval.json")


def read_progress(output_uri: str, store_config: StoreConfig, model: type[M]) -> M | None:
    """The workload's progress.json under `output_uri`, or None if it has not written one yet.
    A file that does not parse is reported as StoreError naming the URI."""
    store, prefix = open_uri(output_uri, store_config)
    key = join_key(prefix, PROGRESS)
    if not store.exists(key):
        return None
    raw = store.get_bytes(key)
    try:
        return model.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise StoreError(f"{store.uri(key)}: unreadable progress file: {exc}") from exc


@dataclass
class DeletionReport:
    """What deleting a resource removed from (and left in) the object store."""

    kind: str
    namespace: str
    name: str
    uid: str
    policy: str
    output_uri: str
    deleted: list[dict[str, Any]] = field(default_factory=list)
    kept: list[dict[str, Any]] = field(default_factory=list)
    time: str = field(default_factory=now_rfc3339)

    @property
    def deleted_bytes(self) -> int:
        """Bytes removed."""
        return sum(int(o["size"]) for o in self.deleted)

    def to_dict(self) -> dict[str, Any]:
        """JSON form written to the audit log."""
        return {"event": "deleted", "kind": self.kind, "namespace": self.namespace, "name": self.name,
                "uid": self.uid, "policy": self.policy, "outputUri": self.output_uri, "time": self.time,
                "deletedObjects": len(self.deleted), "deletedBytes": self.deleted_bytes,
                "keptObjects": len(self.kept), "deleted": self.deleted, "kept": self.kept}


def delete_artifacts(store: ObjectStore, prefix: str, policy: RetentionPolicy,
                     report: DeletionReport) -> DeletionReport:
    """Remove what `policy` says from `prefix`, recording each object (key, size, sha256)."""
    for obj in list(store.list(prefix.rstrip("/") + "/")):
        rel = obj.key[len(prefix.rstrip("/")) + 1:]
        keep = policy is RetentionPolicy.RETAIN or (
            policy is RetentionPolicy.KEEP_FINAL and rel.startswith(FINAL_PREFIXES))
        entry: dict[str, Any] = {"uri": store.uri(obj.key), "size": obj.size}
        if keep:
            report.kept.append(entry)
            continue
        # digest recorded before deletion so the report proves what was removed
        digest = hashlib.sha256()
        with store.open_read(obj.key) as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        entry["sha256"] = "sha256:" + digest.hexdigest()
        store.delete(obj.key)
        report.deleted.append(entry)
    return report


def write_deletion_report(audit_prefix_uri: str, store_config: StoreConfig, report: DeletionReport) -> str:
    """Write the report as its own object (one per deletion, so concurrent deletions never race);
    returns its URI."""
    store, prefix = open_uri(audit_prefix_uri, store_config)
    key = join_key(prefix, report.kind.lower(), f"{report.name}-{report.uid}.json")
    write_json_atomic(store, key, report.to_dict())
    return store.uri(key)
