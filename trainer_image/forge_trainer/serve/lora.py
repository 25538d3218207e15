"""Merging a PEFT-format LoRA adapter into the base model's weights at load time.

An adapter directory holds `adapter_config.json` (r, lora_alpha, target_modules, optionally
use_rslora) and `adapter_model.safetensors` whose tensors are named
`base_model.model.<module path>.lora_A.weight` (r x in) and `...lora_B.weight` (out x r).
Merging sets W += scale * B @ A on each targeted linear layer, with scale = lora_alpha / r
(lora_alpha / sqrt(r) with rsLoRA), so serving costs nothing extra.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


class AdapterError(Exception):
    """The adapter cannot be merged into this model; the message says why."""


def read_adapter(adapter_dir: Path) -> tuple[float, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """The adapter's scale and its (A, B) pairs by module path."""
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{adapter_dir}/adapter_config.json: cannot read: {exc}") from exc
    try:
        r = int(cfg["r"])
        alpha = float(cfg.get("lora_alpha", r))
    except (KeyError, TypeError, ValueError) as exc:
        raise AdapterError(f"{adapter_dir}/adapter_config.json: needs an integer 'r' ({exc})") from exc
    if cfg.get("fan_in_fan_out"):
        raise AdapterError(f"{adapter_dir}/adapter_config.json: fan_in_fan_out adapters are not supported")
    if r < 1:
        raise AdapterError(f"{adapter_dir}/adapter_config.json: r must be positive, got {r}")
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.is_file():
        raise AdapterError(f"{weights_path}: missing")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_path)).items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterError(f"{weights_path}: tensor {key!r} is not a LoRA A/B weight")
        pairs.setdefault(m["module"], {})[m["ab"]] = tensor
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{weights_path}: {module} has lora_{''.join(ab)} without its pair")
        out[module] = (ab["A"], ab["B"])
    return scale, out


@torch.no_grad()
def merge_lora(model: nn.Module, adapter_dir: Path) -> int:
    """Merge the adapter in `adapter_dir` into `model` in place; returns how many layers changed."""
    scale, pairs = read_adapter(adapter_dir)
    modules = dict(model.named_modules())
    for name, (a, b) in pairs.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            raise AdapterError(f"{adapter_dir}: adapter targets {name!r}, which is not a linear layer of the model")
        weight = module.weight
        delta = b.to(torch.float32) @ a.to(torch.float32)
        if delta.shape != weight.shape:
            raise AdapterError(f"{adapter_dir}: {name}: adapter delta has shape {tuple(delta.shape)}, "
                               f"the layer's weight {tuple(weight.shape)}")
        weight.copy_((weight.to(torch.float32) + scale * delta).to(weight.dtype))
    log.info("merged LoRA adapter %s into %d layers (scale %.4g)", adapter_dir, len(pairs), scale)
    return len(pairs)
