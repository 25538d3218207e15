"""What the parts share: a world of one FSDP2 worker, peak device memory, the measured matmul peak and
MFU against both peaks."""

from __future__ import annotations

import gc
import os
import socket
import statistics
import time
from typing import Any

import torch
from benchmarks.gpu_check.part import Context, describe
from benchmarks.train_steps import synchronize

from forge_trainer.config import ModelConfig
from forge_trainer.model import ModelArgs, resolve_model_args
from forge_trainer.model.flops import peak_flops
from forge_trainer.train.parallel import data_parallel_strategy
from forge_trainer.train.runtime import Runtime, init_runtime

GIB = float(1 << 30)


def model_args(fields: dict[str, Any], vocab: int) -> ModelArgs:
    """The model of a plan entry (ModelConfig fields) with this vocabulary."""
    return resolve_model_args(ModelConfig.model_validate(fields), vocab)


def free_port() -> int:
    """A TCP port on loopback nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def world_of_one(device: torch.device) -> tuple[Runtime, str]:
    """A torchrun-like group of one worker (nccl on a GPU, gloo on the CPU), so `wrap_model` shards with
    FSDP2 as a one-GPU pod does; a plain process, said so, where the group cannot form."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="1", RANK="0",
                      LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    try:
        runtime = init_runtime(force_cpu=device.type == "cpu")
    except Exception as exc:
        return Runtime(0, 1, 0, device, False), f"none (process group failed: {describe(exc)})"
    return runtime, data_parallel_strategy(runtime)


def reset_peak_memory(device: torch.device) -> None:
    """Free what earlier variants left and start counting peak memory afresh."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak memory allocated on the device since the last reset (None on a CPU)."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / GIB, 2)


def matmul_peak(device: torch.device, n: int, repeats: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Measured FLOP/s of an n x n x n matrix product (bf16 on a GPU, fp32 on the CPU), mean of `repeats`."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(warmup):
        a @ b
    synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    seconds = (time.perf_counter() - began) / repeats
    return {"flops": 2 * n**3 / seconds, "n": n, "dtype": str(dtype).removeprefix("torch."), "repeats": repeats}


def spec_peak(device: torch.device) -> float | None:
    """The device's dense bf16 peak from the trainer's table (None for CPUs and unknown GPUs)."""
    return peak_flops(device)


def mfu(ctx: Context, flops_per_second: float) -> dict[str, float | None]:
    """Model FLOPs utilisation against the spec bf16 peak and against the matmul peak measured by env."""
    spec = ctx.env.get("spec_peak_flops")
    measured = ctx.env.get("matmul_peak", {}).get("flops")
    return {"mfu_spec": round(flops_per_second / spec, 4) if spec else None,
            "mfu_measured": round(flops_per_second / measured, 4) if measured else None}


def summary(times: list[float]) -> dict[str, float]:
    """Median and spread of step times, in milliseconds."""
    return {"median_ms": round(statistics.median(times) * 1e3, 2), "min_ms": round(min(times) * 1e3, 2),
            "max_ms": round(max(times) * 1e3, 2), "steps": len(times)}
