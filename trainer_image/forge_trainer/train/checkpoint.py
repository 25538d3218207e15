"""Checkpoints with torch.distributed.checkpoint (DCP) in the object store.

    <output>/checkpoints/step-00000100/__0_0.distcp ...   model + optimizer + RNG, sharded per rank
    <output>/checkpoints/step-00000100/.metadata
    <output>/checkpoints/step-00000100/checkpoint.json    written last: trainer state + file digests

Every rank saves its shards to a local staging directory and uploads them; rank 0 writes
checkpoint.json only after every rank's upload, so a directory without it is incomplete and ignored.
DCP reshards on load, so a checkpoint written by N workers resumes on M.
"""

from __future__ import annotations

import hashlib
import logging
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from forge_trainer.config import CheckpointInfo
from forge_trainer.config.store import CHECKPOINTS_DIR
from forge_trainer.errors import WorkloadError
from forge_trainer.store import ObjectStore, StoreError, join_key, read_json, sha256_file, write_json_atomic
from forge_trainer.train.progress import ProgressReporter
from forge_trainer.train.runtime import Runtime, barrier, broadcast_object, gather_objects
from forge_trainer.train.step_engine import NonFiniteLossError, all_params_finite

log = logging.getLogger(__name__)


def _save(state: dict[str, Any], path: Path) -> None:
    with warnings.catch_warnings():  # DCP warns without a process group; a single process means it
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp_save(state, checkpoint_id=path)


