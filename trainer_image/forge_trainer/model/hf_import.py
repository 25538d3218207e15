"""Importing a Hugging Face model directory (Llama, Mistral, Qwen2, Mixtral, or a Forge export) into our
Transformer, from any origin: config.json, then `model.safetensors` or the shards that
`model.safetensors.index.json` lists, in bf16, fp16 or fp32.

Nothing is executed and nothing is fetched from a hub: config.json is read as data (no
`trust_remote_code`), pickled weights (`pytorch_model.bin`, `*.pth`) are never opened, and a config
whose maths our model cannot reproduce exactly is refused with a message naming `model_type` or the key.

`load_weights` fills a model built on the meta device and materialised, sharded or not: each parameter
reads only the rows of its local shard (FSDP2 shards dim 0) through safetensors' `get_slice`, one
few MiB of rows at a time with the file closed after each read, so a worker's peak host memory stays near
its shard. Continued pretraining, SFT and RL (full, LoRA, QLoRA) all load their base this way
(`forge_trainer.train.base_model`).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from forge_trainer.config import StoreConfig
from forge_trainer.model.args import ModelArgs, check_model_args
from forge_trainer.model.transformer import Transformer, rope_inv_freq
from forge_trainer.store import join_key, open_uri, split_uri

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "mixtral")
"""The config.json `model_type`s imported (plus Forge's own exports, which carry `forge`)."""
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")

# Defaults of transformers' config classes for keys a config.json may leave out.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rope_theta": 10_000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 2048},
    "mistral": {"rope_theta": 10_000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096 * 32},
    "qwen2": {"rope_theta": 10_000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 32768},
    "mixtral": {"rope_theta": 1e6, "rms_norm_eps": 1e-5, "max_position_embeddings": 4096 * 32},
}

# Keys the importer reads, checks or knows not to change the forward pass (token ids, bookkeeping).
_KNOWN_KEYS = {
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype", "bos_token_id",
    "eos_token_id", "pad_token_id", "use_cache", "initializer_range", "pretraining_tp", "output_router_logits",
    "router_aux_loss_coef", "_name_or_path", "max_window_layers", "tie_word_embeddings", "vocab_size",
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "hidden_act", "attention_dropout", "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window",
    "num_local_experts", "num_experts_per_tok", "router_jitter_noise", "layer_types", "quantization_config",
    "forge", "generation_config", "chat_template", "output_attentions", "output_hidden_states",
    "return_dict", "is_decoder", "use_return_dict", "id2label", "label2id", "problem_type",
}


READ_BYTES = 16 << 20
"""About how many bytes of a parameter are read from the files at a time (host memory beyond the shards)."""


class HFImportError(ValueError):
    """A model directory this importer cannot load exactly; the message names the file, tensor or key."""


