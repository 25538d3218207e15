"""Decoder-only transformer in plain PyTorch: RMSNorm, rotary embeddings, grouped-query attention
through scaled_dot_product_attention, SwiGLU MLPs or top-k routed SwiGLU experts.

Parameter names are those of Hugging Face checkpoints, so a state dict saves unchanged as a
LlamaForCausalLM (dense) or MixtralForCausalLM (moe) checkpoint and LoRA finds q_proj/k_proj/...
by name:

    model.embed_tokens                      model.layers.N.self_attn.{q,k,v,o}_proj
    model.layers.N.input_layernorm          model.layers.N.post_attention_layernorm
    model.layers.N.mlp.{gate,up,down}_proj                            (dense)
    model.layers.N.block_sparse_moe.gate    model.layers.N.block_sparse_moe.experts.E.{w1,w2,w3}  (moe)
    model.norm                              lm_head
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from forge_trainer.model.args import ModelArgs

Device = torch.device | str | None


class RMSNorm(nn.Module):
    """Root-mean-square layer norm, computed in float32 as Llama does."""

    def __init__(self, dim: int, eps: float, device: Device = None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device))

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(dtype)


def rope_inv_freq(args: ModelArgs, device: Device = None) -> Tensor:
    """Rotary inverse frequencies, scaled as `args.rope_scaling` says (the formulas of transformers'
    `linear` and `llama3` rope types)."""
    dim = args.head_dim
    inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))
    scaling = args.rope_scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor, low, high = (float(scaling[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """cos/sin tables for rotary position embeddings (the rotate-half layout of HF Llama)."""

    def __init__(self, args: ModelArgs, device: Device = None) -> None:
        super().__init__()
        dim = args.head_dim
        if torch.device(device or "cpu").type == "meta":  # computed by init_weights once materialised
            inv_freq = torch.empty(dim // 2, device="meta")
        else:
            inv_freq = rope_inv_freq(args, device)
        self.inv_freq: Tensor
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate (B, heads, T, head_dim) by position; cos/sin are (B, T, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + _rotate_half(x) * sin


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated to `max_len`."""

    def __init__(self, args: ModelArgs, batch_size: int, max_len: int, device: torch.device | str,
                 dtype: torch.dtype) -> None:
        shape = (args.num_layers, batch_size, args.num_kv_heads, max_len, args.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0
        """Positions already cached."""

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new keys/values of `layer` after the cached ones; return all of them."""
        end = self.length + k.shape[2]
        if end > self.k.shape[3]:
            raise ValueError(f"KV cache holds {self.k.shape[3]} positions, {end} needed")
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    """Grouped-query self-attention with rotary embeddings."""

    def __init__(self, args: ModelArgs, layer_idx: int, device: Device = None) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        self.sliding_window = args.sliding_window
        qkv, q_out, kv_out = args.qkv_bias, args.num_heads * args.head_dim, args.num_kv_heads * args.head_dim
        self.q_proj = nn.Linear(args.hidden_size, q_out, bias=qkv, device=device)
        self.k_proj = nn.Linear(args.hidden_size, kv_out, bias=qkv, device=device)
        self.v_proj = nn.Linear(args.hidden_size, kv_out, bias=qkv, device=device)
        self.o_proj = nn.Linear(q_out, args.hidden_size, bias=args.o_bias, device=device)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: KVCache | None) -> Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        gqa = self.num_kv_heads != self.num_heads
        if self.sliding_window is not None and k.shape[2] > self.sliding_window:
            band = _window_band(t, k.shape[2], self.sliding_window, x.device)
            mask = band if mask is None else mask & band
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1, enable_gqa=gqa)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        projected: Tensor = self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        return projected


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, args: ModelArgs, device: Device = None) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False, device=device)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False, device=device)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False, device=device)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


class Expert(nn.Module):
    """One SwiGLU expert, named as in Mixtral checkpoints (w1 gate, w3 up, w2 down)."""

    def __init__(self, args: ModelArgs, device: Device = None) -> None:
        super().__init__()
        self.w1 = nn.Linear(args.hidden_size, args.intermediate_size, bias=False, device=device)
        self.w2 = nn.Linear(args.intermediate_size, args.hidden_size, bias=False, device=device)
        self.w3 = nn.Linear(args.hidden_size, args.intermediate_size, bias=False, device=device)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.w2(F.silu(self.w1(x)) * self.w3(x))
        return out


class SparseMoE(nn.Module):
    """Top-k routed experts (Mixtral routing: softmax over all experts, renormalised top-k weights)
    with the Switch Transformer load-balancing loss."""

    def __init__(self, args: ModelArgs, device: Device = None) -> None:
        super().__init__()
        self.num_experts, self.top_k = args.num_experts, args.experts_per_token
        self.gate = nn.Linear(args.hidden_size, args.num_experts, bias=False, device=device)
        self.experts = nn.ModuleList(Expert(args, device) for _ in range(args.num_experts))
        self.expert_counts: Tensor | None = None
        """Tokens routed to each expert in the latest forward (detached)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = F.softmax(self.gate(flat).float(), dim=-1)
        top_w, top_i = torch.topk(probs, self.top_k, dim=-1)
        top_w = (top_w / top_w.sum(dim=-1, keepdim=True)).to(flat.dtype)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            # every expert runs, on zero tokens if need be, so each parameter gets a gradient
            tok, slot = torch.where(top_i == e)
            out.index_add_(0, tok, expert(flat[tok]) * top_w[tok, slot, None])
        routed = F.one_hot(top_i, self.num_experts).sum(dim=1).float()  # (tokens, experts)
        self.expert_counts = routed.sum(dim=0).detach()
        fraction = routed.mean(dim=0) / self.top_k
        balance = self.num_experts * torch.sum(fraction * probs.mean(dim=0))  # 1.0 when balanced
        return out.reshape(shape), balance


class DecoderLayer(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, args: ModelArgs, layer_idx: int, device: Device = None) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(args.hidden_size, args.norm_eps, device)
        self.self_attn = Attention(args, layer_idx, device)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.norm_eps, device)
        self.mlp: MLP | None = None
        self.block_sparse_moe: SparseMoE | None = None
        if args.is_moe:
            self.block_sparse_moe = SparseMoE(args, device)
        else:
            self.mlp = MLP(args, device)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor | None,
                cache: KVCache | None = None) -> tuple[Tensor, Tensor | None]:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        h = self.post_attention_layernorm(x)
        if self.block_sparse_moe is not None:
            y, balance = self.block_sparse_moe(h)
            return x + y, balance
        assert self.mlp is not None
        return x + self.mlp(h), None


