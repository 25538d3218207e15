"""`wrap_model` + DCP checkpoints (train/checkpoint.py) on the device, and a checkpoint written on the
device resuming on the CPU and back (a 4-layer model of width 512; tiny in a dry run; fp32, so both
sides compute alike; short rows, so the CPU's step is quick):

1. a step on the device, `save_checkpoint`; a fresh model loads it: the same weights, the same next step;
2. a CPU worker (a process of its own, FSDP2 over gloo, no GPU visible) resumes from it, takes the
   next step (its loss matches the device's) and writes the following checkpoint;
3. back on the device, a fresh model loads that one: the CPU worker's weights, and a finite step.

Each check is recorded with `passed`; a failed load is recorded as the check's error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import torch
from benchmarks.gpu_check.measure import model_args, world_of_one
from benchmarks.gpu_check.part import Context, write_json
from benchmarks.gpu_check.plan import Sizes, sizes_for
from benchmarks.train_steps import Batch, random_batches
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from forge_trainer.config import Hyperparameters
from forge_trainer.model import ModelArgs
from forge_trainer.store import LocalStore
from forge_trainer.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from forge_trainer.train.parallel import build_model, wrap_model
from forge_trainer.train.runtime import Runtime
from forge_trainer.train.step_engine import StepEngine

PREFIX = "gpu-check"
CHECKPOINT_VOCAB = 4096
"""A small vocabulary keeps the checkpoints small: what is checked is the round trip, not its size."""
CPU_STEP_SEQ = 256
"""Tokens per row of the checkpoint part's steps (one row per step)."""
LOSS_TOLERANCE = 1e-3
"""Relative difference allowed between the device's and the CPU's fp32 loss of the same step."""


def batches(s: Sizes, vocab: int, device: torch.device) -> list[Batch]:
    """Batch A (first step) and batch B (the step after the checkpoint), the same on every device."""
    return random_batches(2, 1, min(s.seq, CPU_STEP_SEQ), vocab, device, seed=5)


def new_engine(args: ModelArgs, runtime: Runtime, seed: int) -> StepEngine:
    """A freshly initialised, sharded model and its step engine (fp32)."""
    torch.manual_seed(seed)
    model = wrap_model(build_model(args), runtime)
    hp = Hyperparameters(max_steps=10, warmup_steps=1, micro_batch_size=1, global_batch_size=1)
    return StepEngine(model, hp, runtime, bf16=False)


def full_state(model: nn.Module) -> dict[str, Tensor]:
    """Every weight, unsharded, on the CPU."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return cast(dict[str, Tensor], get_model_state_dict(model, options=options))


def max_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    if a.keys() != b.keys():
        raise ValueError(f"different weights: {sorted(a.keys() ^ b.keys())[:3]}")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def checksum(model: nn.Module) -> float:
    """Sum of every weight and of its square (float64): equal weights, equal sums."""
    return float(sum(t.double().sum() + t.double().square().sum() for t in full_state(model).values()))


def save(store: LocalStore, step: int, engine: StepEngine, runtime: Runtime) -> dict[str, Any]:
    """Write checkpoint `step`; its time and size."""
    began = time.perf_counter()
    info = save_checkpoint(store, PREFIX, step, engine.model, engine.optimizer, {"step": step}, runtime)
    seconds = time.perf_counter() - began
    size = sum(p.stat().st_size for p in (store.root / PREFIX).rglob(f"step-{step:08d}/*") if p.is_file())
    return {"seconds": round(seconds, 3), "mib": round(size / (1 << 20), 1), "digest": (info.digest or "")[:19]}


def load(store: LocalStore, step: int, engine: StepEngine) -> float:
    """Load checkpoint `step` into `engine`'s model and optimizer; the seconds it took."""
    found = {c.step: c for c in list_checkpoints(store, PREFIX)}
    if step not in found:
        raise RuntimeError(f"checkpoint {step} not found (complete ones: {sorted(found)})")
    began = time.perf_counter()
    load_checkpoint(store, found[step], engine.model, engine.optimizer)
    return round(time.perf_counter() - began, 3)


