"""Hugging Face–format export of our model, and loading it back.

An export directory holds model.safetensors, config.json (the base's model_type: llama, mistral, qwen2 or
mixtral; LlamaForCausalLM or MixtralForCausalLM for a model Forge built),
generation_config.json, tokenizer.json and tokenizer_config.json, so `AutoModelForCausalLM` and
`AutoTokenizer` load it unchanged. Our own dimensions ride along in config.json under `forge`.

tokenizer_config.json always carries a chat template, so every export (a pretrained base model too)
answers chat requests: ChatML when the tokenizer has `<|im_start|>` and `<|im_end|>` (every tokenizer
Forge trains has them, and fine-tuning teaches the model that format), otherwise the same layout with
the tokenizer's end-of-text token closing each turn. Either way a turn ends with a token that stops
generation: `<|im_end|>` is a stop token of the builtin server, and end of text is the model's eos.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from forge_trainer.config import StoreConfig
from forge_trainer.model.args import ModelArgs
from forge_trainer.model.files import model_dir_digest
from forge_trainer.model.hf_import import (
    args_from_hf_config,
    fetch_model_dir,
    load_pretrained,
    read_tokenizer_files,
)
from forge_trainer.model.transformer import Transformer
from forge_trainer.store import join_key, open_uri, split_uri

__all__ = ["ExportResult", "args_from_hf_config", "export_hf", "hf_config", "load_hf", "write_hf_dir"]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
GENERATION_CONFIG_NAME = "generation_config.json"
TOKENIZER_NAME = "tokenizer.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, GENERATION_CONFIG_NAME, TOKENIZER_NAME, TOKENIZER_CONFIG_NAME)

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The chat template of tokenizers with the ChatML tokens: the format supervised fine-tuning trains
(`forge_trainer.train.chat` writes the same template into its exports)."""
EOS_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] + '\n' + message['content'] + (eos_token or '') + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant\n' }}{% endif %}"
)
"""The chat template of tokenizers without the ChatML tokens: ChatML's layout, each turn closed by the
tokenizer's end-of-text token."""


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and its digest (sha256 over the names and digests of its files)."""

    uri: str
    digest: str


def clean_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Weights named as in our module tree, without wrapper prefixes (DDP `module.`, compile
    `_orig_mod.`, activation checkpointing), as contiguous CPU tensors."""
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        for prefix in ("module.", "_orig_mod.", "_checkpoint_wrapped_module."):
            name = name.replace(prefix, "")
        out[name] = tensor.detach().to("cpu").contiguous()
    return out


_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "mixtral": "MixtralForCausalLM"}


def hf_config(args: ModelArgs, eos_token_id: int, bos_token_id: int | None,
              pad_token_id: int | None, dtype: torch.dtype) -> dict[str, Any]:
    """config.json for the base's model_type (`args.family`), else LlamaForCausalLM (dense) or
    MixtralForCausalLM (moe)."""
    family = args.family or ("mixtral" if args.is_moe else "llama")
    rope: dict[str, Any] = {"rope_type": "default", **(args.rope_scaling or {}), "rope_theta": args.rope_theta}
    config: dict[str, Any] = {
        "architectures": [_ARCHITECTURES[family]],
        "model_type": family,
        "vocab_size": args.vocab_size,
        "hidden_size": args.hidden_size,
        "intermediate_size": args.intermediate_size,
        "num_hidden_layers": args.num_layers,
        "num_attention_heads": args.num_heads,
        "num_key_value_heads": args.num_kv_heads,
        "head_dim": args.head_dim,
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": args.rope_scaling,  # transformers 4 and vLLM read this one
        "rope_parameters": rope,  # transformers 5 reads this one
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": args.init_std,
        "tie_word_embeddings": args.tie_embeddings,
        "use_cache": True,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "forge": args.to_dict(),
    }
    if family == "mixtral":
        config.update({
            "num_local_experts": args.num_experts,
            "num_experts_per_tok": args.experts_per_token,
            "router_aux_loss_coef": args.router_aux_loss_coef,
            "output_router_logits": False,
            "router_jitter_noise": 0.0,
            "sliding_window": args.sliding_window,
        })
    elif family == "mistral":
        config["sliding_window"] = args.sliding_window
    elif family == "qwen2":
        config.update({"use_sliding_window": False, "sliding_window": None})
    else:
        config.update({"attention_bias": args.qkv_bias, "mlp_bias": False, "pretraining_tp": 1})
    return config


def _token(tokenizer: dict[str, Any], token_id: int | None) -> str | None:
    """The string of a token id in a tokenizer.json (added tokens first, then the vocabulary)."""
    if token_id is None:
        return None
    for added in tokenizer.get("added_tokens", []):
        if added.get("id") == token_id:
            return str(added["content"])
    vocab = tokenizer.get("model", {}).get("vocab", {})
    if isinstance(vocab, dict):
        for text, idx in vocab.items():
            if idx == token_id:
                return str(text)
    return None


def _has_token(tokenizer: dict[str, Any], text: str) -> bool:
    """Whether a tokenizer.json has `text` as one token (an added token or a vocabulary entry)."""
    if any(added.get("content") == text for added in tokenizer.get("added_tokens", [])):
        return True
    vocab = tokenizer.get("model", {}).get("vocab", {})
    return isinstance(vocab, dict) and text in vocab


