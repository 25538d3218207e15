"""Training batches: deterministic for a seed, the same global batch whatever the world size, each
rank its own slice, every sequence once per epoch; and the learning-rate schedule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from forge_trainer.config import Hyperparameters
from forge_trainer.data.manifest import Split
from forge_trainer.data.shards import IntegrityError, load_manifest
from forge_trainer.train.batches import (
    TokenSequences,
    eval_micro_batches,
    micro_batch_size_for,
    step_indices,
    step_micro_batches,
)
from forge_trainer.train.schedule import lr_at
from tests.support.training import local_dataset, real_corpus


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return local_dataset(tmp_path_factory.mktemp("ds"), real_corpus(120), tokens_per_shard=4096)


def sequences(uri: str, seed: int = 7, split: Split = Split.TRAIN) -> TokenSequences:
    manifest, _ = load_manifest(uri)
    return TokenSequences(uri, manifest, split, seq_len=32, seed=seed, shuffle=split is Split.TRAIN)


def rows(batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.cat([b["input_ids"] for b in batches])


def test_global_batch_is_the_same_for_one_and_two_workers(dataset: str) -> None:
    data = sequences(dataset)
    assert len(data.shards) > 1
    for step in (0, 3):
        alone = rows(step_micro_batches(data, step, 8, rank=0, world_size=1, micro_batch=4))
        pair = [rows(step_micro_batches(data, step, 8, rank=r, world_size=2, micro_batch=2)) for r in (0, 1)]
        assert torch.equal(alone, torch.cat(pair))
        assert not torch.equal(pair[0], pair[1])


def test_order_is_fixed_by_the_seed(dataset: str) -> None:
    a = rows(step_micro_batches(sequences(dataset, seed=1), 2, 8, 0, 1, 8))
    b = rows(step_micro_batches(sequences(dataset, seed=1), 2, 8, 0, 1, 8))
    c = rows(step_micro_batches(sequences(dataset, seed=2), 2, 8, 0, 1, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_an_epoch_visits_every_sequence_once_and_labels_are_shifted(dataset: str) -> None:
    data = sequences(dataset)
    seen = {tuple(data.sequence(i)) for i in range(data.total)}
    assert len(seen) == data.total
    batch = data.batch([0, 1])
    assert torch.equal(batch["input_ids"][:, 1:], batch["labels"][:, :-1])
    assert batch["input_ids"].shape == (2, 32)


def test_shards_are_read_ahead_of_use(dataset: str) -> None:
    data, fresh = sequences(dataset), sequences(dataset)
    indices = step_indices(5, 8, rank=1, world_size=2)
    missing = data.missing_shards(indices)
    assert missing
    data.warm(missing)
    assert data.missing_shards(indices) == []
    assert torch.equal(data.batch(indices)["input_ids"], fresh.batch(indices)["input_ids"])


def test_validation_batches_split_across_workers(dataset: str) -> None:
    val = sequences(dataset, split=Split.VALIDATION)
    alone = rows(eval_micro_batches(val, 6, 0, 1, 4))
    parts = [rows(eval_micro_batches(val, 6, r, 2, 4)) for r in (0, 1)]
    assert sorted(map(tuple, alone.tolist())) == sorted(map(tuple, torch.cat(parts).tolist()))


def test_micro_batch_adapts_to_the_world_size() -> None:
    assert micro_batch_size_for(8, 1, 4) == 4
    assert micro_batch_size_for(12, 2, 4) == 3
    with pytest.raises(ValueError, match="globalBatchSize"):
        micro_batch_size_for(9, 2, 4)


def test_a_tampered_shard_is_refused(tmp_path: Path) -> None:
    uri = local_dataset(tmp_path, real_corpus(30))
    shard = next(tmp_path.glob("shards/train-*.bin"))
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        sequences(uri).sequence(0)


def test_schedule_warms_up_then_decays_to_the_minimum() -> None:
    hp = Hyperparameters(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=10, max_steps=110)
    lrs = np.array([lr_at(s, hp) for s in range(110)])
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[:10]) > 0) and np.all(np.diff(lrs[10:]) <= 0)
    assert lr_at(110, hp) == pytest.approx(1e-4)
