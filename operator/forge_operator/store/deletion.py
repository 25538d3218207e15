"""Removing a resource's artifacts as its retention policy says, with an append-only deletion report.

The report lives under the namespace's audit prefix, outside the prefix being deleted:

    <kind>/<name>-<uid>/part-000001.jsonl   one per batch, written *before* the batch is deleted
    <kind>/<name>-<uid>.json                the summary, written last (or the abandonment record)

Each part line is one object: its URI, size, whether it was deleted or kept, and its checksum. A part is
never rewritten, so a restart mid-way loses nothing: the next pass reads the parts, records only objects
not recorded yet, and deletes whatever recorded object is still there. The checksum is the one the store
gives in its listing (S3 ETag), so no object is downloaded to be deleted; a local directory store has no
such checksum and its files are hashed on the spot (local disk, no network)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from minio.deleteobjects import DeleteObject

from forge_operator.api.common import RetentionPolicy, now_rfc3339
from forge_operator.plan.naming import output_uri
from forge_trainer.store import ObjectInfo, ObjectStore, S3Store, StoreError, join_key, write_json_atomic

BATCH = 1000
"""Objects per batch: what one S3 DeleteObjects request takes."""

# What "final output" means per kind, for the KeepFinal policy (paths relative to the prefix).
FINAL_PREFIXES = ("model/", "manifest.json", "tokenizer.json", "shards/", "records/", "eval.json")


@dataclass
class DeletionReport:
    """What deleting a resource removed from (and left in) the object store, over every pass."""

    kind: str
    namespace: str
    name: str
    uid: str
    policy: str
    output_uri: str
    deleted_objects: int = 0
    deleted_bytes: int = 0
    kept_objects: int = 0
    kept_bytes: int = 0
    parts: list[str] = field(default_factory=list)
    time: str = field(default_factory=now_rfc3339)

    @classmethod
    def of(cls, body: dict[str, Any], kind: str, default_policy: str, bucket: str) -> DeletionReport:
        """The (empty) report of deleting the resource `body` of `kind`: its prefix in `bucket` and the retention
        its spec.retention.onDelete asks for (`default_policy` when unset)."""
        meta = body["metadata"]
        policy = RetentionPolicy(((body.get("spec") or {}).get("retention") or {}).get("onDelete", default_policy))
        return cls(kind=kind, namespace=meta["namespace"], name=meta["name"], uid=meta["uid"], policy=policy.value,
                   output_uri=output_uri(bucket, meta["namespace"], kind, meta["name"], meta["uid"]))

    def to_dict(self, event: str = "deleted", **extra: Any) -> dict[str, Any]:
        """JSON form of the summary written to the audit log (`extra`: e.g. an abandonment's reason)."""
        return {"event": event, "kind": self.kind, "namespace": self.namespace, "name": self.name,
                "uid": self.uid, "policy": self.policy, "outputUri": self.output_uri, "time": self.time,
                "deletedObjects": self.deleted_objects, "deletedBytes": self.deleted_bytes,
                "keptObjects": self.kept_objects, "keptBytes": self.kept_bytes, "parts": self.parts, **extra}

    def count(self, entry: dict[str, Any]) -> None:
        """Add one recorded object to the totals."""
        if entry["action"] == "deleted":
            self.deleted_objects += 1
            self.deleted_bytes += int(entry["size"])
        else:
            self.kept_objects += 1
            self.kept_bytes += int(entry["size"])


class DeletionJournal:
    """The audit records of one resource's deletion in `store` under `audit_key` (the namespace's audit
    prefix): the parts written so far, the next one, the summary."""

    def __init__(self, store: ObjectStore, audit_key: str, report: DeletionReport) -> None:
        """Open the journal of `report`'s resource; nothing is read until `resume`."""
        self.store = store
        self.report = report
        self.base = join_key(audit_key, report.kind.lower(), f"{report.name}-{report.uid}")
        self.recorded: dict[str, dict[str, Any]] = {}

    @property
    def summary_key(self) -> str:
        """Key of the summary (the same place the one-shot report of earlier versions had)."""
        return self.base + ".json"

    def resume(self) -> DeletionReport:
        """Read the parts an earlier pass wrote (after a restart, an error, a slice) into the totals."""
        self.recorded.clear()
        report = self.report
        report.deleted_objects = report.deleted_bytes = report.kept_objects = report.kept_bytes = 0
        report.parts = []
        for info in sorted(self.store.list(self.base + "/"), key=lambda o: o.key):
            report.parts.append(self.store.uri(info.key))
            for line in self.store.get_bytes(info.key).splitlines():
                try:
                    entry = json.loads(line)
                    key = str(entry["key"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise StoreError(f"{self.store.uri(info.key)}: unreadable deletion record: {exc}") from exc
                if key not in self.recorded:
                    self.recorded[key] = entry
                    report.count(entry)
        return report

    def append(self, entries: list[dict[str, Any]]) -> None:
        """Write `entries` as the next part (one atomic put; parts are never rewritten)."""
        if not entries:
            return
        key = join_key(self.base, f"part-{len(self.report.parts) + 1:06d}.jsonl")
        data = b"".join(json.dumps(e, sort_keys=True).encode() + b"\n" for e in entries)
        self.store.put_bytes(key, data, content_type="application/x-ndjson")
        self.report.parts.append(self.store.uri(key))
        for entry in entries:
            self.recorded[entry["key"]] = entry
            self.report.count(entry)

    def finish(self, event: str = "deleted", **extra: Any) -> str:
        """Write the summary (`event` deleted, or abandoned with its reason); returns its URI."""
        self.report.time = now_rfc3339()
        write_json_atomic(self.store, self.summary_key, self.report.to_dict(event, **extra))
        return self.store.uri(self.summary_key)


def delete_artifacts(store: ObjectStore, prefix: str, policy: RetentionPolicy, journal: DeletionJournal, *,
                     batch: int = BATCH, max_batches: int | None = None) -> bool:
    """Remove what `policy` says from `prefix`, recording each object in `journal` before it is deleted.
    Stops after `max_batches` batches (a finalizer call stays short); returns whether the prefix is done."""
    base = prefix.rstrip("/") + "/"
    pending: list[ObjectInfo] = []
    fresh: list[dict[str, Any]] = []
    batches = 0
    for obj in store.list(base):
        rel = obj.key[len(base):]
        keep = policy is RetentionPolicy.RETAIN or (
            policy is RetentionPolicy.KEEP_FINAL and rel.startswith(FINAL_PREFIXES))
        if obj.key not in journal.recorded:
            fresh.append(_entry(store, obj, "kept" if keep else "deleted"))
        if not keep:
            pending.append(obj)
        if len(pending) >= batch or len(fresh) >= batch:
            _flush(store, journal, fresh, pending)
            batches += 1
            if max_batches is not None and batches >= max_batches:
                return False
    _flush(store, journal, fresh, pending)
    return True


def _flush(store: ObjectStore, journal: DeletionJournal, fresh: list[dict[str, Any]],
           pending: list[ObjectInfo]) -> None:
    """Record, then delete (a crash in between leaves a record of objects still there: the next pass
    deletes them without recording them twice)."""
    journal.append(fresh)
    delete_objects(store, [o.key for o in pending])
    fresh.clear()
    pending.clear()


def _entry(store: ObjectStore, obj: ObjectInfo, action: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": obj.key, "uri": store.uri(obj.key), "size": obj.size, "action": action}
    if obj.etag:
        entry["etag"] = obj.etag
    elif action == "deleted" and not isinstance(store, S3Store):
        entry["sha256"] = _sha256(store, obj.key)
    return entry


def _sha256(store: ObjectStore, key: str) -> str:
    digest = hashlib.sha256()
    with store.open_read(key) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def delete_objects(store: ObjectStore, keys: list[str]) -> None:
    """Delete `keys`: one DeleteObjects request per 1000 on S3, one by one in a local directory."""
    if not keys:
        return
    if not isinstance(store, S3Store):
        for key in keys:
            store.delete(key)
        return
    try:
        errors = list(store.client.remove_objects(store.bucket, [DeleteObject(k) for k in keys]))
    except Exception as exc:  # the client's errors carry no common base; the message names the store
        raise StoreError(f"{store.uri(keys[0])} (+{len(keys) - 1} more): {type(exc).__name__}: {exc}") from exc
    if errors:
        first = errors[0]
        raise StoreError(f"{store.uri(first.name or keys[0])}: could not delete {len(errors)} objects: "
                         f"{first.code}: {first.message}")

