"""RL rollout throughput: sampling with the KV cache (forge_trainer.train.generate.sample) against
recomputing the whole sequence for every new token, on the same model and prompts.

    .venv/bin/python benchmarks/bench_rl_sampling.py --quick   # a few seconds on CPU
    .venv/bin/python benchmarks/bench_rl_sampling.py           # a bigger model and batch

Prints, measured in this one run: both methods' completion tokens per second, that their greedy
completions are identical, and the ratio cached / recompute (target > 1; it grows with length).
"""

from __future__ import annotations

import argparse
import time

import torch

from forge_trainer.config import ModelConfig
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.train.generate import left_pad, sample


@torch.no_grad()
def recompute(model: Transformer, prompts: list[list[int]], new_tokens: int, pad_id: int) -> list[list[int]]:
    """Greedy decoding that runs the whole (left-padded) sequence through the model for every token."""
    ids, mask = left_pad(prompts, pad_id)
    for _ in range(new_tokens):
        nxt = model(ids, attention_mask=mask)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    out: list[list[int]] = ids[:, -new_tokens:].tolist()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, small batch")
    args = parser.parse_args()
    if args.quick:
        config = ModelConfig(hidden_size=128, num_layers=4, num_heads=4, max_seq_len=256)
        batch, prompt_len, new_tokens = 16, 32, 64
    else:
        config = ModelConfig(hidden_size=512, num_layers=8, num_heads=8, max_seq_len=1024)
        batch, prompt_len, new_tokens = 32, 128, 256
    torch.manual_seed(0)
    model = Transformer(resolve_model_args(config, 1024)).eval()
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 1024, (prompt_len - i % 5,), generator=gen).tolist() for i in range(batch)]

    began = time.perf_counter()
    cached = sample(model, prompts, max_new_tokens=new_tokens, temperature=0.0, stop_ids={-1}, pad_id=0)
    t_cached = time.perf_counter() - began
    began = time.perf_counter()
    full = recompute(model, prompts, new_tokens, pad_id=0)
    t_full = time.perf_counter() - began

    tokens = batch * new_tokens
    same = sum(a == b for a, b in zip(cached, full, strict=True))
    print(f"model {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, batch {batch}, "
          f"prompt ~{prompt_len}, {new_tokens} new tokens, torch threads {torch.get_num_threads()}")
    print(f"KV cache : {tokens / t_cached:10.0f} tokens/s")
    print(f"recompute: {tokens / t_full:10.0f} tokens/s")
    print(f"identical greedy completions: {same}/{batch}")
    print(f"ratio cached / recompute: {t_full / t_cached:.2f}x")


if __name__ == "__main__":
    main()
