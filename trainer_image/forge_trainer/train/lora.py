"""Low-rank adapters (LoRA) and QLoRA for our Transformer, with PEFT-compatible export.

`apply_lora` replaces each targeted `nn.Linear` (matched by the last part of its module name, e.g.
`q_proj`) with a `LoraLinear` that keeps the frozen base weight under the same name (`...q_proj.weight`)
and adds `lora_A` (rank x in) and `lora_B` (out x rank) linears: y = W x + (alpha / rank) * B A dropout(x).
B starts at zero, so the adapted model starts equal to the base. Every other parameter is frozen.

QLoRA (`quantize=True`): the frozen base weights of the targeted layers are stored as 4-bit NF4
with double-quantized block scales (torchao's `NF4Tensor`, which works on CPU and GPU), adapters stay
in float32. A weight whose size does not fit NF4's block layout is not quantized. The rest of the frozen
base (embeddings, output head, norms, untargeted and unquantized linears) is held in bf16
(`frozen_weights`), computed in float32. The NF4
weights are non-persistent buffers: checkpoints hold adapters (and the other frozen weights), and a
resumed run rebuilds the quantized base from the base model.

Export: `save_adapter` writes `adapter_model.safetensors` (`base_model.model.<module path>.lora_A.weight`
/ `lora_B.weight`) and `adapter_config.json` as PEFT writes them; `merged_state_dict` gives base
weights with the adapters folded in (dequantized for QLoRA) under the original names, for the
Hugging Face export.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from forge_trainer.config import LoraConfig
from forge_trainer.model.hf_import import assign_rows
from forge_trainer.train.frozen_weights import full_precision, hold_frozen_in_bf16, upcast_linear

log = logging.getLogger(__name__)

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
NF4_BLOCK_SIZE = 64
"""Weights per NF4 quantization block (as in the QLoRA paper)."""
NF4_MAX_SCALER_BLOCK = 256
"""Largest number of block scales quantized together in the second (double) quantization."""


def _nf4_api() -> tuple[Any, Any]:
    """torchao's NF4 tensor constructor and linear; imported lazily, its optional kernels quietened."""
    logging.getLogger("torchao").setLevel(logging.ERROR)  # it warns about CUDA-only kernels on CPU
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4, to_nf4

    return to_nf4, linear_nf4


def _nf4_scaler_block(numel: int) -> int | None:
    """Block scales quantized together for a weight of `numel` values; None when it does not fit NF4."""
    if numel % NF4_BLOCK_SIZE:
        return None
    blocks = numel // NF4_BLOCK_SIZE
    scaler_block = next(s for s in range(min(NF4_MAX_SCALER_BLOCK, blocks), 0, -1) if blocks % s == 0)
    return scaler_block if scaler_block >= 2 else None


def nf4_quantize(weight: Tensor) -> Tensor | None:
    """`weight` as a torchao NF4Tensor, or None when its size does not fit NF4's block layout."""
    scaler_block = _nf4_scaler_block(weight.numel())
    if scaler_block is None:
        return None
    to_nf4, _ = _nf4_api()
    return to_nf4(weight.detach().contiguous(), NF4_BLOCK_SIZE, scaler_block)  # type: ignore[no-any-return]


def is_nf4(weight: Tensor) -> bool:
    """Whether `weight` is an NF4-quantized tensor."""
    return type(weight).__name__ == "NF4Tensor"


def dequantize(weight: Tensor) -> Tensor:
    """A plain float32 copy of `weight` (NF4 or not)."""
    if is_nf4(weight):
        return weight.get_original_weight().float()  # type: ignore[attr-defined, no-any-return]
    return weight.detach().float().clone()


