"""SFT steps of the ~1B model (tiny in a dry run) with full fine-tuning, LoRA and QLoRA (NF4 through
torchao; skipped with the reason where it does not import): tokens/s and peak device memory.

Batches are padded rows with a padding mask and the prompt's labels ignored, as SFT lays them out under
FSDP2 (one sample per row); the model is sharded with FSDP2 in a world of one. Full fine-tuning builds
on the meta device and initialises its shard on the device, as pretraining does; the LoRA and QLoRA
bases are built and adapted on the device (quick), and a last variant starts QLoRA as the SFT stage
does (the base built on the CPU, quantized there and moved by `wrap_model`) on the checkpoint part's
small model, so the CPU's share stays short: it checks that path, its speed is no SFT figure."""

from __future__ import annotations

from typing import Any

import torch
from benchmarks.gpu_check.measure import model_args, world_of_one
from benchmarks.gpu_check.part import Context, Skip, describe
from benchmarks.gpu_check.training import model_facts, time_engine
from benchmarks.train_steps import Batch

from forge_trainer.config import LoraConfig
from forge_trainer.model import ModelArgs, Transformer
from forge_trainer.train.batches import IGNORE_INDEX
from forge_trainer.train.lora import apply_lora, nf4_quantize
from forge_trainer.train.parallel import build_model, wrap_model
from forge_trainer.train.runtime import Runtime

PAD_ID = 0


def sft_batches(n: int, micro: int, seq: int, vocab: int, device: torch.device) -> list[Batch]:
    """`n` micro-batches of right-padded samples of 50-100% of `seq` tokens, the first 30% of each a prompt."""
    g = torch.Generator(device="cpu").manual_seed(1)
    out = []
    for _ in range(n):
        tokens = torch.randint(1, vocab, (micro, seq + 1), generator=g)
        lengths = torch.randint(seq // 2, seq + 1, (micro,), generator=g)
        positions = torch.arange(seq)
        real = positions[None, :] < lengths[:, None]
        prompt = positions[None, :] < (lengths[:, None] * 3) // 10
        input_ids = torch.where(real, tokens[:, :-1], PAD_ID)
        labels = torch.where(real & ~prompt, tokens[:, 1:], IGNORE_INDEX)
        out.append({"input_ids": input_ids.to(device), "attention_mask": real.long().to(device),
                    "labels": labels.to(device)})
    return out


def nf4_available() -> None:
    """Raise Skip naming the reason when torchao's NF4 does not work with this torch."""
    try:
        nf4_quantize(torch.randn(64, 64))
    except Exception as exc:
        raise Skip(f"QLoRA needs torchao's NF4, which fails here: {describe(exc)}") from exc


def adapted(args: ModelArgs, runtime: Runtime, quantize: bool, build_on: torch.device) -> torch.nn.Module:
    """The model with LoRA adapters (NF4 base for QLoRA) made on `build_on`, then wrapped as SFT wraps it."""
    torch.manual_seed(0)
    with torch.device(build_on):
        model = Transformer(args)
    apply_lora(model, LoraConfig(), quantize=quantize)
    return wrap_model(model, runtime)


def run(ctx: Context) -> None:
    """Time full, LoRA and QLoRA steps."""
    s, device = ctx.sizes, ctx.device
    args = model_args(s.dense, s.vocab)
    ctx.record("model", {**model_facts(args, s.seq), "seq": s.seq, "micro_batch": s.micro, "accum": s.accum,
                         "lora": LoraConfig().model_dump()})
    runtime, strategy = world_of_one(device)
    ctx.record("data_parallel", strategy)
    data = sft_batches((s.warmup + s.measured) * s.accum, s.micro, s.seq, s.vocab, device)
    ctx.record("trained_token_share", round(float(sum((b["labels"] != IGNORE_INDEX).sum() for b in data))
                                            / (len(data) * s.micro * s.seq), 3))

    def measure(build: Any, adapters: bool) -> dict[str, Any]:
        out = time_engine(ctx, build, runtime, args, data)
        if adapters:  # frozen weights get no weight gradients: the 6 FLOPs per parameter do not hold
            for key in ("mfu_spec", "mfu_measured", "achieved_tflops"):
                out.pop(key)
        return out

    ctx.attempt("full", lambda: measure(lambda: wrap_model(build_model(args), runtime), False))
    ctx.attempt("lora", lambda: measure(lambda: adapted(args, runtime, False, device), True))

    def qlora(args: ModelArgs, build_on: torch.device) -> dict[str, Any]:
        nf4_available()
        return measure(lambda: adapted(args, runtime, True, build_on), True)

    ctx.attempt("qlora", lambda: qlora(args, device))
    if device.type != "cpu":
        small = model_args(s.checkpoint_model, s.vocab)
        ctx.attempt("qlora_small_quantized_on_cpu", lambda: qlora(small, torch.device("cpu")), min_left_s=15.0)
