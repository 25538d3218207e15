"""Timing training steps of our step engine (the step every stage runs) and of a plain PyTorch loop,
with tokens/s, MFU against both peaks, peak memory and the warm-up (compilation) time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from benchmarks.gpu_check.measure import (
    mfu,
    model_args,
    peak_memory_gib,
    reset_peak_memory,
    summary,
    world_of_one,
)
from benchmarks.gpu_check.part import Context
from benchmarks.train_steps import Batch, plain_step, random_batches, time_steps
from torch import nn

from forge_trainer.config import Hyperparameters
from forge_trainer.model import ModelArgs, Transformer
from forge_trainer.model.flops import active_params, flops_per_token
from forge_trainer.train.parallel import build_model, wrap_model
from forge_trainer.train.runtime import Runtime
from forge_trainer.train.step_engine import StepEngine, StepStats, first_non_finite


def hyperparameters(ctx: Context) -> Hyperparameters:
    """The run's batch shape; a short schedule so the learning rate is warm by the timed steps."""
    s = ctx.sizes
    return Hyperparameters(max_steps=s.warmup + s.measured, warmup_steps=1, micro_batch_size=s.micro,
                           global_batch_size=s.micro * s.accum, sequence_length=s.seq)


def model_facts(args: ModelArgs, seq: int) -> dict[str, Any]:
    """Dimensions and FLOPs of a model, for the report."""
    return {"layers": args.num_layers, "hidden": args.hidden_size, "experts": args.num_experts,
            "experts_per_token": args.experts_per_token, "vocab": args.vocab_size,
            "active_params_m": round(active_params(args) / 1e6, 1), "flops_per_token": flops_per_token(args, seq)}


@contextlib.contextmanager
def compile_backend(dry_run: bool) -> Iterator[None]:
    """In a dry run, torch.compile traces with dynamo and AOTAutograd but skips inductor's code generation
    (minutes of C++ compilation on a CPU); the GPU run compiles with inductor as training does."""
    if not dry_run:
        yield
        return
    original = nn.Module.compile

    def aot_eager(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("backend", "aot_eager")
        original(self, *args, **kwargs)

    nn.Module.compile = aot_eager  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.compile = original  # type: ignore[method-assign]


def figures(ctx: Context, args: ModelArgs, times: list[float], warmup_s: float) -> dict[str, Any]:
    """Tokens/s, achieved FLOP/s, MFU and memory of a timed run."""
    s = ctx.sizes
    tokens = s.micro * s.accum * s.seq
    median = summary(times)["median_ms"] / 1e3
    achieved = flops_per_token(args, s.seq) * tokens / median
    return {"step": summary(times), "tokens_per_s": round(tokens / median, 1), "achieved_tflops": round(achieved / 1e12, 2),
            **mfu(ctx, achieved), "peak_memory_gib": peak_memory_gib(ctx.device), "warmup_s": round(warmup_s, 2)}


def time_engine(ctx: Context, build: Callable[[], nn.Module], runtime: Runtime, args: ModelArgs,
                data: Sequence[Batch]) -> dict[str, Any]:
    """Our step engine (bf16 autocast, the default loss: next-token cross-entropy over the labels that are
    not ignored) on the model `build` returns, wrapped; steps as pretraining runs them (no host wait per
    step); the values are read once at the end and must be finite."""
    s, device = ctx.sizes, ctx.device
    reset_peak_memory(device)
    torch.manual_seed(0)
    began = time.perf_counter()
    model = build()
    engine = StepEngine(model, hyperparameters(ctx), runtime, bf16=True)
    build_s = time.perf_counter() - began
    stats: list[StepStats] = []
    began = time.perf_counter()
    times = time_steps(lambda i, micro: stats.append(engine.train_step(i, micro, check=False)), data, s.accum,
                       s.warmup, device)
    warmup_s = time.perf_counter() - began - sum(times)
    bad = first_non_finite(stats)
    if bad is not None:
        raise RuntimeError(f"step {bad + 1}: {stats[bad].problem}")
    out = {**figures(ctx, args, times, warmup_s), "build_s": round(build_s, 2),
           "loss_first": round(stats[0].loss, 4), "loss_last": round(stats[-1].loss, 4)}
    _forget_compiled()
    return out


def time_plain(ctx: Context, args: ModelArgs, data: Sequence[Batch]) -> dict[str, Any]:
    """The same model and batches in a bare PyTorch loop (eager, bf16 autocast on a GPU)."""
    s, device = ctx.sizes, ctx.device
    reset_peak_memory(device)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(args)
    hp = hyperparameters(ctx)
    began = time.perf_counter()
    times = time_steps(plain_step(model, hp.learning_rate, hp.grad_clip, True, device), data, s.accum, s.warmup,
                       device)
    warmup_s = time.perf_counter() - began - sum(times)
    out = figures(ctx, args, times, warmup_s)
    return out


def _forget_compiled() -> None:
    """Drop compiled graphs of a finished variant (each model compiles afresh; the cache has a limit)."""
    import torch._dynamo

    torch._dynamo.reset()


VARIANTS = (  # (key, activation checkpointing, torch.compile); the plain loop runs after the first
    ("ours", False, False),
    ("ours_ac", True, False),
    ("ours_compile", False, True),
    ("ours_ac_compile", True, True),
)


def measure_pretraining(ctx: Context, fields: dict[str, Any]) -> None:
    """Pretraining steps of the model `fields` describe, sharded with FSDP2 in a world of one, in every
    variant, and the plain loop of the same model; records the ratio ours / plain."""
    s, device = ctx.sizes, ctx.device
    args = model_args(fields, s.vocab)
    ctx.record("model", {**model_facts(args, s.seq), "tokens_per_step": s.micro * s.accum * s.seq,
                         "seq": s.seq, "micro_batch": s.micro, "accum": s.accum, "bf16_autocast": True})
    runtime, strategy = world_of_one(device)
    ctx.record("data_parallel", strategy)
    data = random_batches((s.warmup + s.measured) * s.accum, s.micro, s.seq, s.vocab, device)
    results: dict[str, Any] = {}
    for key, ac, compiled in VARIANTS:
        def variant(ac: bool = ac, compiled: bool = compiled) -> dict[str, Any]:
            with compile_backend(ctx.dry_run):
                return time_engine(ctx, lambda: wrap_model(build_model(args), runtime, ac, compiled), runtime, args,
                                   data)

        results[key] = ctx.attempt(key, variant, ctx.sizes.compile_min_left_s if compiled else 0.0)
        if key == "ours":
            results["plain"] = ctx.attempt("plain", lambda: time_plain(ctx, args, data))
    ours, plain = results.get("ours"), results.get("plain")
    if ours and plain:
        ctx.record("ratio_ours_over_plain", round(ours["tokens_per_s"] / plain["tokens_per_s"], 3))
