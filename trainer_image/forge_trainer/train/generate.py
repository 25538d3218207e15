"""Sampling completions from our Transformer: a batch of prompts, left-padded, decoded with the model's
KV cache, with temperature (0 is greedy), stopping per sequence at any stop token."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import Tensor

from forge_trainer.model.transformer import KVCache, Transformer


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), both (B, longest prompt), prompts aligned to the right."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long, device=device)
            mask[i, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def sample(model: Transformer, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, temperature: float,
           stop_ids: Collection[int], pad_id: int, generator: torch.Generator | None = None) -> list[list[int]]:
    """Completion ids for each prompt: up to `max_new_tokens`, ending with the first stop token when one
    was produced. The model's training mode is restored afterwards."""
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    b, width = ids.shape
    room = model.args.max_seq_len - width
    steps = min(max_new_tokens, room)
    if steps <= 0:
        raise ValueError(f"prompts of {width} tokens leave no room under max_seq_len {model.args.max_seq_len}")
    dtype = next(model.parameters()).dtype
    cache = KVCache(model.args, b, width + steps, device, dtype if dtype.is_floating_point else torch.float32)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    out = torch.full((b, steps), pad_id, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    lengths = torch.full((b,), steps, dtype=torch.long, device=device)
    logits = model(ids, attention_mask=mask, cache=cache)[:, -1]
    for t in range(steps):
        if temperature > 0:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            nxt = logits.argmax(-1)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        out[:, t] = nxt
        just_stopped = ~finished & torch.isin(nxt, stops)
        lengths = torch.where(just_stopped, torch.full_like(lengths, t + 1), lengths)
        finished |= just_stopped
        if bool(finished.all()) or t == steps - 1:
            break
        mask = torch.cat([mask, torch.ones((b, 1), dtype=mask.dtype, device=device)], dim=1)
        logits = model(nxt[:, None], attention_mask=mask, cache=cache)[:, -1]
    model.train(was_training)
    return [out[i, : int(lengths[i])].tolist() for i in range(b)]
