"""GRPO rollout sampling (`train.generate.sample`, the KV-cache decoder the RL stage uses) of the ~1B
model (tiny in a dry run): completion tokens/s with fp32 weights as the RL stage samples today, and
under bf16 autocast for comparison."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch
from benchmarks.gpu_check.measure import model_args, peak_memory_gib, reset_peak_memory
from benchmarks.gpu_check.part import Context
from benchmarks.train_steps import synchronize

from forge_trainer.model import Transformer
from forge_trainer.train.generate import sample

NO_STOP = {-1}
"""No token id stops a sequence: every completion has its full length."""


def run(ctx: Context) -> None:
    """Time sampling in fp32 and under bf16 autocast."""
    s, device = ctx.sizes, ctx.device
    args = model_args(s.dense, s.vocab)
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(args)
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(4, s.vocab, (s.rollout_prompt - i % 7,), generator=g).tolist()
               for i in range(s.rollout_batch)]
    ctx.record("setup", {"sequences": s.rollout_batch, "prompt_tokens": s.rollout_prompt,
                         "new_tokens": s.rollout_new, "temperature": 1.0, "layers": args.num_layers,
                         "hidden": args.hidden_size})

    def timed(bf16: bool) -> dict[str, Any]:
        reset_peak_memory(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        generator = torch.Generator(device=device).manual_seed(3)
        with autocast:
            sample(model, prompts[:2], max_new_tokens=4, temperature=1.0, stop_ids=NO_STOP, pad_id=0,
                   generator=generator)  # warm-up: kernels, allocator
            synchronize(device)
            began = time.perf_counter()
            out = sample(model, prompts, max_new_tokens=s.rollout_new, temperature=1.0, stop_ids=NO_STOP, pad_id=0,
                         generator=generator)
            synchronize(device)
        seconds = time.perf_counter() - began
        tokens = sum(len(c) for c in out)
        return {"tokens_per_s": round(tokens / seconds, 1), "tokens": tokens, "seconds": round(seconds, 3),
                "peak_memory_gib": peak_memory_gib(device)}

    ctx.attempt("fp32", lambda: timed(False))
    ctx.attempt("bf16_autocast", lambda: timed(True))
