"""The references every kind resolves: a Ready dataset, a Succeeded run, the model a chain of runs
trains, and store URIs that must stay inside the resource's namespace."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from forge_operator.api import DATASET, TRAINING_RUN
from forge_operator.api.dataset import DatasetPhase
from forge_operator.api.training import RunPhase
from forge_operator.plan.workload import InvalidSpecError
from forge_operator.resolve.lookup import Lookup, spec_of, status_of
from forge_operator.status.conditions import Waiting
from forge_trainer.config import ModelConfig
from forge_trainer.store import StoreError, split_uri

FORGE_PREFIX = "forge"
"""The first segment of every key Forge writes in its bucket: `forge/<namespace>/<kind>/<name>/<uid>/...`."""
MAX_CHAIN = 16
"""How many baseRun links model_of_chain follows (a chain longer than this is not a training recipe)."""


def ready_dataset(lookup: Lookup, name: str, field: str, condition: str, needs: str) -> dict[str, Any] | Waiting:
    """The status of a Ready ForgeDataset that has `needs` (e.g. manifestUri), or what we wait for."""
    body = lookup.get(DATASET.kind, name)
    status = status_of(body)
    if body is None:
        return Waiting(condition, f"waiting for ForgeDataset {name} ({field}): it does not exist yet")
    if status.get("phase") != DatasetPhase.READY or not status.get(needs):
        return Waiting(condition, f"waiting for ForgeDataset {name} ({field}) to be Ready "
                                  f"(phase {status.get('phase') or DatasetPhase.PENDING})")
    return status


def succeeded_run(lookup: Lookup, name: str, field: str, condition: str) -> dict[str, Any] | Waiting:
    """The body of a Succeeded ForgeTrainingRun with a final model, or what we wait for."""
    body = lookup.get(TRAINING_RUN.kind, name)
    status = status_of(body)
    if body is None:
        return Waiting(condition, f"waiting for ForgeTrainingRun {name} ({field}): it does not exist yet")
    if status.get("phase") != RunPhase.SUCCEEDED or not status.get("finalModelUri"):
        return Waiting(condition, f"waiting for ForgeTrainingRun {name} ({field}) to succeed "
                                  f"(phase {status.get('phase') or RunPhase.PENDING})")
    return body


def model_of_chain(lookup: Lookup, run: dict[str, Any]) -> ModelConfig | None:
    """The architecture a run trains: its own spec.model, else that of the run it starts from (followed
    up to MAX_CHAIN links; a broken or cyclic chain gives None)."""
    body: dict[str, Any] | None = run
    for _ in range(MAX_CHAIN):
        spec = spec_of(body)
        if spec.get("model"):
            return ModelConfig.model_validate(spec["model"])
        base = (spec.get("init") or {}).get("baseRun")
        body = lookup.get(TRAINING_RUN.kind, base) if base else None
        if body is None:
            return None
    return None


def check_namespace(uri: str | None, field: str, bucket: str, namespace: str, what: str) -> None:
    """Refuse (InvalidSpecError) a store URI in Forge's bucket outside this namespace's prefix
    (`forge/<namespace>/`): `what` may only use artifacts of its own namespace. The URI is parsed by the
    store's own `split_uri` (so `S3://` and `s3://bucket//forge/...` mean what the store makes of them) and
    keys are compared segment by segment; empty, `.` and `..` segments are refused outright."""
    if not uri:
        return
    try:
        scheme, root, key = split_uri(uri)
    except StoreError as exc:
        raise InvalidSpecError(f"{field}: {exc}") from None
    if scheme != "s3" or root.lower() != bucket.lower():
        return
    segments = key.rstrip("/").split("/")
    if any(s in ("", ".", "..") for s in segments) or "//" in urlparse(uri).path:
        raise InvalidSpecError(f"{field}: {uri!r} has an empty, '.' or '..' path segment; write the key plainly "
                               f"(s3://{bucket}/forge/{namespace}/...)")
    if segments[0] != FORGE_PREFIX or len(segments) < 2 or segments[1] != namespace:
        owner = segments[1] if segments[0] == FORGE_PREFIX and len(segments) > 1 else None
        where = f"refers to namespace {owner}" if owner else f"is outside the namespace prefix {FORGE_PREFIX}/{namespace}/"
        raise InvalidSpecError(f"{field}: {where}; {what} ({namespace})")