def args_from_hf_config(config: dict[str, Any], where: str = CONFIG_NAME) -> ModelArgs:
    """ModelArgs of a config.json: Forge's exports carry them verbatim under `forge`; llama, mistral,
    qwen2 and mixtral are translated, refusing what our model cannot compute exactly."""
    if not isinstance(config, dict):
        raise HFImportError(f"{where}: not a JSON object")
    if isinstance(config.get("forge"), dict):
        try:
            return ModelArgs.from_dict(config["forge"])
        except TypeError as exc:
            raise HFImportError(f"{where}: 'forge' does not describe a model: {exc}") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise HFImportError(f"{where}: model_type {model_type!r} is not supported; supported: "
                            f"{', '.join(SUPPORTED_MODEL_TYPES)} (and Forge's own exports)")
    _refuse_unrepresentable(config, model_type, where)
    unknown = sorted(k for k in config if k not in _KNOWN_KEYS)
    if unknown:
        log.warning("%s: ignoring keys the importer does not know for model_type %s: %s", where, model_type, unknown)
    defaults = _DEFAULTS[model_type]

    def get(key: str, kind: type, default: Any = None) -> Any:
        value = config.get(key, defaults.get(key, default))
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HFImportError(f"{where}: {key} must be a number (model_type {model_type}), got {value!r}")
        if kind is int and (not float(value).is_integer() or value < 1):
            raise HFImportError(f"{where}: {key} must be a positive integer, got {value!r}")
        return kind(value)

    heads = get("num_attention_heads", int)
    hidden = get("hidden_size", int)
    head_dim = config.get("head_dim")
    if head_dim is not None:
        head_dim = get("head_dim", int)
    rope_theta, rope_scaling = _rope(config, defaults, where)
    bias = bool(config.get("attention_bias", False))
    window = config.get("sliding_window") if model_type in ("mistral", "mixtral") else None
    is_moe = model_type == "mixtral"
    args = ModelArgs(
        vocab_size=get("vocab_size", int),
        hidden_size=hidden,
        num_layers=get("num_hidden_layers", int),
        num_heads=heads,
        num_kv_heads=get("num_key_value_heads", int, heads) if config.get("num_key_value_heads") else heads,
        intermediate_size=get("intermediate_size", int),
        max_seq_len=get("max_position_embeddings", int),
        rope_theta=rope_theta,
        norm_eps=get("rms_norm_eps", float),
        num_experts=get("num_local_experts", int) if is_moe else 0,
        experts_per_token=get("num_experts_per_tok", int) if is_moe else 0,
        router_aux_loss_coef=float(config.get("router_aux_loss_coef") or 0.01),
        init_std=float(config.get("initializer_range") or 0.02),
        attention_head_dim=head_dim if head_dim is not None and head_dim * heads != hidden else None,
        qkv_bias=model_type == "qwen2" or bias,
        o_bias=bias,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        sliding_window=get("sliding_window", int) if window is not None else None,
        rope_scaling=rope_scaling,
        family=model_type,
    )
    try:
        check_model_args(args)
    except ValueError as exc:
        raise HFImportError(f"{where}: {exc}") from None
    return args


def _refuse_unrepresentable(config: dict[str, Any], model_type: str, where: str) -> None:
    """HFImportError naming the first key whose value changes the maths in a way our model cannot follow."""
    refusals: list[tuple[str, bool, str]] = [
        ("quantization_config", "quantization_config" in config,
         "quantized checkpoints are not imported; mirror the bf16/fp16/fp32 weights"),
        ("hidden_act", config.get("hidden_act", "silu") != "silu", "only silu (SwiGLU) MLPs are supported"),
        ("mlp_bias", bool(config.get("mlp_bias")), "MLP biases are not supported"),
        ("attention_dropout", bool(config.get("attention_dropout")), "attention dropout must be 0.0"),
        ("router_jitter_noise", bool(config.get("router_jitter_noise")), "router jitter noise must be 0.0"),
        ("use_sliding_window", model_type == "qwen2" and bool(config.get("use_sliding_window")),
         "Qwen2's per-layer sliding window (max_window_layers) is not supported"),
        ("layer_types", any(t != "full_attention" for t in config.get("layer_types") or [])
         and model_type == "qwen2", "every layer must use full attention"),
    ]
    for key, refused, why in refusals:
        if refused:
            raise HFImportError(f"{where}: {key}={config.get(key)!r} is not supported for model_type "
                                f"{model_type}: {why}")


