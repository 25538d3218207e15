"""Sequence packing for fine-tuning without cross-contamination between packed samples.

Several tokenized samples share one row of `seq_len` tokens. Each keeps its own positions (rotary
positions restart at 0) and a sample id per token; attention is causal *within* a sample and blocked
across samples (a block-diagonal causal mask through scaled_dot_product_attention), so a packed
sample's logits equal its logits alone. Targets are shifted per sample before packing, so no sample
is trained to predict the first token of its neighbour.

`packed_logits` runs our Transformer's own modules with that mask. It calls the blocks directly, so
it serves a single process; a data-parallel wrapper (DDP/FSDP) must see the model's own forward, and
there `rows(..., one_per_row=True)` lays one right-padded sample per row for the model's padding mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from forge_trainer.model.transformer import Transformer
from forge_trainer.train.batches import IGNORE_INDEX, Batch

OPEN_ROWS = 64
"""Rows kept open for first-fit packing (bounded so packing stays linear in the number of samples)."""


@dataclass(frozen=True)
class Example:
    """One sample ready to pack: model inputs and, per position, the target id or IGNORE_INDEX."""

    inputs: list[int]
    targets: list[int]


def make_example(ids: Sequence[int], trained: Sequence[bool], max_len: int) -> Example | None:
    """Shift a tokenized sample into (inputs, targets), truncated to `max_len`; None when nothing in
    it is trained after truncation."""
    inputs = list(ids[:-1])[:max_len]
    targets = [t if learn else IGNORE_INDEX for t, learn in zip(ids[1:], trained[1:], strict=True)][:max_len]
    if all(t == IGNORE_INDEX for t in targets):
        return None
    return Example(inputs, targets)


def pack(examples: Sequence[Example], seq_len: int) -> list[list[int]]:
    """Group example indices into rows of at most `seq_len` tokens (first fit, in the given order)."""
    rows: list[list[int]] = []
    room: list[int] = []
    open_from = 0
    for i, ex in enumerate(examples):
        n = len(ex.inputs)
        for r in range(open_from, len(rows)):
            if room[r] >= n:
                rows[r].append(i)
                room[r] -= n
                break
        else:
            rows.append([i])
            room.append(seq_len - n)
            open_from = max(0, len(rows) - OPEN_ROWS)
    return rows


def rows_batch(examples: Sequence[Example], rows: Sequence[Sequence[int]], seq_len: int, pad_id: int,
               one_per_row: bool = False) -> Batch:
    """A micro-batch of packed rows: input_ids, labels, position_ids and seq_ids (-1 on padding), or
    with `one_per_row` (each row holding one example) input_ids, labels and a padding attention_mask."""
    b = len(rows)
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((b, seq_len), dtype=torch.long)
    seq_ids = torch.full((b, seq_len), -1, dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for k, idx in enumerate(row):
            ex = examples[idx]
            n = len(ex.inputs)
            if at + n > seq_len:
                raise ValueError(f"row {r} holds more than {seq_len} tokens")
            input_ids[r, at:at + n] = torch.tensor(ex.inputs)
            labels[r, at:at + n] = torch.tensor(ex.targets)
            position_ids[r, at:at + n] = torch.arange(n)
            seq_ids[r, at:at + n] = k
            at += n
    if one_per_row:
        if any(len(row) > 1 for row in rows):
            raise ValueError("one_per_row needs rows of one example each")
        return {"input_ids": input_ids, "labels": labels, "attention_mask": (seq_ids >= 0).long()}
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "seq_ids": seq_ids}


def block_causal_mask(seq_ids: Tensor) -> Tensor:
    """Boolean (B, 1, T, T) mask: token i attends to token j iff both belong to the same sample and j <= i;
    padding (seq id -1) attends only to itself, so no row of the softmax is empty."""
    t = seq_ids.shape[1]
    same = seq_ids[:, :, None] == seq_ids[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=seq_ids.device).tril()
    real = (seq_ids >= 0)[:, None, :]
    mask = (same & causal & real) | torch.eye(t, dtype=torch.bool, device=seq_ids.device)
    return mask[:, None]


def packed_logits(model: Transformer, input_ids: Tensor, position_ids: Tensor, seq_ids: Tensor) -> Tensor:
    """Logits (B, T, vocab) of packed rows, each sample attending only to itself (sets `aux_loss` as
    the model's forward does)."""
    mask = block_causal_mask(seq_ids)
    h = model.model.embed_tokens(input_ids)
    cos, sin = model.model.rotary_emb(position_ids, h.dtype)
    balances: list[Tensor] = []
    for layer in model.model.layers:
        if model.gradient_checkpointing and model.training:
            h, balance = checkpoint(layer, h, cos, sin, mask, use_reentrant=False)
        else:
            h, balance = layer(h, cos, sin, mask)
        if balance is not None:
            balances.append(balance)
    model.aux_loss = torch.stack(balances).mean() if balances else None
    logits: Tensor = model.lm_head(model.model.norm(h))
    return logits
