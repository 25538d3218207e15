"""Loading the served model: fetch its files, check the digest, load with transformers, merge LoRA."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from forge_trainer.config import StoreConfig
from forge_trainer.model.files import ModelFilesError
from forge_trainer.serve.lora import AdapterError, merge_lora
from forge_trainer.serve.model_files import fetch_model_dir, verify_digest

log = logging.getLogger(__name__)

_END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")
"""Our export's end-of-turn and end-of-text tokens: generation stops at either."""


class LoadError(Exception):
    """The model could not be loaded; the message names the URI and the reason."""


@dataclass
class LoadedModel:
    """A model ready to serve."""

    model: PreTrainedModel
    tokenizer: Any
    """The model's Hugging Face tokenizer (with its chat template)."""
    digest: str
    """Digest of the model directory served (see model_files.model_dir_digest)."""
    context_length: int
    """Longest sequence (prompt + completion) the model takes."""
    eos_token_ids: set[int]
    """Tokens that end a completion."""
    pad_token_id: int


def _eos_ids(model: PreTrainedModel, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, list):
            ids.update(int(i) for i in source)
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in _END_OF_TURN_TOKENS if t in vocab)
    return ids


def load_model(model_uri: str, *, cache_dir: Path, digest: str | None = None, adapter_uri: str | None = None,
               adapter_digest: str | None = None, device: str | None = None,
               dtype: torch.dtype | None = None, store: StoreConfig | None = None) -> LoadedModel:
    """Fetch, verify and load the model at `model_uri` (and merge the adapter at `adapter_uri`); s3 URIs
    are read with `store` (endpoint and TLS; credentials come from the environment)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    try:
        path = fetch_model_dir(model_uri, cache_dir / "model", store)
        actual = verify_digest(model_uri, path, digest)
        adapter_path = None
        if adapter_uri is not None:
            adapter_path = fetch_model_dir(adapter_uri, cache_dir / "adapter", store)
            verify_digest(adapter_uri, adapter_path, adapter_digest)
    except ModelFilesError as exc:
        raise LoadError(str(exc)) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise LoadError(f"{model_uri}: not a loadable Hugging Face model directory: {exc}") from exc
    if adapter_path is not None:
        try:
            merge_lora(model, adapter_path)
        except AdapterError as exc:
            raise LoadError(f"{adapter_uri}: {exc}") from exc
    torch.nn.Module.to(model, device=device, dtype=dtype)
    torch.nn.Module.eval(model)
    context = int(getattr(model.config, "max_position_embeddings", 0) or tokenizer.model_max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    log.info("loaded %s (%s, %d parameters, context %d) on %s as %s", model_uri, actual,
             sum(p.numel() for p in model.parameters()), context, device, dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, digest=actual, context_length=context,
                       eos_token_ids=_eos_ids(model, tokenizer), pad_token_id=int(pad))
