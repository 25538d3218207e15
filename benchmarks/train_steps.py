"""Shared by the training benchmarks (`bench_train_mfu_gpu.py`, `gpu_check`): random token batches,
timing optimizer steps on any device, and the plain PyTorch step our step engine is compared with."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Batch = dict[str, Tensor]
Step = Callable[[int, Sequence[Batch]], object]
"""An optimizer step: (step number, its micro-batches) -> anything."""


def random_batches(n: int, micro: int, seq: int, vocab: int, device: torch.device, seed: int = 0) -> list[Batch]:
    """`n` micro-batches of `micro` rows of `seq` random tokens (next-token labels), already on `device`."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    rows = torch.randint(0, vocab, (n, micro, seq + 1), generator=g)
    return [{"input_ids": r[:, :-1].to(device), "labels": r[:, 1:].to(device)} for r in rows]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Step, data: Sequence[Batch], accum: int, warmup: int, device: torch.device) -> list[float]:
    """Wall seconds of each optimizer step after the first `warmup`, `accum` micro-batches a step."""
    times = []
    for i in range(len(data) // accum):
        synchronize(device)
        began = time.perf_counter()
        step(i, data[i * accum:(i + 1) * accum])
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - began)
    return times


def plain_step(model: nn.Module, lr: float, grad_clip: float, bf16: bool, device: torch.device) -> Step:
    """The reference: a bare PyTorch loop's step (bf16 autocast on a GPU, fused AdamW, clipping)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=True)
    use_autocast = bf16 and device.type == "cuda"

    def step(_: int, micro: Sequence[Batch]) -> None:
        for batch in micro:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                logits = model(batch["input_ids"])
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
            (loss / len(micro)).backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step