def _load(state: dict[str, Any], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp_load(state, checkpoint_id=path)


MARKER_NAME = "checkpoint.json"
_STEP_DIR = re.compile(r"step-(\d{8})$")


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint found in the store."""

    step: int
    """Optimizer steps done when it was written."""
    key: str
    """Its directory key in the store."""
    marker: dict[str, Any]
    """Its checkpoint.json."""

    @property
    def state(self) -> dict[str, Any]:
        """The trainer state saved with it (step, tokens seen, data position, ...)."""
        return dict(self.marker.get("state", {}))


def checkpoint_key(prefix: str, step: int) -> str:
    """Directory key of the checkpoint of `step`."""
    return join_key(prefix, CHECKPOINTS_DIR, f"step-{step:08d}")


def _app_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    rng: dict[str, torch.Tensor] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return {"model": model_sd, "optim": optim_sd, "rng": rng}


def save_checkpoint(store: ObjectStore, prefix: str, step: int, model: nn.Module,
                    optimizer: torch.optim.Optimizer, state: dict[str, Any], runtime: Runtime) -> CheckpointInfo:
    """Write the checkpoint of `step` (a collective: every rank calls it); return what rank 0 recorded."""
    key = checkpoint_key(prefix, step)
    with tempfile.TemporaryDirectory(prefix="forge-ckpt-") as tmp:
        staging = Path(tmp)
        _save(_app_state(model, optimizer), staging)
        files = {}
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            name = path.relative_to(staging).as_posix()
            store.put_file(join_key(key, name), path)
            files[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    everyone = gather_objects(runtime, files)
    barrier(runtime)
    all_files = {name: info for per_rank in everyone for name, info in per_rank.items()}
    lines = "".join(f"{n} {all_files[n]['sha256']}\n" for n in sorted(all_files))
    digest = "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    if runtime.is_main:
        write_json_atomic(store, join_key(key, MARKER_NAME),
                          {"step": step, "state": state, "files": all_files, "digest": digest})
    barrier(runtime)
    return CheckpointInfo(step=step, uri=store.uri(key), digest=digest)


def list_checkpoints(store: ObjectStore, prefix: str) -> list[Checkpoint]:
    """Complete checkpoints (marker present, every listed file there with its size), oldest first."""
    base = join_key(prefix, CHECKPOINTS_DIR)
    sizes = {o.key: o.size for o in store.list(base + "/")}
    found = []
    for key in sizes:
        if not key.endswith("/" + MARKER_NAME):
            continue
        directory = key[: -len(MARKER_NAME) - 1]
        match = _STEP_DIR.search(directory)
        if match is None:
            continue
        try:
            marker = read_json(store, key)
        except StoreError as exc:
            log.warning("ignoring checkpoint %s: %s", store.uri(directory), exc)
            continue
        files = marker.get("files", {})
        if all(sizes.get(join_key(directory, n)) == f["bytes"] for n, f in files.items()):
            found.append(Checkpoint(step=int(match.group(1)), key=directory, marker=marker))
        else:
            log.warning("ignoring checkpoint %s: files missing or truncated", store.uri(directory))
    return sorted(found, key=lambda c: c.step)


def load_checkpoint(store: ObjectStore, checkpoint: Checkpoint, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None) -> None:
    """Restore model, optimizer and RNG state from `checkpoint` (a collective), verifying file digests."""
    files = checkpoint.marker["files"]
    with tempfile.TemporaryDirectory(prefix="forge-ckpt-") as tmp:
        staging = Path(tmp)
        for name, info in files.items():
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(join_key(checkpoint.key, name), dest)
            if sha256_file(dest) != info["sha256"]:
                raise StoreError(f"{store.uri(join_key(checkpoint.key, name))}: sha256 differs from "
                                 f"{MARKER_NAME}; the checkpoint is corrupt")
        if optimizer is None:
            model_sd, _ = get_state_dict(model, [])
            state: dict[str, Any] = {"model": model_sd}
            _load(state, staging)
            set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
            return
        state = _app_state(model, optimizer)
        # A checkpoint written without CUDA has no CUDA RNG state (and one written with it is read on a
        # CPU-only node too): load only the RNG states it holds, so checkpoints move between devices.
        saved = FileSystemReader(staging).read_metadata().state_dict_metadata
        state["rng"] = {name: t for name, t in state["rng"].items() if f"rng.{name}" in saved}
        _load(state, staging)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if "cpu" in state["rng"]:
        torch.set_rng_state(state["rng"]["cpu"])
    if "cuda" in state["rng"]:
        torch.cuda.set_rng_state(state["rng"]["cuda"])


def find_resume_point(store: ObjectStore, prefix: str, runtime: Runtime) -> Checkpoint | None:
    """The newest complete checkpoint under `prefix`, as rank 0 sees it (so every rank agrees)."""
    newest = None
    if runtime.is_main:
        complete = list_checkpoints(store, prefix)
        newest = complete[-1] if complete else None
    result: Checkpoint | None = broadcast_object(runtime, newest)
    return result


def prune_checkpoints(store: ObjectStore, prefix: str, keep: int) -> list[CheckpointInfo]:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than the
    newest complete one (markers first, so a half-deleted checkpoint is never taken as complete).
    Return the kept ones, oldest first."""
    complete = list_checkpoints(store, prefix)
    kept, dropped = complete[-keep:], complete[:-keep]
    newest = kept[-1].step if kept else -1
    doomed = {c.key for c in dropped}
    base = join_key(prefix, CHECKPOINTS_DIR)
    keys = [o.key for o in store.list(base + "/")]
    for key in keys:
        match = _STEP_DIR.search(key.rsplit("/", 1)[0])
        if match and int(match.group(1)) < newest and key.rsplit("/", 1)[0] not in {c.key for c in kept}:
            doomed.add(key.rsplit("/", 1)[0])
    for directory in sorted(doomed):
        store.delete(join_key(directory, MARKER_NAME))
    for key in keys:
        if key.rsplit("/", 1)[0] in doomed:
            store.delete(key)
    return [CheckpointInfo(step=c.step, uri=store.uri(c.key), digest=c.marker.get("digest")) for c in kept]


def checkpoint_and_prune(store: ObjectStore, prefix: str, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: dict[str, Any], runtime: Runtime, keep: int, reporter: ProgressReporter) -> None:
    """What every training loop does at a checkpoint step: refuse to save non-finite weights, save
    (collective), then on rank 0 keep the newest `keep` checkpoints and report them."""
    if not all_params_finite(model, runtime):
        raise NonFiniteLossError(f"parameters became NaN/inf by step {step}; not writing a poisoned checkpoint")
    info = save_checkpoint(store, prefix, step, model, optimizer, state, runtime)
    if runtime.is_main:
        kept = prune_checkpoints(store, prefix, keep)
        reporter.update(force=True, checkpoints=[c if c.step != step else info for c in kept])


def resume_latest(store: ObjectStore, prefix: str, runtime: Runtime, model: nn.Module,
                  optimizer: torch.optim.Optimizer) -> tuple[Checkpoint | None, int, int]:
    """Load the newest complete checkpoint under `prefix`, if any: (its resume point or None, the step to
    start from, tokens seen). A checkpoint that cannot be read fails the run naming its URI."""
    resume = find_resume_point(store, prefix, runtime)
    if resume is None:
        return None, 0, 0
    try:
        load_checkpoint(store, resume, model, optimizer)
    except StoreError as exc:
        raise WorkloadError(f"cannot resume from {store.uri(resume.key)}: {exc}") from exc
    log.info("resumed from %s at step %d", store.uri(resume.key), resume.step)
    return resume, resume.step, int(resume.state.get("tokens_seen", 0))
