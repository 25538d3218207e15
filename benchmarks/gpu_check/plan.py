"""What the check runs: its parts in order, each part's time budget, and the sizes of the GPU run and of
the CPU dry run. Plain data (no torch), so the runner starts even where torch does not import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GPU_WALL_LIMIT_S = 480
"""The whole GPU run must fit in 8 minutes: the device machine is lent for about 15, start-up included."""


@dataclass(frozen=True)
class Part:
    """One measurement, run in a process of its own under its own time budget."""

    name: str
    """Key in the report, and the module under `benchmarks.gpu_check.parts`."""
    title: str
    """What it measures, for the text table."""
    gpu_budget_s: int
    """Wall-clock budget on the GPU machine, process start included."""


PARTS: tuple[Part, ...] = (
    Part("env", "device, versions and the measured bf16 matmul peak", 40),  # a cold first import of torch
    Part("pretrain_dense", "pretraining ~1B dense: MFU, tokens/s, vs a plain loop", 145),
    Part("pretrain_moe", "pretraining a small MoE: MFU, tokens/s, vs a plain loop", 60),
    Part("sft", "SFT steps full / LoRA / QLoRA: tokens/s and peak memory", 80),
    Part("rollout", "GRPO rollout sampling with the KV cache: tokens/s", 35),
    Part("serve", "builtin server vs HF generate: tokens/s and time to first token", 70),
    Part("checkpoint", "wrap_model + DCP round trip on the device, device -> CPU -> device", 50),  # two processes start torch
)

DRY_RUN_BUDGET_S = 600
"""Per part in a dry run: a shared, busy CPU is slow, and the dry run checks code paths, not speed."""


@dataclass(frozen=True)
class Sizes:
    """Model sizes and step counts of a run (GPU or dry run)."""

    dense: dict[str, Any]
    """ModelConfig fields of the dense pretraining model (and of SFT, rollout and serving)."""
    moe: dict[str, Any]
    """ModelConfig fields of the MoE pretraining model."""
    vocab: int
    """Vocabulary of the training parts (random tokens)."""
    seq: int
    """Training sequence length."""
    micro: int
    """Rows per micro-batch."""
    accum: int
    """Micro-batches per optimizer step."""
    warmup: int
    """Steps run before timing (allocation, kernel selection, compilation)."""
    measured: int
    """Steps timed."""
    rollout_batch: int
    """Sequences sampled together (prompts x group size)."""
    rollout_prompt: int
    """Prompt tokens per sequence."""
    rollout_new: int
    """Tokens sampled per sequence."""
    serve_vocab: int
    """Vocabulary of the served model's tokenizer (trained on a synthetic corpus)."""
    serve_tokens: int
    """Tokens generated per stream."""
    serve_streams: tuple[int, ...]
    """Concurrent streams measured."""
    serve_rounds: int
    """Measured rounds per contender and concurrency."""
    checkpoint_model: dict[str, Any]
    """ModelConfig fields of the checkpoint round trip's model (small: its CPU side trains a step too)."""
    matmul_n: int
    """Side of the square matrices of the matmul peak."""
    compile_min_left_s: float = 0.0
    """A torch.compile variant starts only with this much of its part's budget left."""


GPU_SIZES = Sizes(
    dense={"size": "1b"}, moe={"size": "125m", "architecture": "moe"}, vocab=32_000, seq=2048, micro=4,
    accum=2, warmup=3, measured=8, rollout_batch=32, rollout_prompt=128, rollout_new=256, serve_vocab=4096,
    serve_tokens=64, serve_streams=(1, 16), serve_rounds=2, checkpoint_model={"hiddenSize": 512, "numLayers": 4, "numHeads": 8},
    matmul_n=8192, compile_min_left_s=45.0,
)

DRY_SIZES = Sizes(
    dense={"size": "tiny"}, moe={"size": "tiny", "architecture": "moe"}, vocab=256, seq=32, micro=2, accum=2,
    warmup=1, measured=2, rollout_batch=4, rollout_prompt=8, rollout_new=8, serve_vocab=300, serve_tokens=8,
    serve_streams=(1, 4), serve_rounds=1, checkpoint_model={"size": "tiny"}, matmul_n=256,
)


def sizes_for(dry_run: bool) -> Sizes:
    """The sizes of a dry run or of the GPU run."""
    return DRY_SIZES if dry_run else GPU_SIZES


def budget_for(part: Part, dry_run: bool) -> int:
    """A part's wall-clock budget in seconds."""
    return DRY_RUN_BUDGET_S if dry_run else part.gpu_budget_s


def gpu_budget_total() -> int:
    """Sum of the parts' GPU budgets (at most GPU_WALL_LIMIT_S)."""
    return sum(p.gpu_budget_s for p in PARTS)
