"""Building models without allocating them: a 7b model on the meta device holds no storage and has the
advertised size; a model materialised from the meta device (alone, or sharded by FSDP2 across two
workers) gets exactly the weights an eager build gets for the same seed."""

from __future__ import annotations

import math
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from forge_trainer.config import Architecture, ModelConfig, SizePreset
from forge_trainer.model import ModelArgs, Transformer, resolve_model_args
from forge_trainer.train.parallel import build_model, wrap_model
from forge_trainer.train.runtime import Runtime

CPU = Runtime(0, 1, 0, torch.device("cpu"), False)


def expected_parameters(a: ModelArgs) -> int:
    attention = 2 * a.hidden_size * a.num_heads * a.head_dim + 2 * a.hidden_size * a.num_kv_heads * a.head_dim
    mlp = 3 * a.hidden_size * a.intermediate_size
    if a.is_moe:
        mlp = a.num_experts * mlp + a.hidden_size * a.num_experts
    per_layer = attention + mlp + 2 * a.hidden_size
    return 2 * a.vocab_size * a.hidden_size + a.num_layers * per_layer + a.hidden_size


@pytest.mark.parametrize("size", [SizePreset.B7, SizePreset.B1])
def test_a_large_preset_on_the_meta_device_allocates_nothing(size: SizePreset) -> None:
    args = resolve_model_args(ModelConfig(size=size), 32000)
    rss = psutil.Process().memory_info().rss
    model = build_model(args)
    grown = psutil.Process().memory_info().rss - rss
    assert all(p.is_meta for p in model.parameters()) and all(b.is_meta for b in model.buffers())
    assert model.num_parameters() == expected_parameters(args)
    if size is SizePreset.B7:
        assert model.num_parameters() > 5.5e9  # fp32 weights alone would be ~24 GB
    assert grown < 200 * 2**20, f"building on meta grew the process by {grown / 2**20:.0f} MiB"


@pytest.mark.parametrize("arch", list(Architecture))
def test_a_model_materialised_from_meta_equals_an_eager_build(arch: Architecture) -> None:
    args = resolve_model_args(ModelConfig(size=SizePreset.TINY, architecture=arch), 512)
    torch.manual_seed(7)
    eager = Transformer(args)
    torch.manual_seed(7)
    model = wrap_model(build_model(args), CPU)
    assert isinstance(model, Transformer) and not any(p.is_meta for p in model.parameters())
    for (name, a), (_, b) in zip(eager.state_dict().items(), model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(eager.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
    batch = torch.randint(0, 512, (2, 16))
    assert torch.equal(eager(batch), model(batch))


def test_initialisation_statistics() -> None:
    args = resolve_model_args(ModelConfig(size=SizePreset.TINY, hidden_size=256, intermediate_size=768), 4096)
    torch.manual_seed(0)
    model = wrap_model(build_model(args), CPU)
    out_std = args.init_std / math.sqrt(2 * args.num_layers)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1.0), name
        else:
            expected = out_std if name.endswith(("o_proj.weight", "down_proj.weight")) else args.init_std
            assert abs(p.mean().item()) < expected * 0.05, name
            assert p.std().item() == pytest.approx(expected, rel=0.05), name


def _sharded_worker(rank: int, rendezvous: str, args: ModelArgs, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        runtime = Runtime(rank, 2, rank, torch.device("cpu"), True)
        torch.manual_seed(11)
        model = wrap_model(build_model(args), runtime)
        local = sum(p.to_local().numel() for p in model.parameters())  # type: ignore[operator]
        full = {name: p.full_tensor() for name, p in model.named_parameters()}  # type: ignore[operator]
        if rank == 0:
            torch.save({"full": full, "local": local}, out)
    finally:
        dist.destroy_process_group()


def test_two_workers_sharding_a_meta_model_hold_half_and_equal_the_eager_weights(tmp_path: Path) -> None:
    args = resolve_model_args(ModelConfig(size=SizePreset.TINY), 512)
    out = tmp_path / "full.pt"
    mp.spawn(_sharded_worker, args=(str(tmp_path / "rendezvous"), args, str(out)), nprocs=2, join=True)
    saved = torch.load(out)
    torch.manual_seed(11)
    eager = Transformer(args)
    assert saved["local"] <= eager.num_parameters() / 2 + 1000  # each worker holds only its half
    for name, p in eager.named_parameters():
        assert torch.equal(saved["full"][name], p), name
