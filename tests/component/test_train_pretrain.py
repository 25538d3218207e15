"""Pretraining in one process: the loss falls on a real corpus, checkpoints are kept and resumed
from, MoE experts are all used, NaN stops the run before a poisoned checkpoint, bad input fails
with one line, and progress/metrics/export are what the operator reads."""

from __future__ import annotations

import json
import math
import shutil
import urllib.request
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer

from forge_trainer.cli import main
from forge_trainer.config import ModelConfig, SizePreset, TrainProgress
from forge_trainer.data.manifest import Split
from forge_trainer.data.shards import load_manifest
from forge_trainer.errors import WorkloadError
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.model.flops import PEAK_FLOPS_ENV, flops_per_token
from forge_trainer.model.hf_export import load_hf
from forge_trainer.store import LocalStore, open_uri
from forge_trainer.train.batches import TokenSequences
from forge_trainer.train.checkpoint import list_checkpoints, load_checkpoint
from forge_trainer.train.pretrain import run_pretrain
from forge_trainer.train.progress import read_step_log
from forge_trainer.train.step_engine import NonFiniteLossError
from tests.support.ports import free_port
from tests.support.s3 import S3Server
from tests.support.training import local_dataset, one_thread, pretrain_config, real_corpus, write_dataset

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    return local_dataset(tmp_path_factory.mktemp("ds"))


def progress(output: Path) -> TrainProgress:
    return TrainProgress.model_validate_json((output / "progress.json").read_text())