def close(a: float, b: float, rel: float) -> bool:
    """|a - b| within `rel` of the larger magnitude (at least 1)."""
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(1.0, abs(a), abs(b))


def run(ctx: Context) -> None:
    """The three round trips."""
    s, device = ctx.sizes, ctx.device
    args = model_args(s.checkpoint_model, min(s.vocab, CHECKPOINT_VOCAB))
    runtime, strategy = world_of_one(device)
    ctx.record("setup", {"data_parallel": strategy, "layers": args.num_layers, "hidden": args.hidden_size,
                         "device": str(device)})
    store = LocalStore(ctx.workdir / "store")
    a, b = batches(s, args.vocab_size, device)
    first = new_engine(args, runtime, seed=0)
    first.train_step(0, [a])
    ctx.record("save_on_device", save(store, 1, first, runtime))
    second = new_engine(args, runtime, seed=1)
    ctx.record("load_on_device_s", load(store, 1, second))

    def same_weights() -> dict[str, Any]:
        diff = max_difference(full_state(first.model), full_state(second.model))
        return {"passed": diff == 0.0, "max_abs_difference": diff}

    ctx.attempt("device_round_trip_weights", same_weights)
    loss_b = first.train_step(1, [b]).loss

    def same_next_step() -> dict[str, Any]:
        reloaded = second.train_step(1, [b]).loss
        return {"passed": close(loss_b, reloaded, 1e-6), "loss": loss_b, "loss_reloaded": reloaded}

    ctx.attempt("device_round_trip_next_step", same_next_step)
    cpu = ctx.attempt("cpu_resume", lambda: resume_on_cpu(ctx, store.root, loss_b))

    def back_on_device() -> dict[str, Any]:
        if not cpu or "checksum" not in cpu:
            raise RuntimeError("the CPU worker wrote no checkpoint to come back from")
        third = new_engine(args, runtime, seed=2)
        seconds = load(store, 2, third)
        ours = checksum(third.model)
        loss = third.train_step(2, [a]).loss
        return {"passed": close(ours, cpu["checksum"], 1e-9) and math.isfinite(loss), "load_s": seconds,
                "checksum": ours, "cpu_checksum": cpu["checksum"], "next_loss": loss}

    ctx.attempt("back_on_device", back_on_device)


def resume_on_cpu(ctx: Context, store_root: Path, device_loss_b: float) -> dict[str, Any]:
    """Run the CPU worker (this module's main) and judge what it reports."""
    result = ctx.workdir / "cpu-worker.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a CPU pod: no GPU to fall back on
    cmd = [sys.executable, "-m", "benchmarks.gpu_check.parts.checkpoint", "--store", str(store_root),
           "--result", str(result), *(["--dry-run"] if ctx.dry_run else [])]
    proc = subprocess.run(cmd, env=env, timeout=max(10.0, ctx.time_left() - 15))
    if proc.returncode != 0:
        raise RuntimeError(f"the CPU worker exited with status {proc.returncode} (its traceback is in the log)")
    report: dict[str, Any] = json.loads(result.read_text())
    report["passed"] = close(report["loss"], device_loss_b, LOSS_TOLERANCE)
    report["device_loss"] = device_loss_b
    return report


def cpu_worker(store_root: Path, result: Path, dry_run: bool) -> None:
    """The CPU side: resume from checkpoint 1, take step 2 on batch B, write checkpoint 2, report."""
    s = sizes_for(dry_run)
    device = torch.device("cpu")
    runtime, strategy = world_of_one(device)
    args = model_args(s.checkpoint_model, min(s.vocab, CHECKPOINT_VOCAB))
    store = LocalStore(store_root)
    engine = new_engine(args, runtime, seed=3)
    load_s = load(store, 1, engine)
    _, b = batches(s, args.vocab_size, device)
    loss = engine.train_step(1, [b]).loss
    saved = save(store, 2, engine, runtime)
    write_json(result, {"data_parallel": strategy, "load_s": load_s, "loss": loss, "save": saved,
                        "checksum": checksum(engine.model)})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the CPU worker of the checkpoint part")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--dry-run", action="store_true")
    a = parser.parse_args()
    cpu_worker(a.store, a.result, a.dry_run)
