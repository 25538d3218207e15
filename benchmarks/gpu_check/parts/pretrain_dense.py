"""Pretraining steps of the ~1B dense model (tiny in a dry run): FSDP2 in a world of one, bf16 autocast,
activation checkpointing and torch.compile on and off, and a plain PyTorch loop of the same model."""

from __future__ import annotations

from benchmarks.gpu_check.part import Context
from benchmarks.gpu_check.training import measure_pretraining


def run(ctx: Context) -> None:
    """Measure every variant of the dense model."""
    measure_pretraining(ctx, ctx.sizes.dense)
