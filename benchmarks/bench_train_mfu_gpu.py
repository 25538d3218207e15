"""Model FLOPs utilisation of our training step on one GPU (1b preset, bf16 autocast), against a
plain PyTorch loop of the same model and batch measured in the same run. Prints "skipped: no GPU"
and exits 0 where no CUDA device is available.

    .venv/bin/python benchmarks/bench_train_mfu_gpu.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.train_steps import plain_step, random_batches, time_steps

from forge_trainer.config import Hyperparameters, ModelConfig, SizePreset
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.model.flops import flops_per_token, peak_flops
from forge_trainer.train.parallel import wrap_model
from forge_trainer.train.runtime import Runtime
from forge_trainer.train.step_engine import StepEngine

VOCAB = 32_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 warm-up + 10 measured steps")
    parser.add_argument("--size", default=SizePreset.B1.value, choices=[s.value for s in SizePreset])
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--accum", type=int, default=2)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--activation-checkpointing", action="store_true")
    a = parser.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no GPU (this benchmark needs a CUDA device)")
        return 0
    device = torch.device("cuda", 0)
    warmup, measured = (5, 10) if a.quick else (10, 40)
    steps = warmup + measured
    args = resolve_model_args(ModelConfig(size=SizePreset(a.size)), VOCAB)
    hp = Hyperparameters(max_steps=steps, warmup_steps=2, micro_batch_size=a.micro_batch,
                         global_batch_size=a.micro_batch * a.accum, sequence_length=a.seq)
    data = random_batches(steps * a.accum, a.micro_batch, a.seq, VOCAB, device)
    runtime = Runtime(0, 1, 0, device, False)
    step_tokens = a.micro_batch * a.accum * a.seq
    fpt = flops_per_token(args, a.seq)
    peak = peak_flops(device)
    results: dict[str, float] = {}

    torch.manual_seed(0)
    model = wrap_model(Transformer(args), runtime, a.activation_checkpointing, a.compile)
    trainer = StepEngine(model, hp, runtime, bf16=True)
    results["forge trainer"] = statistics.median(time_steps(trainer.train_step, data, a.accum, warmup, device))
    del trainer, model
    torch.cuda.empty_cache()

    torch.manual_seed(0)
    plain_model = Transformer(args).to(device)
    plain = plain_step(plain_model, hp.learning_rate, hp.grad_clip, True, device)
    results["plain PyTorch loop"] = statistics.median(time_steps(plain, data, a.accum, warmup, device))
    print(f"{torch.cuda.get_device_name(device)}: {a.size} preset, {args.num_layers} layers x {args.hidden_size}, "
          f"seq {a.seq}, {step_tokens} tokens/step, bf16 autocast, peak {peak or 0:.3g} FLOP/s")
    for name, seconds in results.items():
        tps = step_tokens / seconds
        mfu = f"{fpt * tps / peak:6.1%}" if peak else "n/a"
        print(f"{name:20s}: median step {seconds * 1e3:8.1f} ms  {tps:10.0f} tokens/s  MFU {mfu}")
    print(f"ratio forge/plain tokens/s: {results['plain PyTorch loop'] / results['forge trainer']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
