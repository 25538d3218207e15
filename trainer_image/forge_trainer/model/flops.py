"""Training FLOPs of the model and peak FLOPs of devices, for the MFU estimate."""

from __future__ import annotations

import os

import torch

from forge_trainer.model.args import ModelArgs

PEAK_FLOPS_ENV = "FORGE_PEAK_FLOPS"

# Dense bf16 tensor-core peaks (no sparsity), by a substring of the device name.
_GPU_PEAK_BF16 = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
    ("L4", 121e12),
)


def active_params(args: ModelArgs) -> int:
    """Parameters one token passes through, the embedding table excluded (lm_head included)."""
    h, hd = args.hidden_size, args.head_dim
    attn = h * hd * (2 * args.num_heads + 2 * args.num_kv_heads)
    mlp = 3 * h * args.intermediate_size
    if args.is_moe:
        mlp = mlp * args.experts_per_token + h * args.num_experts
    norms = 2 * h
    return args.num_layers * (attn + mlp + norms) + h + h * args.vocab_size


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token: 6 per active parameter plus attention scores
    (PaLM's estimate, 12 * layers * width * sequence length)."""
    return 6.0 * active_params(args) + 12.0 * args.num_layers * args.hidden_size * seq_len


def peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of one device: FORGE_PEAK_FLOPS if set, else a table of GPUs; None
    when unknown (CPUs)."""
    override = os.environ.get(PEAK_FLOPS_ENV)
    if override:
        return float(override)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peak in _GPU_PEAK_BF16:
            if key in name:
                return peak
    return None
