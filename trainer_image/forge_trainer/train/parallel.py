"""Wrapping the model for data-parallel training: FSDP2 (`fully_shard`) where available, DDP
otherwise, nothing for a single process; plus the activation-checkpointing and torch.compile
switches."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.nn.parallel import DistributedDataParallel

from forge_trainer.model.args import ModelArgs
from forge_trainer.model.transformer import Transformer
from forge_trainer.train.runtime import Runtime

DATA_PARALLEL_ENV = "FORGE_DATA_PARALLEL"
"""Force `fsdp` or `ddp` for a worker group (default: FSDP2 wherever torch provides fully_shard)."""


def data_parallel_strategy(runtime: Runtime) -> str:
    """`none` for a single process; else FSDP2 (parameters, gradients and optimizer state sharded
    across workers; gloo and nccl both work) where torch provides it, DDP otherwise, unless
    FORGE_DATA_PARALLEL says which."""
    if not runtime.distributed:
        return "none"
    forced = os.environ.get(DATA_PARALLEL_ENV, "").strip().lower()
    if forced in ("fsdp", "ddp"):
        return forced
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return "ddp"
    return "fsdp"


def build_model(args: ModelArgs) -> Transformer:
    """A new model on the meta device: no storage until `wrap_model` places it (sharded under FSDP2)
    and initialises it, so no worker ever holds the full weights of a large model."""
    with torch.device("meta"):  # Transformer builds its modules on meta and sees the default device is meta
        return Transformer(args)


def is_meta(model: nn.Module) -> bool:
    """Whether `model` has parameters without storage (built by `build_model`)."""
    return any(p.is_meta for p in model.parameters())


def wrap_model(model: Transformer, runtime: Runtime, activation_checkpointing: bool = False,
               compile_model: bool = False, load: Callable[[Transformer], None] | None = None) -> nn.Module:
    """`model` on its device, ready for data-parallel training (the same object under FSDP2).

    A model on the meta device (`build_model`) is sharded first, then each worker allocates only its
    shard (`to_empty`) and initialises it (`init_weights`, seeded by the global RNG: the values do not
    depend on the number of workers), or, given `load`, fills it with `load` (a base model's weights,
    each worker reading only its shard)."""
    model.gradient_checkpointing = activation_checkpointing
    on_meta = is_meta(model)
    if not on_meta:
        model.to(runtime.device)
    if compile_model:
        for layer in model.model.layers:
            cast(Any, layer).compile()
    strategy = data_parallel_strategy(runtime)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        if on_meta:
            _materialize(model, runtime, load)
        return model
    if on_meta:
        _materialize(model, runtime, load)
    if strategy == "ddp":
        return DistributedDataParallel(model)
    return model


def _materialize(model: Transformer, runtime: Runtime, load: Callable[[Transformer], None] | None) -> None:
    model.materialize(runtime.device, init=load is None)
    if load is not None:
        load(model)


def unwrap(model: nn.Module) -> Transformer:
    """Our Transformer inside whatever wraps it."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    if not isinstance(inner, Transformer):
        raise TypeError(f"expected a Transformer, got {type(inner).__name__}")
    return inner


def gradient_sync(model: nn.Module, enabled: bool) -> Any:
    """Context in which backward passes do (or, between accumulation steps, do not) all-reduce."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        return model.no_sync()
    setter = getattr(model, "set_requires_gradient_sync", None)
    if setter is not None:  # FSDP2
        setter(enabled)
    return contextlib.nullcontext()


def autocast(runtime: Runtime, bf16: bool) -> Any:
    """bf16 autocast on GPU when asked; CPUs compute in fp32."""
    if not (bf16 and runtime.device.type == "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=runtime.device.type, dtype=torch.bfloat16)


def gather_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's whole state dict on the CPU, on rank 0 (empty on the other ranks).

    Collective: every rank calls it, since under FSDP2 (any torchrun worker group, even of one) the
    full tensors are gathered from all shards; `model.state_dict()` would give this worker's DTensor
    shards, which neither a merge nor safetensors can use."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = cast(dict[str, torch.Tensor], get_model_state_dict(model, options=options))
    return {k: v.detach() for k, v in full.items()}
