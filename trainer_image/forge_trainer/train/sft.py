"""`stage: sft`: supervised fine-tuning on conversations (full, LoRA or QLoRA), reusing the pretraining
machinery: the torchrun runtime, model wrapping, the StepEngine's optimizer step, DCP checkpoints with
resume, progress.json, and the Hugging Face export.

Data: the sft dataset's JSONL records ({"messages": [...]} or {"prompt", "response"}) are rendered as
ChatML with the base model's tokenizer; loss is taken only on assistant tokens; samples are packed
into rows of `sequenceLength` with a block-diagonal causal mask (one process) or laid one per row with
a padding mask (a worker group, whose wrapper must see the model's own forward). A record that is
not a conversation is skipped and counted. Epoch e visits the samples in a seeded order, so the
stream of rows — and a resumed run — is a pure function of the seed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forge_trainer.config import DatasetPurpose, Precision, TrainConfig, TrainProgress
from forge_trainer.data.manifest import Split
from forge_trainer.data.shards import load_manifest
from forge_trainer.errors import ConfigError, WorkloadError
from forge_trainer.store import ObjectStore, StoreError
from forge_trainer.train.batches import IGNORE_INDEX, Batch, micro_batch_size_for
from forge_trainer.train.chat import ChatTokenizer
from forge_trainer.train.evaluate import EvalContext, write_eval
from forge_trainer.train.loop import StageRun, open_run, run_stage
from forge_trainer.train.parallel import unwrap, wrap_model
from forge_trainer.train.posttrain import (
    Base,
    finish_posttrain,
    load_base,
    prepare_for_method,
)
from forge_trainer.train.runtime import Runtime, all_reduce_sum, init_runtime
from forge_trainer.train.sample_packing import Example
from forge_trainer.train.sft_examples import PackedStream, read_sft_examples, sft_eval_loss, sft_loss
from forge_trainer.train.step_engine import StepEngine

log = logging.getLogger(__name__)


@dataclass
class SftResult:
    """What a finished run produced (for in-process callers: tests, benchmarks)."""

    progress: TrainProgress
    losses: dict[int, float] = field(default_factory=dict)
    """Training loss of each step this process ran (1-based)."""
    eval_metrics: dict[str, float] = field(default_factory=dict)


def _load_split(config: TrainConfig, uri: str, split: Split, chat: ChatTokenizer,
                max_len: int) -> tuple[list[Example], Counter[str]]:
    try:
        manifest, _ = load_manifest(uri, config.store)
    except StoreError as exc:
        raise WorkloadError(f"dataset {uri}: {exc}") from exc
    if manifest.purpose is not DatasetPurpose.SFT:
        raise WorkloadError(f"dataset {uri} has purpose {manifest.purpose.value}; stage sft needs an sft dataset")
    return read_sft_examples(uri, manifest, split, chat, max_len, config)


def run_sft(config: TrainConfig, runtime: Runtime | None = None, config_path: Path | None = None) -> SftResult:
    """Run (or resume) a fine-tuning run to its last step and export the model (and adapter)."""
    runtime = runtime or init_runtime()
    return run_stage(config, runtime, lambda store, prefix: _train(config, runtime, store, prefix, config_path))


def _train(config: TrainConfig, runtime: Runtime, store: ObjectStore, prefix: str,
           config_path: Path | None) -> SftResult:
    hp = config.hyperparameters
    torch.manual_seed(hp.seed)
    with load_base(config, runtime) as base:  # the base directory stays readable until the model is loaded
        seq_len = min(hp.sequence_length, base.args.max_seq_len)
        examples, skipped = _load_split(config, config.dataset, Split.TRAIN, base.chat, seq_len)
        if not examples:
            raise WorkloadError(f"dataset {config.dataset} has no usable training conversations "
                                f"(skipped: {dict(skipped)})")
        if skipped:
            log.warning("skipped training records: %s", dict(skipped))
        val_examples, _ = _load_split(config, config.dataset, Split.VALIDATION, base.chat, seq_len)
        try:
            micro = micro_batch_size_for(hp.global_batch_size, runtime.world_size, hp.micro_batch_size)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        one_per_row = runtime.distributed
        train = PackedStream(examples, seq_len, hp.seed, one_per_row)
        val = PackedStream(val_examples, seq_len, hp.seed, one_per_row)
        adapted = prepare_for_method(base.model, config)
        model = wrap_model(base.model, runtime, hp.activation_checkpointing, hp.compile, load=base.load)
    engine = StepEngine(model, hp, runtime, loss_fn=sft_loss, params=list(model.named_parameters()),
                        bf16=config.precision is Precision.BF16)
    log.info("sft %s: %d examples in %d rows/epoch, %d trainable of %d parameters%s", config.method.value,
             len(examples), train.rows_per_epoch(), sum(p.numel() for p in engine.params),
             sum(p.numel() for p in model.parameters()), f", adapters on {len(adapted)} layers" if adapted else "")
    with open_run(config, runtime, store, prefix, engine, config_path,
                  lambda step: {"data_position": step * hp.global_batch_size}) as run:
        run.reporter.update(base_model_digest=base.digest)
        return _Sft(run, base, train, val, micro).loop()


@dataclass
class _Sft:
    """One start of a fine-tuning run: its data and the loop from a step to the end."""

    run: StageRun
    base: Base
    train: PackedStream
    val: PackedStream
    micro: int

    def step_batches(self, step: int) -> list[Batch]:
        hp, rt = self.run.config.hyperparameters, self.run.runtime
        share = hp.global_batch_size // rt.world_size
        rows = self.train.rows(step * hp.global_batch_size + rt.rank * share, share)
        return [self.train.batch(rows[i:i + self.micro]) for i in range(0, share, self.micro)]

    def loop(self) -> SftResult:
        run, rt = self.run, self.run.runtime
        losses: dict[int, float] = {}
        step, tokens_seen = run.step, run.tokens_seen
        while step < run.max_steps:
            began = time.perf_counter()
            batches = self.step_batches(step)
            trained = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
            stats = run.engine.train_step(step, batches)
            step_tokens = int(all_reduce_sum(rt, torch.tensor(float(trained))).item())
            tokens_seen += step_tokens
            step += 1
            losses[step] = stats.loss
            fields: dict[str, Any] = {"step": step, "tokens_seen": tokens_seen, "loss": stats.loss,
                                      "tokens_per_second": step_tokens / max(time.perf_counter() - began, 1e-9),
                                      "world_size": rt.world_size}
            record = {"step": step, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                      "trained_tokens": step_tokens}
            run.after_step(step, tokens_seen, fields, [record],
                           evaluate=lambda at: self.evaluate(at, final=False).get("loss"),
                           summary=f"loss {stats.loss:.4f} lr {stats.lr:.2e}")
        metrics = self.evaluate(run.max_steps, final=True)
        return SftResult(progress=self.finish(metrics), losses=losses, eval_metrics=metrics)

    def evaluate(self, step: int, final: bool) -> dict[str, float]:
        run, hp = self.run, self.run.config.hyperparameters
        loss = sft_eval_loss(run.engine.model, self.val, hp.eval_batches * self.micro, self.micro, run.runtime)
        ctx = EvalContext(run.config, run.runtime, run.store, run.prefix, self.base.chat, self.base.eos_id,
                          self.base.pad_id)
        metrics = write_eval(ctx, unwrap(run.engine.model), step, final, train_split_loss=loss)
        run.reporter.update(force=True, eval_metrics=metrics, eval_loss=metrics.get("loss"))
        return metrics

    def finish(self, metrics: dict[str, float]) -> TrainProgress:
        run = self.run
        return finish_posttrain(run.engine.model, run.config, run.runtime, self.base, run.store, run.prefix,
                                run.reporter, metrics)
