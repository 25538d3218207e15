"""A checkpoint moves between a machine with CUDA and one without, in both directions (the RNG state of a
device the checkpoint was not written on is neither required nor invented)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from forge_trainer.store import LocalStore
from forge_trainer.train.checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from forge_trainer.train.runtime import Runtime

ALONE = Runtime(0, 1, 0, torch.device("cpu"), False)


def _model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return model, optimizer


def _pretend_cuda(monkeypatch: pytest.MonkeyPatch, restored: list[torch.Tensor]) -> None:
    """CUDA "available" with a CUDA RNG state, as on a GPU node (this machine has none) — to the checkpoint
    module only: DCP's own file writer would then really try to use a CUDA stream."""
    def available() -> bool:
        return bool(sys._getframe(1).f_globals.get("__name__") == "forge_trainer.train.checkpoint")

    monkeypatch.setattr(torch.cuda, "is_available", available)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda *a, **k: torch.arange(8, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, *a, **k: restored.append(state))


def _roundtrip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, save_cuda: bool, load_cuda: bool) -> list[torch.Tensor]:
    store = LocalStore(tmp_path / "out")
    restored: list[torch.Tensor] = []
    model, optimizer = _model_and_optimizer(seed=1)
    with monkeypatch.context() as m:
        if save_cuda:
            _pretend_cuda(m, restored)
        save_checkpoint(store, "run", 5, model, optimizer, {"step": 5}, ALONE)
    fresh, fresh_optimizer = _model_and_optimizer(seed=2)
    with monkeypatch.context() as m:
        if load_cuda:
            _pretend_cuda(m, restored)
        load_checkpoint(store, list_checkpoints(store, "run")[-1], fresh, fresh_optimizer)
    assert torch.equal(fresh.weight, model.weight), "the weights must come back whatever the device"
    return restored


def test_a_checkpoint_written_without_cuda_loads_on_a_cuda_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    restored = _roundtrip(tmp_path, monkeypatch, save_cuda=False, load_cuda=True)
    assert restored == [], "no CUDA RNG state was saved, so none may be restored"


def test_a_checkpoint_written_with_cuda_loads_on_a_cpu_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _roundtrip(tmp_path, monkeypatch, save_cuda=True, load_cuda=False) == []


def test_a_cuda_checkpoint_restores_the_cuda_rng_on_a_cuda_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    restored = _roundtrip(tmp_path, monkeypatch, save_cuda=True, load_cuda=True)
    assert len(restored) == 1 and torch.equal(restored[0], torch.arange(8, dtype=torch.uint8))