def test_tiny_model_learns_a_real_corpus(dataset: str, tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "run"
    result = run_pretrain(pretrain_config(dataset, out, hyperparameters={"maxSteps": 40}, metricsPort=port))
    losses = [result.losses[s] for s in sorted(result.losses)]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.8
    done = progress(out)
    assert done.done and done.error is None and (done.step, done.total_steps) == (40, 40)
    assert done.tokens_seen == 40 * 8 * 64 and done.world_size == 1 and done.tokens_per_second
    assert done.eval_loss is not None and done.eval_metrics["perplexity"] == pytest.approx(math.exp(done.eval_loss))
    assert done.eval_loss < math.log(512) - 0.8  # well below a uniform guess over the vocabulary
    assert [c.step for c in done.checkpoints] == [35, 40]
    assert [c.step for c in list_checkpoints(LocalStore(out), "")] == [35, 40]
    _, args = load_hf(out / "model")
    assert args.vocab_size == 512 and (out / "model" / "tokenizer.json").is_file()
    assert done.final_model_uri == (out / "model").as_uri() and done.final_model_digest
    scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "forge_train_step 40.0" in scraped and "forge_train_loss" in scraped


def test_resume_skips_an_incomplete_checkpoint_and_continues_the_same_trajectory(dataset: str,
                                                                                 tmp_path: Path) -> None:
    reference = run_pretrain(pretrain_config(dataset, tmp_path / "a", checkpointing={"keep": 10}))
    crashed = tmp_path / "b"
    shutil.copytree(tmp_path / "a", crashed)
    # a crash while writing step 15: its marker never landed; step 20 never happened
    (crashed / "checkpoints/step-00000015/checkpoint.json").unlink()
    shutil.rmtree(crashed / "checkpoints/step-00000020")
    shutil.rmtree(crashed / "model")
    state = json.loads((crashed / "progress.json").read_text())
    (crashed / "progress.json").write_text(json.dumps({**state, "done": False, "step": 14}))
    resumed = run_pretrain(pretrain_config(dataset, crashed, checkpointing={"keep": 10}))
    assert sorted(resumed.losses) == list(range(11, 21))
    for step in range(11, 21):
        assert resumed.losses[step] == pytest.approx(reference.losses[step], rel=1e-4, abs=1e-4)
    assert progress(crashed).restarts == 1 and progress(crashed).done
    log = read_step_log(LocalStore(crashed), "")
    assert sorted(log) == list(range(1, 21))
    ids = torch.randint(0, 512, (1, 16))
    a, _ = load_hf(tmp_path / "a" / "model")
    b, _ = load_hf(crashed / "model")
    with torch.no_grad():
        torch.testing.assert_close(a(ids), b(ids), atol=1e-3, rtol=1e-3)


def test_moe_uses_every_expert_and_reports_a_balance_loss(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "moe"
    result = run_pretrain(pretrain_config(dataset, out, model={"size": "tiny", "architecture": "moe"},
                                 hyperparameters={"maxSteps": 25}))
    assert sum(result.losses[s] for s in range(21, 26)) < sum(result.losses[s] for s in range(1, 6)) - 0.5
    model, args = load_hf(out / "model")
    assert args.num_experts == 4
    manifest, _ = load_manifest(dataset)
    val = TokenSequences(dataset, manifest, Split.VALIDATION, 64, seed=0, shuffle=False)
    with torch.no_grad():
        model(val.batch(range(8))["input_ids"])
    assert model.aux_loss is not None and 1.0 <= model.aux_loss.item() < 1.5
    for layer in model.model.layers:
        counts = layer.block_sparse_moe.expert_counts  # type: ignore[union-attr]
        assert counts is not None and (counts > 0).all(), counts
        assert counts.max() < 0.6 * counts.sum()  # no expert takes most tokens (top-2 of 4 means 0.5 max)


def test_nan_loss_stops_before_a_poisoned_checkpoint(dataset: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nan"
    cfg = pretrain_config(dataset, out, hyperparameters={"learningRate": 1e30, "warmupSteps": 0, "gradClip": 0},
                 checkpointing={"interval": 1})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg.to_wire()))
    assert main(["train", "--config", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nan" in err.lower(), err
    failed = progress(out)
    assert failed.error and "nan" in failed.error and not failed.done
    kept = list_checkpoints(LocalStore(out), "")
    assert kept and kept[-1].step == failed.step  # stopped at the first non-finite step
    for ckpt in kept:  # and every checkpoint written before holds finite weights
        model = Transformer(resolve_model_args(cfg.model, 512))
        load_checkpoint(LocalStore(out), ckpt, model, None)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not (out / "model").exists()


def test_a_nan_found_later_stops_before_the_next_checkpoint_with_the_weights_unpoisoned(
        dataset: str, tmp_path: Path) -> None:
    """Losses are read only at sync steps: a non-finite step between them is skipped on the device and
    the run stops at the next sync step (here the checkpoint at step 5) without writing it."""
    out = tmp_path / "nan"
    cfg = pretrain_config(dataset, out, hyperparameters={"learningRate": 1e30, "warmupSteps": 0, "gradClip": 0,
                                                "evalInterval": 0},
                 checkpointing={"interval": 5})
    with pytest.raises(NonFiniteLossError, match=r"(loss|gradient norm) is (nan|inf) at step (\d)") as caught:
        run_pretrain(cfg)
    first_bad = int(caught.value.args[0].split("at step ")[1].split(";")[0])
    assert 2 <= first_bad <= 5
    failed = progress(out)
    assert failed.error and not failed.done and failed.step == first_bad - 1
    assert list_checkpoints(LocalStore(out), "") == [] and not (out / "model").exists()
    log = read_step_log(LocalStore(out), "")
    assert sorted(log) == list(range(1, first_bad)) and all(math.isfinite(r["loss"]) for r in log.values())


def test_missing_dataset_and_bad_config_fail_with_one_line(tmp_path: Path, dataset: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    missing = pretrain_config(str(tmp_path / "nowhere" / "manifest.json"), tmp_path / "o1")
    with pytest.raises(WorkloadError, match="nowhere"):
        run_pretrain(missing)
    failed = progress(tmp_path / "o1")
    assert failed.error and "nowhere" in failed.error and not failed.done
    too_long = tmp_path / "bad.yaml"
    too_long.write_text(yaml.safe_dump(pretrain_config(dataset, tmp_path / "o2",
                                              hyperparameters={"sequenceLength": 4096}).to_wire()))
    assert main(["train", "--config", str(too_long)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sequenceLength" in err


def test_pretrain_reads_and_writes_s3(s3: S3Server, tmp_path: Path) -> None:
    store, _ = open_uri(s3.uri(), s3.config)
    manifest_uri = write_dataset(store, "datasets/docs", real_corpus(120))
    cfg = pretrain_config(manifest_uri, s3.uri("runs/pre"), store=s3.config.to_wire(),
                 hyperparameters={"maxSteps": 6, "evalInterval": 3}, checkpointing={"interval": 3})
    result = run_pretrain(cfg)
    assert result.progress.done and result.progress.final_model_uri == s3.uri("runs/pre/model")
    remote = json.loads(store.get_bytes("runs/pre/progress.json"))
    assert remote["step"] == 6 and [c["step"] for c in remote["checkpoints"]] == [3, 6]
    model, _ = load_hf(s3.uri("runs/pre/model"), s3.config)
    assert model.args.vocab_size == 512


def test_activation_checkpointing_keeps_the_losses(dataset: str, tmp_path: Path) -> None:
    plain = run_pretrain(pretrain_config(dataset, tmp_path / "a", hyperparameters={"maxSteps": 4}))
    recomputed = run_pretrain(pretrain_config(dataset, tmp_path / "b",
                                     hyperparameters={"maxSteps": 4, "activationCheckpointing": True}))
    assert sorted(plain.losses) == sorted(recomputed.losses) == [1, 2, 3, 4]
    for step, loss in plain.losses.items():
        assert recomputed.losses[step] == pytest.approx(loss, rel=1e-5)


def test_pretraining_from_a_base_model_starts_where_it_ended(dataset: str, tmp_path: Path) -> None:
    base = run_pretrain(pretrain_config(dataset, tmp_path / "base", hyperparameters={"maxSteps": 30}))
    scratch = run_pretrain(pretrain_config(dataset, tmp_path / "scratch", hyperparameters={"maxSteps": 2}))
    from_model = run_pretrain(pretrain_config(dataset, tmp_path / "m", model=None, initModel=str(tmp_path / "base" / "model"),
                                     hyperparameters={"maxSteps": 2}))
    from_checkpoint = run_pretrain(pretrain_config(dataset, tmp_path / "c", model=None,
                                          initCheckpoint=str(tmp_path / "base" / "checkpoints" / "step-00000030"),
                                          hyperparameters={"maxSteps": 2}))
    for cont in (from_model, from_checkpoint):
        assert cont.losses[1] < scratch.losses[1] - 1.0
        assert cont.losses[1] == pytest.approx(base.losses[30], abs=0.5)
    assert from_model.losses[1] == pytest.approx(from_checkpoint.losses[1], rel=1e-5)


def test_eval_dataset_is_used_for_validation(dataset: str, tmp_path: Path) -> None:
    root = Path(dataset.removeprefix("file://")).parent
    other = write_dataset(LocalStore(tmp_path / "other"), "", real_corpus(400)[-30:],
                          tokenizer=Tokenizer.from_file(str(root / "tokenizer.json")), validation_every=2)
    result = run_pretrain(pretrain_config(dataset, tmp_path / "run", evalDataset=other, hyperparameters={"maxSteps": 3}))
    model, _ = load_hf(tmp_path / "run" / "model")
    manifest, _ = load_manifest(other)
    sequences = TokenSequences(other, manifest, Split.VALIDATION, 64, seed=0, shuffle=False)
    batch = sequences.batch(range(min(16, sequences.total)))  # evalBatches (4) x microBatchSize (4)
    with torch.no_grad():
        logits = model(batch["input_ids"])
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 512), batch["labels"].reshape(-1)).item()
    assert result.progress.eval_loss == pytest.approx(expected, rel=1e-4)


def test_mfu_is_reported_against_the_device_peak(dataset: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PEAK_FLOPS_ENV, "1e12")
    result = run_pretrain(pretrain_config(dataset, tmp_path / "mfu", hyperparameters={"maxSteps": 3}))
    args = resolve_model_args(ModelConfig(size=SizePreset.TINY), 512)
    tps = result.progress.tokens_per_second
    assert tps and result.progress.mfu == pytest.approx(flops_per_token(args, 64) * tps / 1e12)
    # 6 FLOPs per parameter and token, plus attention: the tiny model has about 0.1M active parameters
    assert 6 * 0.08e6 < flops_per_token(args, 64) < 6 * 0.2e6