class TransformerBody(nn.Module):
    """Embeddings, blocks and final norm (HF's `model.` prefix)."""

    def __init__(self, args: ModelArgs, device: Device = None) -> None:
        super().__init__()
        # given its weight, nn.Embedding skips its default init (normal_ on meta would import torch._dynamo)
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size,
                                         _weight=torch.empty(args.vocab_size, args.hidden_size, device=device))
        self.layers = nn.ModuleList(DecoderLayer(args, i, device) for i in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.norm_eps, device)
        self.rotary_emb = RotaryEmbedding(args, device)


class Transformer(nn.Module):
    """The causal language model. `forward` returns logits; for MoE, `aux_loss` holds the mean
    load-balancing loss of the latest forward (weight it with `args.router_aux_loss_coef`)."""

    def __init__(self, args: ModelArgs) -> None:
        """Built on the default device and initialised (`init_weights`); under `torch.device("meta")`
        nothing is allocated or initialised until `to_empty` and `init_weights`, which give the same
        weights for the same seed."""
        super().__init__()
        self.args = args
        device = torch.get_default_device()
        # built on meta: no storage, no default init drawn from the RNG (init_weights does it)
        self.model = TransformerBody(args, "meta")
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False, device="meta")
        self.tie_weights()
        self.gradient_checkpointing = False
        """Recompute each block's activations in the backward pass."""
        self.aux_loss: Tensor | None = None
        if device.type != "meta":
            self.materialize(device)

    def materialize(self, device: torch.device | str, init: bool = True) -> None:
        """Storage on `device` for every parameter and buffer still on the meta device (the local shards
        of sharded ones), then `init_weights` (unless `init` is False: the caller loads weights into it)."""
        if any(hasattr(p, "to_local") for p in self.parameters()):  # FSDP2: DTensors make their shards
            self.to_empty(device=device)
        else:  # what to_empty does, without the meta-tensor ops that import sympy and dynamo (~1-3 s)
            for module in self.modules():
                for name, p in module._parameters.items():
                    if p is not None and p.is_meta:
                        module._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device),
                                                                p.requires_grad)
                for name, b in module._buffers.items():
                    if b is not None and b.is_meta:
                        module._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device=device)
            self.tie_weights()  # each module got its own new parameter above
        if init:
            self.init_weights()

    def tie_weights(self) -> None:
        """Make the output projection the embedding table itself when `args.tie_embeddings`."""
        if self.args.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, init_std) for every matrix, residual outputs scaled by 1/sqrt(2 * layers); norms 1.

        Also materialises a model built on the meta device once its storage exists (`to_empty`), sharded
        or not: a sharded parameter (a DTensor, FSDP2) gets its own part of the values the whole
        parameter would get, one full parameter at a time, so the weights are the same whatever the
        number of workers, and equal to an eager build's on the same device for the same seed."""
        std = self.args.init_std
        out_std = std / math.sqrt(2 * self.args.num_layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("layernorm.weight") or name == "model.norm.weight":
                    _init_(p, lambda t: t.fill_(1.0))
                elif name.endswith(".bias"):
                    _init_(p, lambda t: t.zero_())
                elif name.endswith(("o_proj.weight", "down_proj.weight", "w2.weight")):
                    _init_(p, lambda t: t.normal_(0.0, out_std, generator=generator))
                else:
                    _init_(p, lambda t: t.normal_(0.0, std, generator=generator))
            inv_freq = self.model.rotary_emb.inv_freq
            if not inv_freq.is_meta:
                inv_freq.copy_(rope_inv_freq(self.args))

    def forward(self, input_ids: Tensor, position_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """Logits (B, T, vocab) for `input_ids` (B, T).

        attention_mask: (B, cached + T) with 1 for real tokens and 0 for padding (left padding is fine).
        position_ids: (B, T); by default counted from the cache length, skipping padding.
        cache: keys/values of earlier positions; updated in place and advanced by T."""
        b, t = input_ids.shape
        past = cache.length if cache is not None else 0
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -t:]
            else:
                position_ids = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
        mask = None
        if attention_mask is not None or past > 0:
            mask = _attention_mask(b, t, past, attention_mask, input_ids.device)
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(position_ids, h.dtype)
        balances: list[Tensor] = []
        for layer in self.model.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                h, balance = checkpoint(layer, h, cos, sin, mask, use_reentrant=False)
            else:
                h, balance = layer(h, cos, sin, mask, cache)
            if balance is not None:
                balances.append(balance)
        if cache is not None:
            cache.length += t
        self.aux_loss = torch.stack(balances).mean() if balances else None
        logits: Tensor = self.lm_head(self.model.norm(h))
        return logits

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (optionally without the input embedding table)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            total -= self.model.embed_tokens.weight.numel()
        return total


def _init_(p: Tensor, fill: Callable[[Tensor], object]) -> None:
    """Fill `p` in place; a DTensor with its shard of the values `fill` gives the full tensor."""
    if p.is_meta:
        return
    local = getattr(p, "to_local", None)
    if local is None:
        fill(p)
        return
    from torch.distributed.tensor import DTensor, distribute_tensor

    assert isinstance(p, DTensor)
    full = torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device)
    fill(full)  # every worker draws the same values (same seed), keeps its part: no communication
    part = distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None)
    p.to_local().copy_(part.to_local())


def _window_band(t: int, length: int, window: int, device: torch.device) -> Tensor:
    """Boolean (T, length) causal band of the last T queries: key j is seen by query i when
    i - window < j <= i (Mistral's sliding window; row distance is sample distance, also in packed rows
    and under left padding, since a sample's tokens are contiguous)."""
    q_pos = torch.arange(length - t, length, device=device)[:, None]
    k_pos = torch.arange(length, device=device)[None, :]
    return (k_pos <= q_pos) & (k_pos > q_pos - window)


def _attention_mask(b: int, t: int, past: int, attention_mask: Tensor | None,
                    device: torch.device) -> Tensor:
    """Boolean (B, 1, T, past + T) mask: causal, padding keys hidden, each query sees itself."""
    q_pos = torch.arange(past, past + t, device=device)[:, None]
    k_pos = torch.arange(past + t, device=device)[None, :]
    mask = (k_pos <= q_pos)[None, None].expand(b, 1, t, past + t)
    if attention_mask is not None:
        mask = mask & attention_mask.bool()[:, None, None, :]
        # a padding query would see nothing and produce NaN; let it see itself
        mask = mask | (k_pos == q_pos)[None, None]
    return mask