def _rope(config: dict[str, Any], defaults: dict[str, Any], where: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from config.json's rope_theta / rope_scaling or transformers 5's
    rope_parameters; refuses scalings other than linear and llama3."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise HFImportError(f"{where}: rope_scaling must be an object, got {params!r}")
    key = "rope_parameters" if config.get("rope_parameters") else "rope_scaling"
    theta = config.get("rope_theta") or params.get("rope_theta") or defaults["rope_theta"]
    kind = params.get("rope_type") or params.get("type") or "default"
    if kind not in SUPPORTED_ROPE_TYPES:
        raise HFImportError(f"{where}: {key}.rope_type {kind!r} is not supported; supported: "
                            f"{', '.join(SUPPORTED_ROPE_TYPES)}")
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise HFImportError(f"{where}: {key}.partial_rotary_factor must be 1.0")
    needed = {"default": (), "linear": ("factor",),
              "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
    missing = [k for k in needed[kind] if not isinstance(params.get(k), (int, float))]
    if missing:
        raise HFImportError(f"{where}: {key} of rope_type {kind} needs {', '.join(missing)}")
    scaling = None if kind == "default" else {"rope_type": kind, **{k: params[k] for k in needed[kind]}}
    return float(theta), scaling


@dataclass(frozen=True)
class _Source:
    """Where the rows of one of our parameters live: a tensor of a file, optionally one expert of a fused
    tensor, starting at a row offset."""

    file: Path
    key: str
    expert: int | None = None
    row_offset: int = 0


_FUSED = re.compile(r"^(model\.layers\.\d+)\.block_sparse_moe\.experts\.(\d+)\.(w[123])\.weight$")


class Checkpoint:
    """The safetensors files of a local model directory and which file holds each tensor."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        index = directory / WEIGHTS_INDEX_NAME
        single = directory / WEIGHTS_NAME
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError("weight_map is not an object")
            except (ValueError, KeyError, TypeError) as exc:
                raise HFImportError(f"{index}: not a safetensors index: {exc}") from None
            self.files = {str(k): self._file(str(v)) for k, v in weight_map.items()}
        elif single.is_file():
            with self._open(single) as f:
                self.files = {k: single for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        else:
            pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pth"))
            hint = f" (found {', '.join(pickles)}: pickled weights are code and are not opened; convert them to " \
                   "safetensors)" if pickles else ""
            raise HFImportError(f"{directory}: no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}{hint}")
        self.fused_experts = any(k.endswith("mlp.experts.gate_up_proj") for k in self.files)

    def _file(self, name: str) -> Path:
        path = (self.directory / name).resolve()
        if path.parent != self.directory.resolve() or not path.is_file():
            raise HFImportError(f"{self.directory / WEIGHTS_INDEX_NAME}: weight file {name!r} is not a file of "
                                "this directory")
        return path

    @staticmethod
    def _open(path: Path) -> Any:
        try:
            return safe_open(str(path), framework="pt")
        except Exception as exc:  # safetensors raises its own SafetensorError for a damaged header
            raise HFImportError(f"{path}: not a readable safetensors file: {exc}") from None

    def source(self, name: str, intermediate: int) -> _Source | None:
        """Where our parameter `name` is stored; None when absent."""
        if name in self.files:
            return _Source(self.files[name], name)
        fused = _FUSED.match(name)
        if fused and self.fused_experts:  # transformers 5 saves Mixtral experts as fused 3-d tensors
            layer, expert, w = fused.group(1), int(fused.group(2)), fused.group(3)
            key = f"{layer}.mlp.experts.down_proj" if w == "w2" else f"{layer}.mlp.experts.gate_up_proj"
            if key in self.files:
                return _Source(self.files[key], key, expert, intermediate if w == "w3" else 0)
        gate = name.replace(".block_sparse_moe.gate.", ".mlp.gate.")
        if gate != name and gate in self.files:
            return _Source(self.files[gate], gate)
        return None

    def read_rows(self, src: _Source, start: int, stop: int, full_shape: torch.Size) -> Tensor:
        """Rows [start, stop) of the tensor `src` names (only those bytes are read), checked to be a
        tensor of `full_shape`."""
        with self._open(src.file) as f:
            try:
                piece = f.get_slice(src.key)
            except Exception as exc:
                raise HFImportError(f"{src.file}: has no tensor {src.key!r} although the index lists it") from exc
            shape = list(piece.get_shape())
            expected = list(full_shape)
            if src.expert is not None:
                ok = len(shape) == 3 and src.expert < shape[0] and shape[2] == expected[1] and \
                    shape[1] >= src.row_offset + expected[0]
            else:
                ok = shape == expected
            if not ok:
                raise HFImportError(f"{src.file}: tensor {src.key} has shape {shape}; the model expects "
                                    f"{expected} (config.json disagrees with the weights)")
            lo, hi = src.row_offset + start, src.row_offset + stop
            if src.expert is not None:
                rows: Tensor = piece[src.expert:src.expert + 1, lo:hi][0]
            else:
                rows = piece[lo:hi]
            if rows.dtype not in (torch.bfloat16, torch.float16, torch.float32):
                raise HFImportError(f"{src.file}: tensor {src.key} is {rows.dtype}; bf16, fp16 or fp32 expected")
            return rows


def _local_rows(p: Tensor) -> tuple[Tensor, int]:
    """The storage this worker holds of parameter `p` and the first global row it holds (FSDP2 shards dim 0)."""
    to_local = getattr(p, "to_local", None)
    if to_local is None:
        return p.data, 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    local: Tensor = to_local()
    _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)  # type: ignore[attr-defined]
    if any(o for o in offset[1:]):
        raise HFImportError("only parameters sharded along their first dimension can be loaded")
    return local, int(offset[0]) if offset else 0


def assign_rows(p: Tensor, full: Tensor) -> None:
    """Copy this worker's rows of `full` (the values of the whole parameter) into `p`, sharded or not."""
    local, start = _local_rows(p)
    local.copy_(full[start:start + local.shape[0]])


VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")
"""The parameters with a row per token: a vocabulary grown for chat tokens has more rows than the base."""


def _no(_: str) -> bool:
    return False


def load_weights(model: Transformer, directory: Path, fresh: Callable[[str], bool] = _no) -> None:
    """Copy the weights of the model directory into `model` (materialised, sharded or not): each
    parameter reads only its local rows. Every tensor of the directory must be used: by a parameter,
    or by a buffer of the same name (a weight quantized from `read_tensor` before loading).

    `fresh` names parameters the base does not hold (adapters), left for the caller to initialise.
    Embedding and output rows past the base's vocabulary (tokens a chat format added) start at the
    mean of the base's rows, streamed from the file."""
    ckpt = Checkpoint(directory)
    base_vocab = read_config(directory)[1].vocab_size
    used: set[str] = set()
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is the embedding: listed once
            if fresh(name):
                continue
            src = ckpt.source(name, model.args.intermediate_size)
            if src is None:
                raise HFImportError(f"{directory}: no tensor {name} (model_type {model.args.family or 'forge'}"
                                    f"{', untied' if name == 'lm_head.weight' else ''})")
            used.add(src.key)
            _fill(ckpt, src, p, base_vocab if name in VOCAB_ROWS else p.shape[0])
        inv_freq = model.model.rotary_emb.inv_freq
        if not inv_freq.is_meta:
            inv_freq.copy_(rope_inv_freq(model.args))
    if model.args.tie_embeddings:
        used.add("lm_head.weight")  # a tied checkpoint may still store it (the same values)
    for name, _ in model.named_buffers():  # quantized weights took their tensors before loading
        src = ckpt.source(name, model.args.intermediate_size)
        if src is not None:
            used.add(src.key)
    left = sorted(k for k in ckpt.files if k not in used and not k.endswith("rotary_emb.inv_freq"))
    if left:
        raise HFImportError(f"{directory}: tensors the model has no place for: {', '.join(left[:5])}"
                            f"{f' (+{len(left) - 5} more)' if len(left) > 5 else ''}")


def _fill(ckpt: Checkpoint, src: _Source, p: Tensor, base_rows: int) -> None:
    """This worker's rows of `p` from `src`: rows below `base_rows` read from the file a few MiB at a
    time, straight into the parameter's storage; rows from `base_rows` on (a grown vocabulary) set to
    the mean of the file's rows."""
    local, start = _local_rows(p)
    if local.numel() == 0:
        return
    if base_rows > p.shape[0]:
        raise HFImportError(f"{src.file}: the base has {base_rows} rows of {src.key}, more than the model's "
                            f"{p.shape[0]}")
    file_shape = torch.Size([base_rows, *p.shape[1:]])
    step = max(1, READ_BYTES // max(1, local[0].numel() * local.element_size()))
    stop = min(local.shape[0], max(0, base_rows - start))
    for lo in range(0, stop, step):
        hi = min(lo + step, stop)
        local[lo:hi].copy_(ckpt.read_rows(src, start + lo, start + hi, file_shape))
    if stop < local.shape[0]:
        local[stop:].copy_(_row_mean(ckpt, src, file_shape, step).to(local.dtype).expand_as(local[stop:]))


def _row_mean(ckpt: Checkpoint, src: _Source, shape: torch.Size, step: int) -> Tensor:
    """The mean row of the tensor `src`, summed in float64 a few MiB of rows at a time."""
    total = torch.zeros(shape[1:], dtype=torch.float64)
    for lo in range(0, shape[0], step):
        total += ckpt.read_rows(src, lo, min(lo + step, shape[0]), shape).double().sum(0)
    return total / shape[0]


def read_tensor(directory: Path, name: str, shape: torch.Size, intermediate: int) -> Tensor:
    """The whole tensor our parameter `name` (of `shape`) loads from, in float32: for what must see a
    weight whole before it is placed (QLoRA quantizes it to NF4); one tensor in memory."""
    ckpt = Checkpoint(directory)
    src = ckpt.source(name, intermediate)
    if src is None:
        raise HFImportError(f"{directory}: no tensor {name}")
    return ckpt.read_rows(src, 0, shape[0], shape).float()


def read_config(directory: Path) -> tuple[dict[str, Any], ModelArgs]:
    """config.json of a local model directory and the ModelArgs it describes."""
    path = directory / CONFIG_NAME
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise HFImportError(f"{directory}: no {CONFIG_NAME}; not a Hugging Face model directory") from None
    except (OSError, ValueError) as exc:
        raise HFImportError(f"{path}: not readable JSON: {exc}") from None
    return config, args_from_hf_config(config, str(path))


def load_pretrained(directory: Path, device: torch.device | str = "cpu") -> tuple[Transformer, ModelArgs]:
    """Our Transformer, whole, in float32 on `device`, from a local model directory."""
    _, args = read_config(directory)
    with torch.device("meta"):
        model = Transformer(args)
    model.materialize(device, init=False)
    load_weights(model, directory)
    return model, args


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "tokenizer.model", "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt")
"""The files of a model directory that make up its tokenizer and chat template (as transformers saves them)."""


def read_tokenizer_files(uri: str, store_config: StoreConfig | None = None) -> dict[str, bytes]:
    """The TOKENIZER_FILES present in the model directory at `uri` (a local path or store URI), by name."""
    store, prefix = open_uri(uri, store_config)
    return {name: store.get_bytes(join_key(prefix, name)) for name in TOKENIZER_FILES
            if store.exists(join_key(prefix, name))}


SKIPPED = re.compile(r"(\.bin|\.pth|\.pt|\.ckpt|\.h5|\.msgpack|\.gguf|\.onnx)$")
"""Files a fetch leaves behind: other frameworks' weights and pickles (never read)."""


def fetch_model_dir(uri: str, dest: Path, store_config: StoreConfig | None = None) -> Path:
    """A local directory holding the model at `uri`: the directory itself for a local path, else a copy
    of the top-level files under the s3 prefix in `dest` (pickled and other-format weights left out)."""
    scheme, root, _ = split_uri(uri)
    if scheme == "file":
        return Path(root)
    store, prefix = open_uri(uri, store_config)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    dest.mkdir(parents=True, exist_ok=True)
    for obj in _top_level(store.list(prefix), prefix):
        store.get_file(join_key(prefix, obj), dest / obj)
    return dest


def _top_level(objects: Iterator[Any], prefix: str) -> Iterator[str]:
    for obj in objects:
        rel = obj.key[len(prefix):]
        if rel and "/" not in rel and _is_model_file(rel):
            yield rel


def _is_model_file(name: str) -> bool:
    return not SKIPPED.search(name) and not name.startswith(".")


def model_files(directory: Path) -> list[str]:
    """The files of a local model directory that a fetch copies and the importer may read (top level,
    other formats' weights and hidden files left out), by name."""
    return sorted(p.name for p in directory.iterdir() if p.is_file() and _is_model_file(p.name))
