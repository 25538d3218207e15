"""The machine: Python, torch and CUDA versions, the device, the versions (and origin) of the packages
the other parts need, and the device's bf16 matmul peak measured now (the MFU reference)."""

from __future__ import annotations

import importlib
import importlib.metadata
import platform
from typing import Any

import torch
from benchmarks.gpu_check.measure import matmul_peak, spec_peak
from benchmarks.gpu_check.part import Context, describe

PACKAGES = ("transformers", "tokenizers", "safetensors", "peft", "prometheus_client", "pydantic", "starlette",
            "uvicorn", "httptools", "uvloop", "httpx", "torchao")


def package(name: str) -> dict[str, Any]:
    """Version and location of an importable package, or why it does not import."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        return {"error": describe(exc)}
    try:
        version = importlib.metadata.version(name.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = getattr(module, "__version__", "?")
    return {"version": version, "from": str(getattr(module, "__file__", "") or "").rsplit("/", 2)[0]}


def device_info(device: torch.device) -> dict[str, Any]:
    """Name, memory and compute capability of the device measured on."""
    if device.type != "cuda":
        return {"name": "cpu", "threads": torch.get_num_threads()}
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "memory_gib": round(props.total_memory / (1 << 30), 1),
            "capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda, "bf16_supported": torch.cuda.is_bf16_supported()}


def run(ctx: Context) -> None:
    """Record the environment and the measured matmul peak."""
    ctx.record("python", platform.python_version())
    ctx.record("torch", torch.__version__)
    ctx.record("cuda_available", torch.cuda.is_available())
    ctx.record("packages", {name: package(name) for name in PACKAGES})
    device = ctx.device
    ctx.record("device", device_info(device))
    ctx.record("spec_peak_flops", spec_peak(device))
    ctx.record("matmul_peak", matmul_peak(device, ctx.sizes.matmul_n))