class LoraLinear(nn.Module):
    """A frozen linear layer plus a trainable low-rank update, named as PEFT names it."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, quantize: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scale = rank, alpha / rank
        on_meta = base.weight.is_meta
        weight = nf4_quantize(base.weight.data) if quantize and not on_meta else None
        self.quantized = weight is not None or (quantize and on_meta and
                                                _nf4_scaler_block(base.weight.numel()) is not None)
        self.weight: Tensor
        if on_meta and self.quantized:
            # built on the meta device: quantized from the base's file once loading starts (`quantize_from`)
            self.register_buffer("weight", None, persistent=False)
        elif weight is not None:
            # a non-persistent buffer: moved with the module, but neither a parameter (no optimizer or
            # gradient-norm code sees it) nor in checkpoints (a resumed run re-quantizes the base)
            self.register_buffer("weight", weight, persistent=False)
        else:
            self.weight = nn.Parameter(base.weight.data, requires_grad=False)
        self.bias = None if base.bias is None else nn.Parameter(base.bias.data, requires_grad=False)
        device = base.weight.device
        self.lora_A = nn.Linear(self.in_features, rank, bias=False, device=device)
        self.lora_B = nn.Linear(rank, self.out_features, bias=False, device=device)
        self.reset_adapters()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.enabled = True
        """When False the layer computes the frozen base alone (the RL reference policy)."""

    @torch.no_grad()
    def reset_adapters(self) -> None:
        """PEFT's starting values: A Kaiming-uniform, B zero (the layer starts equal to its base). Adapters
        still on the meta device are left; a sharded A (FSDP2) gets its rows of the values the whole A
        would get, so they do not depend on the number of workers."""
        a, b = self.lora_A.weight, self.lora_B.weight
        if a.is_meta:
            return
        full = torch.empty(a.shape, dtype=a.dtype, device=a.device)
        nn.init.kaiming_uniform_(full, a=math.sqrt(5))  # PEFT's default initialisation
        assign_rows(a, full)
        b.zero_()

    @torch.no_grad()
    def quantize_from(self, weight: Tensor) -> None:
        """The NF4 base weight of a layer built on the meta device, from the whole `weight`."""
        device = self.lora_A.weight.device
        nf4 = nf4_quantize(weight.to(device))
        if nf4 is None or weight.shape != (self.out_features, self.in_features):
            raise ValueError(f"a weight of shape {list(weight.shape)} cannot be this layer's NF4 base")
        self.weight = nf4

    def forward(self, x: Tensor) -> Tensor:
        if self.quantized:
            _, linear_nf4 = _nf4_api()
            y: Tensor = linear_nf4(x, self.weight)
            if self.bias is not None:
                y = y + self.bias
        else:
            y = upcast_linear(x, self.weight, self.bias)  # a QLoRA base weight NF4 cannot hold is bf16
        if not self.enabled:
            return y
        update: Tensor = self.lora_B(self.lora_A(self.dropout(x)))
        return y + update * self.scale

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, rank={self.rank}, scale={self.scale:g}, "
                f"nf4={self.quantized}")


def apply_lora(model: nn.Module, config: LoraConfig, quantize: bool = False) -> list[str]:
    """Freeze `model` and wrap every linear whose name ends in one of `config.targets`; return their paths.

    Raises ValueError when no layer matches, naming the targets and the linear layers there are."""
    for p in model.parameters():
        p.requires_grad_(False)
    targets = set(config.targets)
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [(name, m) for name, m in linears if name.rsplit(".", 1)[-1] in targets]
    if not chosen:
        kinds = sorted({name.rsplit(".", 1)[-1] for name, _ in linears})
        raise ValueError(f"lora.targets {sorted(targets)} match no linear layer; the model has {kinds}")
    for name, module in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoraLinear(module, config.rank, config.alpha, config.dropout, quantize))
    if quantize:
        skipped = [n for n, _ in chosen if not model.get_submodule(n).quantized]
        if skipped:
            log.warning("NF4 needs weights in blocks of %d; kept %d layers in bf16: %s",
                        NF4_BLOCK_SIZE, len(skipped), ", ".join(skipped[:4]))
        hold_frozen_in_bf16(model)  # the rest of the frozen base: half the bytes of float32
    return [name for name, _ in chosen]


def is_adapter(name: str) -> bool:
    """Whether the parameter `name` is an adapter's (not the base model's)."""
    return ".lora_A." in name or ".lora_B." in name


def quantize_meta_layers(model: nn.Module, read: Callable[[str, torch.Size], Tensor]) -> None:
    """Give every QLoRA layer built on the meta device its NF4 weight, reading the whole base weight
    of each (`read(parameter name, shape)`) one layer at a time."""
    for name, layer in lora_layers(model).items():
        if layer.quantized and layer.weight is None:
            layer.quantize_from(read(f"{name}.weight", torch.Size([layer.out_features, layer.in_features])))


def init_adapters(model: nn.Module) -> None:
    """Starting values for the adapters of a model built on the meta device once it is materialised."""
    for layer in lora_layers(model).values():
        layer.reset_adapters()


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Within the block, `model` computes as its frozen base (adapters bypassed)."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


def lora_layers(model: nn.Module) -> dict[str, LoraLinear]:
    """Every LoRA layer of `model` by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLinear)}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters an optimizer should update (the adapters, after `apply_lora`)."""
    return [p for p in model.parameters() if p.requires_grad]


def adapter_state_dict(model: nn.Module, state: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Adapter weights under PEFT's names: `base_model.model.<path>.lora_A.weight` / `.lora_B.weight`.

    `state` is the model's whole state dict (under FSDP2 gathered from the shards, as `model.state_dict()`
    holds only this worker's DTensor shards); `model.state_dict()` when None."""
    whole = model.state_dict() if state is None else state
    out: dict[str, Tensor] = {}
    for name in lora_layers(model):
        for ab in ("lora_A", "lora_B"):
            out[f"base_model.model.{name}.{ab}.weight"] = whole[f"{name}.{ab}.weight"].detach().cpu().contiguous()
    return out


