"""Decoder-only transformer, dense and MoE, with Hugging Face-compatible weights."""

from forge_trainer.model.args import ModelArgs, resolve_model_args
from forge_trainer.model.transformer import KVCache, Transformer

__all__ = ["KVCache", "ModelArgs", "Transformer", "resolve_model_args"]
