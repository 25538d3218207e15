"""The optimizer step without waiting for the device: its values are read later, and a non-finite
step leaves the weights and the optimizer state as they were."""

from __future__ import annotations

import math

import torch

from forge_trainer.config import Hyperparameters, ModelConfig, SizePreset
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.train.runtime import Runtime
from forge_trainer.train.step_engine import StepEngine, first_non_finite

CPU = Runtime(0, 1, 0, torch.device("cpu"), False)


def setup() -> tuple[StepEngine, list[list[dict[str, torch.Tensor]]]]:
    torch.manual_seed(0)
    model = Transformer(resolve_model_args(ModelConfig(size=SizePreset.TINY), 128))
    hp = Hyperparameters(max_steps=10, global_batch_size=4, micro_batch_size=2, sequence_length=16,
                         learning_rate=1e-3, warmup_steps=0)
    g = torch.Generator().manual_seed(1)
    batches = [[{"input_ids": torch.randint(0, 128, (2, 16), generator=g),
                 "labels": torch.randint(0, 128, (2, 16), generator=g)} for _ in range(2)] for _ in range(3)]
    return StepEngine(model, hp, CPU, bf16=False), batches


def test_unchecked_steps_match_checked_ones() -> None:
    checked, batches = setup()
    unchecked, _ = setup()
    a = [checked.train_step(i, b).loss for i, b in enumerate(batches)]
    stats = [unchecked.train_step(i, b, check=False) for i, b in enumerate(batches)]
    assert first_non_finite(stats) is None
    assert [s.loss for s in stats] == a
    for p, q in zip(checked.model.parameters(), unchecked.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_a_non_finite_step_is_skipped_on_the_device() -> None:
    trainer, batches = setup()
    trainer.train_step(0, batches[0], check=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    steps_before = [s["step"].clone() for s in trainer.optimizer.state.values()]
    with torch.no_grad():
        trainer.model.lm_head.weight[0, 0] = float("nan")  # type: ignore[union-attr]
    before[-1][0, 0] = float("nan")
    stats = trainer.train_step(1, batches[1], check=False)
    assert first_non_finite([stats]) == 0 and stats.problem is not None and "nan" in stats.problem
    for p, q in zip(before, trainer.model.parameters(), strict=True):
        assert torch.equal(p.nan_to_num(), q.detach().nan_to_num())
    assert all(torch.equal(a, s["step"]) for a, s in zip(steps_before, trainer.optimizer.state.values(), strict=True))
    assert not math.isfinite(stats.loss)