def load_adapter_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy adapter weights (PEFT names) into the LoRA layers of `model`; missing or extra keys are errors."""
    layers = lora_layers(model)
    expected = {f"base_model.model.{n}.lora_{ab}.weight" for n in layers for ab in "AB"}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"adapter does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, layer in layers.items():
            layer.lora_A.weight.copy_(state[f"base_model.model.{name}.lora_A.weight"])
            layer.lora_B.weight.copy_(state[f"base_model.model.{name}.lora_B.weight"])


def adapter_config(config: LoraConfig, target_modules: list[str], base_model: str | None = None) -> dict[str, Any]:
    """adapter_config.json as PEFT writes it for a causal LM."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted({t.rsplit(".", 1)[-1] for t in target_modules}),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "modules_to_save": None,
        "base_model_name_or_path": base_model,
    }


def save_adapter(model: nn.Module, config: LoraConfig, directory: Path, base_model: str | None = None,
                 state: Mapping[str, Tensor] | None = None) -> list[str]:
    """Write adapter_model.safetensors and adapter_config.json into `directory` (adapters from `state`, the
    whole state dict, as in `adapter_state_dict`); return the file names."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model, state), str(directory / ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})
    cfg = adapter_config(config, list(lora_layers(model)), base_model)
    (directory / ADAPTER_CONFIG_NAME).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return [ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME]


def merged_state_dict(model: nn.Module, state: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The model's weights with every adapter folded into its base weight (W + scale * B @ A in float32),
    under the original names (as the model had before `apply_lora`), on the CPU: ready for the Hugging
    Face export. `state` is the model's whole state dict, as in `adapter_state_dict`."""
    whole = model.state_dict() if state is None else state
    out = base_state_dict(model, whole)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            a, b = (whole[f"{name}.{ab}.weight"].detach().float().cpu() for ab in ("lora_A", "lora_B"))
            out[f"{name}.weight"] = out[f"{name}.weight"] + layer.scale * (b @ a)
    return out


def base_state_dict(model: nn.Module, state: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """The model's base weights without adapters (in float32: dequantized and upcast for QLoRA), under the
    original names, on the CPU. `state` is the model's whole state dict, as in `adapter_state_dict`; the
    NF4 weights, never part of it (non-persistent and not sharded), come from the model itself."""
    whole = model.state_dict() if state is None else state
    out = {name: full_precision(t.detach()).cpu() for name, t in whole.items() if not is_adapter(name)}
    for name, layer in lora_layers(model).items():
        if is_nf4(layer.weight):
            out[f"{name}.weight"] = dequantize(layer.weight).cpu()
    return out
