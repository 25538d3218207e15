"""QLoRA's frozen base outside the NF4 layers (embeddings, output head, norms, untargeted linears), held
in bfloat16 instead of the model's float32: half the bytes, as bitsandbytes' QLoRA keeps them.

Compute stays in the dtype of the trainable adapters: an embedding lookup upcasts the rows it gathers,
a linear upcasts its weight for that one matrix product and keeps only the bf16 weight for the backward
pass (no float32 copy outlives the op), and RMSNorm's `weight * h` promotes to float32 by itself. Names
are unchanged (`model.embed_tokens.weight`, `lm_head.weight`, ...), so checkpoints, the export and a
tied head (one parameter shared by the embedding and the head) work as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FROZEN_DTYPE = torch.bfloat16
"""The dtype of the frozen, non-quantized base weights of a QLoRA model."""


class _UpcastLinear(torch.autograd.Function):
    """x @ W.T with a low-precision frozen W upcast to x's dtype for the product alone; the backward
    pass keeps W as stored and upcasts it again (W gets no gradient)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None


def upcast_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.linear(x, weight, bias) computed in x's dtype whatever the dtype of the frozen `weight`/`bias`."""
    if weight.dtype == x.dtype:
        return F.linear(x, weight, bias)
    y: Tensor = _UpcastLinear.apply(x, weight)  # type: ignore[no-untyped-call]
    return y if bias is None else y + bias.to(y.dtype)


class FrozenLinear(nn.Module):
    """A frozen linear layer whose weight is held in low precision and computed in the input's dtype."""

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        return upcast_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, dtype={self.weight.dtype}, frozen"


class FrozenEmbedding(nn.Embedding):
    """A frozen embedding table held in low precision; the rows looked up come out in `compute_dtype`."""

    def __init__(self, base: nn.Embedding, weight: nn.Parameter, compute_dtype: torch.dtype) -> None:
        nn.Module.__init__(self)  # nn.Embedding's own __init__ would allocate a second table
        self.num_embeddings, self.embedding_dim = base.num_embeddings, base.embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = base.padding_idx, base.max_norm, base.norm_type
        self.scale_grad_by_freq, self.sparse = base.scale_grad_by_freq, base.sparse
        self.weight = weight
        self.compute_dtype = compute_dtype

    def forward(self, input: Tensor) -> Tensor:
        return super().forward(input).to(self.compute_dtype)


def hold_frozen_in_bf16(model: nn.Module) -> int:
    """Hold every frozen floating-point parameter wider than bf16 in bf16, in place, swapping plain
    `nn.Linear`/`nn.Embedding` modules for their frozen low-precision forms so that they still compute
    in the dtype they had; modules with trainable parameters (adapters) keep theirs. Returns the number
    of parameters converted (a tied weight counts once)."""
    held: dict[int, nn.Parameter] = {}

    def low(p: Tensor) -> nn.Parameter:
        if id(p) not in held:
            held[id(p)] = nn.Parameter(p.detach().to(FROZEN_DTYPE), requires_grad=False)
        return held[id(p)]

    def convertible(p: Tensor | None) -> bool:
        return (p is not None and not p.requires_grad and p.dtype.is_floating_point
                and p.dtype.itemsize > FROZEN_DTYPE.itemsize)

    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.Linear and convertible(child.weight):
                bias = low(child.bias) if child.bias is not None and convertible(child.bias) else child.bias
                setattr(parent, child_name, FrozenLinear(low(child.weight), bias))
            elif type(child) is nn.Embedding and convertible(child.weight):
                setattr(parent, child_name, FrozenEmbedding(child, low(child.weight), child.weight.dtype))
    for module in model.modules():
        if isinstance(module, (FrozenLinear, FrozenEmbedding)):
            continue
        for name, p in list(module._parameters.items()):
            if p is not None and convertible(p):
                module._parameters[name] = low(p)
    return len(held)


def full_precision(t: Tensor) -> Tensor:
    """A frozen weight as float32 (bf16-held weights upcast; others unchanged), for exports and merges."""
    return t.float() if t.dtype == FROZEN_DTYPE else t


def storage_bytes(t: Tensor) -> int:
    """Bytes a tensor holds, through a tensor subclass (NF4) down to its inner tensors."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(storage_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def frozen_base_bytes(model: nn.Module) -> int:
    """Bytes of every frozen weight of `model` (parameters without gradients and NF4 buffers; a tied
    weight once): the memory QLoRA's base takes, adapters excluded."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        tensors: list[Tensor] = [p for p in module._parameters.values() if p is not None and not p.requires_grad]
        tensors += [b for b in module._buffers.values() if b is not None and hasattr(b, "__tensor_flatten__")]
        for t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                total += storage_bytes(t)
    return total