def chat_template(tokenizer: dict[str, Any]) -> str:
    """The chat template an export of a model with this tokenizer.json carries (see the module docstring)."""
    return CHATML_TEMPLATE if _has_token(tokenizer, IM_START) and _has_token(tokenizer, IM_END) \
        else EOS_CHAT_TEMPLATE


def write_hf_dir(state: Mapping[str, Tensor], args: ModelArgs, tokenizer_json: bytes | None,
                 directory: Path, *, eos_token_id: int, bos_token_id: int | None = None,
                 pad_token_id: int | None = None, dtype: torch.dtype = torch.float32) -> list[str]:
    """Write the export files into a local directory; return their names.

    A tied model whose head no longer equals its embedding (a LoRA adapter on `lm_head` merged into it) is
    written untied, with both tensors."""
    directory.mkdir(parents=True, exist_ok=True)
    cleaned = clean_state_dict(state)
    head, embed = cleaned.get("lm_head.weight"), cleaned.get("model.embed_tokens.weight")
    if args.tie_embeddings and head is not None and embed is not None and not torch.equal(head, embed):
        args = replace(args, tie_embeddings=False)
    weights = {k: v.to(dtype) for k, v in cleaned.items()
               if not (args.tie_embeddings and k == "lm_head.weight")}  # tied: the embedding is the head
    save_file(weights, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    config = hf_config(args, eos_token_id, bos_token_id, pad_token_id, dtype)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True))
    generation = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id,
                  "do_sample": False}
    (directory / GENERATION_CONFIG_NAME).write_text(json.dumps(generation, indent=2, sort_keys=True))
    names = [WEIGHTS_NAME, CONFIG_NAME, GENERATION_CONFIG_NAME]
    if tokenizer_json is not None:
        (directory / TOKENIZER_NAME).write_bytes(tokenizer_json)
        parsed = json.loads(tokenizer_json)
        tok_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": args.max_seq_len,
            "clean_up_tokenization_spaces": False,
            "eos_token": _token(parsed, eos_token_id),
            "bos_token": _token(parsed, bos_token_id),
            "pad_token": _token(parsed, pad_token_id),
            "chat_template": chat_template(parsed),
        }
        tok_config = {k: v for k, v in tok_config.items() if v is not None}
        (directory / TOKENIZER_CONFIG_NAME).write_text(json.dumps(tok_config, indent=2, sort_keys=True))
        names += [TOKENIZER_NAME, TOKENIZER_CONFIG_NAME]
    return names


def _read_bytes(uri: str | Path, store_config: StoreConfig | None) -> bytes:
    path = Path(uri) if isinstance(uri, Path) else None
    if path is None and split_uri(str(uri))[0] == "file":
        path = Path(split_uri(str(uri))[1])
    if path is not None:
        return path.read_bytes()
    store, key = open_uri(str(uri), store_config)
    return store.get_bytes(key)


def export_hf(model: nn.Module | Mapping[str, Tensor], args: ModelArgs, tokenizer_path: str | Path | None,
              out: str | Path, *, eos_token_id: int, bos_token_id: int | None = None,
              pad_token_id: int | None = None, store_config: StoreConfig | None = None,
              dtype: torch.dtype = torch.float32, base_uri: str | None = None) -> ExportResult:
    """Export weights (a module or a full state dict) as a Hugging Face model directory at `out`
    (a local directory or an object-store URI). `tokenizer_path` is a local path or URI of the
    dataset's tokenizer.json. When `base_uri` (the model trained from) has that very tokenizer.json,
    the export keeps the base's tokenizer files (tokenizer_config.json with its chat template,
    special_tokens_map.json, ...) instead of writing its own. Files are written with atomic puts,
    config.json last."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tokenizer_json = _read_bytes(tokenizer_path, store_config) if tokenizer_path is not None else None
    with tempfile.TemporaryDirectory(prefix="forge-export-") as tmp:
        staging = Path(tmp)
        names = write_hf_dir(state, args, tokenizer_json, staging, eos_token_id=eos_token_id,
                             bos_token_id=bos_token_id, pad_token_id=pad_token_id, dtype=dtype)
        base_files = read_tokenizer_files(base_uri, store_config) if base_uri and tokenizer_json else {}
        if base_files.get(TOKENIZER_NAME) == tokenizer_json:
            for name, data in base_files.items():
                (staging / name).write_bytes(data)
            names = sorted(set(names) | set(base_files))
        digest = model_dir_digest(staging)
        store, prefix = open_uri(str(out), store_config)
        # config.json last: a reader that finds it finds the weights too
        for name in sorted(names, key=lambda n: n == CONFIG_NAME):
            store.put_file(join_key(prefix, name), staging / name)
        return ExportResult(uri=store.uri(prefix), digest=digest)


def load_hf(src: str | Path, store_config: StoreConfig | None = None,
            device: torch.device | str = "cpu") -> tuple[Transformer, ModelArgs]:
    """Our Transformer from a Hugging Face–format directory (local path or object-store URI), in
    float32 on `device` (see `hf_import` for what is accepted)."""
    with tempfile.TemporaryDirectory(prefix="forge-load-") as tmp:
        local = fetch_model_dir(str(src), Path(tmp), store_config)
        return load_pretrained(local, device)
