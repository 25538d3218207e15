"""Pretraining steps of a small MoE (125m widths, 8 experts, 2 per token; tiny in a dry run): the same
variants as the dense model, MFU counted over the active parameters."""

from __future__ import annotations

from benchmarks.gpu_check.part import Context
from benchmarks.gpu_check.training import measure_pretraining


def run(ctx: Context) -> None:
    """Measure every variant of the MoE model."""
    measure_pretraining(ctx, ctx.sizes.moe)
