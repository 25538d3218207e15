"""Decoder-only transformer, dense and MoE, with Hugging Face-compatible weights."""
