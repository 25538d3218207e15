"""The transformer's architecture as a user writes it: a size preset, explicit dimensions, or both."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Self

from pydantic import Field, model_validator

from forge_trainer.config.wire import WireModel


class Architecture(StrEnum):
    """Decoder-only transformer flavour: dense MLPs, or routed mixture-of-experts MLPs."""

    DENSE = "dense"
    MOE = "moe"


class SizePreset(StrEnum):
    """A named model size; explicit dimensions override the preset's values."""

    TINY = "tiny"
    SMALL = "125m"
    B1 = "1b"
    B7 = "7b"


class ModelConfig(WireModel):
    """The transformer's architecture: a size preset, explicit dimensions, or a preset with overrides."""

    architecture: Architecture = Architecture.DENSE
    """`dense` (Llama-compatible export) or `moe` (Mixtral-compatible export)."""
    size: SizePreset | None = None
    """Named size preset; required unless hiddenSize, numLayers and numHeads are all set."""
    hidden_size: Annotated[int | None, Field(ge=8)] = None
    """Width of the residual stream."""
    num_layers: Annotated[int | None, Field(ge=1)] = None
    """Number of transformer blocks."""
    num_heads: Annotated[int | None, Field(ge=1)] = None
    """Attention heads per block."""
    num_kv_heads: Annotated[int | None, Field(ge=1)] = None
    """Key/value heads for grouped-query attention (defaults to numHeads)."""
    intermediate_size: Annotated[int | None, Field(ge=8)] = None
    """Hidden width of each SwiGLU MLP (or expert)."""
    max_seq_len: Annotated[int | None, Field(ge=16)] = None
    """Longest sequence the model is trained on (rotary embeddings extrapolate poorly beyond it)."""
    num_experts: Annotated[int | None, Field(ge=2)] = None
    """Experts per MoE layer (moe only)."""
    experts_per_token: Annotated[int | None, Field(ge=1)] = None
    """Experts each token is routed to (moe only)."""
    rope_theta: Annotated[float | None, Field(gt=0)] = None
    """Rotary embedding base."""

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.size is None and None in (self.hidden_size, self.num_layers, self.num_heads):
            raise ValueError("set model.size, or all of model.hiddenSize, model.numLayers and model.numHeads")
        if self.hidden_size is not None and self.num_heads is not None and self.hidden_size % self.num_heads:
            raise ValueError(f"model.hiddenSize ({self.hidden_size}) must be divisible by model.numHeads "
                             f"({self.num_heads})")
        if self.num_kv_heads is not None and self.num_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"model.numHeads ({self.num_heads}) must be divisible by model.numKvHeads "
                             f"({self.num_kv_heads})")
        moe_fields = self.num_experts is not None or self.experts_per_token is not None
        if moe_fields and self.architecture is not Architecture.MOE:
            raise ValueError("model.numExperts and model.expertsPerToken need model.architecture: moe")
        if (self.num_experts is not None and self.experts_per_token is not None
                and self.experts_per_token > self.num_experts):
            raise ValueError(f"model.expertsPerToken ({self.experts_per_token}) must not exceed "
                             f"model.numExperts ({self.num_experts})")
        return self
