"""Resolved model dimensions: a ModelConfig (preset and/or explicit dimensions) plus the tokenizer's
vocabulary size become one frozen `ModelArgs`, the only thing the model and the export read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from forge_trainer.config import Architecture, ModelConfig, SizePreset


@dataclass(frozen=True)
class ModelArgs:
    """Every dimension of a decoder-only transformer; dense when num_experts is 0."""

    vocab_size: int
    """Embedding rows (the tokenizer's vocabulary size, special tokens included)."""
    hidden_size: int
    """Width of the residual stream."""
    num_layers: int
    """Transformer blocks."""
    num_heads: int
    """Query heads per block."""
    num_kv_heads: int
    """Key/value heads per block (grouped-query attention)."""
    intermediate_size: int
    """Hidden width of each SwiGLU MLP or expert."""
    max_seq_len: int
    """Longest sequence trained on."""
    rope_theta: float = 10_000.0
    """Rotary embedding base."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    num_experts: int = 0
    """Experts per MoE layer; 0 means dense MLPs."""
    experts_per_token: int = 0
    """Experts each token is routed to (moe only)."""
    router_aux_loss_coef: float = 0.01
    """Weight of the load-balancing loss added to the language-modelling loss (moe only)."""
    init_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    attention_head_dim: int | None = None
    """Width of one attention head when it is not hidden_size / num_heads (a base's config.json head_dim)."""
    qkv_bias: bool = False
    """Biases on the query, key and value projections (Qwen2; Llama's attention_bias)."""
    o_bias: bool = False
    """A bias on the attention output projection (Llama's attention_bias)."""
    tie_embeddings: bool = False
    """The output projection is the embedding table (tie_word_embeddings)."""
    sliding_window: int | None = None
    """Each token attends to at most this many positions, itself included (Mistral); None: all earlier ones."""
    rope_scaling: dict[str, Any] | None = None
    """Rotary frequency scaling as in config.json's rope_scaling: rope_type `linear` (factor) or `llama3`
    (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings); None: plain RoPE."""
    family: str = ""
    """The Hugging Face model_type of the base the weights came from (llama, mistral, qwen2, mixtral), kept
    by the export; empty for a model Forge built (exported as llama or mixtral)."""

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.attention_head_dim or self.hidden_size // self.num_heads

    @property
    def is_moe(self) -> bool:
        """Whether the MLPs are routed mixtures of experts."""
        return self.num_experts > 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelArgs:
        """Inverse of `to_dict`."""
        return cls(**raw)


# Dense presets; MoE presets use the same widths with MOE_DEFAULTS experts.
PRESETS: dict[SizePreset, dict[str, Any]] = {
    SizePreset.TINY: dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=192,
                          max_seq_len=128),
    SizePreset.SMALL: dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4,
                           intermediate_size=2048, max_seq_len=2048),
    SizePreset.B1: dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=5632,
                        max_seq_len=2048),
    SizePreset.B7: dict(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                        intermediate_size=11008, max_seq_len=4096),
}
MOE_DEFAULTS: dict[SizePreset, tuple[int, int]] = {
    SizePreset.TINY: (4, 2),
    SizePreset.SMALL: (8, 2),
    SizePreset.B1: (8, 2),
    SizePreset.B7: (8, 2),
}


def resolve_model_args(config: ModelConfig, vocab_size: int) -> ModelArgs:
    """The preset named by `config.size` with every explicitly set dimension applied on top.

    Raises ValueError naming the field when the result is inconsistent."""
    base: dict[str, Any] = dict(PRESETS[config.size]) if config.size is not None else {}
    overrides = {
        "hidden_size": config.hidden_size,
        "num_layers": config.num_layers,
        "num_heads": config.num_heads,
        "num_kv_heads": config.num_kv_heads,
        "intermediate_size": config.intermediate_size,
        "max_seq_len": config.max_seq_len,
        "rope_theta": config.rope_theta,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    if config.num_heads is not None and config.num_kv_heads is None:
        base["num_kv_heads"] = config.num_heads  # explicit heads without kv heads: plain multi-head
    hidden = base["hidden_size"]
    base.setdefault("num_kv_heads", base["num_heads"])
    base.setdefault("intermediate_size", _default_intermediate(hidden))
    base.setdefault("max_seq_len", 2048)
    if config.architecture is Architecture.MOE:
        default_experts, default_k = MOE_DEFAULTS[config.size] if config.size is not None else (8, 2)
        base["num_experts"] = config.num_experts or default_experts
        base["experts_per_token"] = config.experts_per_token or min(default_k, base["num_experts"])
    args = ModelArgs(vocab_size=vocab_size, **base)
    check_model_args(args)
    return args


def _default_intermediate(hidden: int) -> int:
    """Llama's rule: 8/3 of the width, rounded up to a multiple of 64."""
    return ((8 * hidden // 3) + 63) // 64 * 64


def check_model_args(args: ModelArgs) -> None:
    """Raise ValueError naming the field when the dimensions are inconsistent."""
    if args.vocab_size < 2:
        raise ValueError(f"vocabulary size {args.vocab_size} is too small")
    if args.attention_head_dim is None and args.hidden_size % args.num_heads:
        raise ValueError(f"model.hiddenSize ({args.hidden_size}) must be divisible by model.numHeads "
                         f"({args.num_heads})")
    if args.num_heads % args.num_kv_heads:
        raise ValueError(f"model.numHeads ({args.num_heads}) must be divisible by model.numKvHeads "
                         f"({args.num_kv_heads})")
    if args.head_dim % 2:
        raise ValueError(f"attention head width {args.head_dim} must be even for rotary embeddings")
    if args.is_moe and args.experts_per_token > args.num_experts:
        raise ValueError(f"model.expertsPerToken ({args.experts_per_token}) must not exceed model.numExperts "
                         f"({args.num_experts})")


def with_vocab(args: ModelArgs, vocab_size: int) -> ModelArgs:
    """The same dimensions with another vocabulary size."""
    return replace(args, vocab_size=vocab_size)
