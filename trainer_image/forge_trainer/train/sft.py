"""`stage: sft`: supervised fine-tuning on conversations (full, LoRA or QLoRA), reusing the pretraining
machinery: the torchrun runtime, model wrapping, the Trainer's optimizer step, DCP checkpoints with
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
from torch import nn

from forge_trainer.config import DatasetPurpose, Precision, TrainConfig, TrainProgress
from forge_trainer.data.manifest import Split
from forge_trainer.data.shards import load_manifest
from forge_trainer.errors import ConfigError, WorkloadError
from forge_trainer.store import ObjectStore, StoreError, open_uri
from forge_trainer.train.batches import IGNORE_INDEX, Batch, micro_batch_size_for
from forge_trainer.train.chat import ChatTokenizer
from forge_trainer.train.checkpoint import (
    checkpoint_and_prune,
    resume_latest,
)
from forge_trainer.train.control import RunControl, with_max_steps
from forge_trainer.train.evaluate import EvalContext, write_eval
from forge_trainer.train.parallel import unwrap, wrap_model
from forge_trainer.train.posttrain import (
    Base,
    finish_posttrain,
    load_base,
    prepare_for_method,
)
from forge_trainer.train.progress import ProgressReporter, read_progress
from forge_trainer.train.runtime import Runtime, all_reduce_sum, init_runtime, shutdown
from forge_trainer.train.sample_packing import Example
from forge_trainer.train.sft_examples import PackedStream, read_sft_examples, sft_eval_loss, sft_loss
from forge_trainer.train.trainer import Trainer

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
    try:
        return _run(config, runtime, config_path)
    finally:
        shutdown(runtime)


def _run(config: TrainConfig, runtime: Runtime, config_path: Path | None) -> SftResult:
    hp = config.hyperparameters
    try:
        store, prefix = open_uri(config.output, config.store)
    except StoreError as exc:
        raise ConfigError(f"output: {exc}") from exc
    torch.manual_seed(hp.seed)
    base = load_base(config)
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
    model = wrap_model(base.model, runtime, hp.activation_checkpointing, hp.compile)
    trainer = Trainer(model, hp, runtime, loss_fn=sft_loss, params=list(model.named_parameters()),
                      bf16=config.precision is Precision.BF16)
    log.info("sft %s: %d examples in %d rows/epoch, %d trainable of %d parameters%s", config.method.value,
             len(examples), train.rows_per_epoch(), sum(p.numel() for p in trainer.params),
             sum(p.numel() for p in model.parameters()), f", adapters on {len(adapted)} layers" if adapted else "")

    previous = read_progress(store, prefix) if runtime.is_main else None
    _, start_step, tokens_seen = resume_latest(store, prefix, runtime, model, trainer.optimizer)
    restarts = (previous.restarts + 1) if previous is not None and not previous.done else 0
    progress = TrainProgress(step=start_step, total_steps=max(hp.max_steps, start_step), tokens_seen=tokens_seen,
                             world_size=runtime.world_size, restarts=restarts,
                             checkpoints=previous.checkpoints if previous else [])
    reporter = ProgressReporter(store, prefix, runtime.is_main, progress, config.metrics_port)
    reporter.flush()
    run = _SftRun(config, runtime, store, prefix, base, model, trainer, train, val, micro, reporter, config_path)
    try:
        return run.loop(start_step, tokens_seen)
    except WorkloadError as exc:
        reporter.update(force=True, error=str(exc).splitlines()[0])
        raise


@dataclass
class _SftRun:
    config: TrainConfig
    runtime: Runtime
    store: ObjectStore
    prefix: str
    base: Base
    model: nn.Module
    trainer: Trainer
    train: PackedStream
    val: PackedStream
    micro: int
    reporter: ProgressReporter
    config_path: Path | None = None

    def step_batches(self, step: int) -> list[Batch]:
        hp, rt = self.config.hyperparameters, self.runtime
        share = hp.global_batch_size // rt.world_size
        rows = self.train.rows(step * hp.global_batch_size + rt.rank * share, share)
        return [self.train.batch(rows[i:i + self.micro]) for i in range(0, share, self.micro)]

    def loop(self, start_step: int, tokens_seen: int) -> SftResult:
        hp, rt = self.config.hyperparameters, self.runtime
        losses: dict[int, float] = {}
        control = RunControl(rt, hp.max_steps, self.config_path)
        step = start_step
        while step < hp.max_steps:
            began = time.perf_counter()
            batches = self.step_batches(step)
            trained = sum(int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
            stats = self.trainer.train_step(step, batches)
            step_tokens = int(all_reduce_sum(rt, torch.tensor(float(trained))).item())
            tokens_seen += step_tokens
            done = step = step + 1
            losses[done] = stats.loss
            tps = step_tokens / max(time.perf_counter() - began, 1e-9)
            fields: dict[str, Any] = {"step": done, "tokens_seen": tokens_seen, "loss": stats.loss,
                                      "tokens_per_second": tps, "world_size": rt.world_size}
            record: dict[str, Any] = {"step": done, "loss": stats.loss, "lr": stats.lr,
                                      "grad_norm": stats.grad_norm, "trained_tokens": step_tokens}
            if hp.eval_interval and done % hp.eval_interval == 0 and done < hp.max_steps:
                metrics = self.evaluate(done, final=False)
                fields["eval_loss"] = record["eval_loss"] = metrics.get("loss")
            decision = control.agree_now()
            stop = decision.stop
            if decision.max_steps != hp.max_steps:
                self.config = with_max_steps(self.config, decision.max_steps, done)
                hp = self.trainer.hp = self.config.hyperparameters
                fields["total_steps"] = hp.max_steps
            checkpoint_now = done % self.config.checkpointing.interval == 0 or stop or done >= hp.max_steps
            self.reporter.update(force=checkpoint_now, step_record=record, **fields)
            log.info("sft step %d/%d loss %.4f lr %.2e", done, hp.max_steps, stats.loss, stats.lr)
            if checkpoint_now:
                self.checkpoint(done, tokens_seen)
            if stop:
                raise WorkloadError(f"terminated by SIGTERM at step {done}; checkpoint written, the run resumes "
                                    "from it")
        metrics = self.evaluate(hp.max_steps, final=True)
        return SftResult(progress=self.finish(metrics), losses=losses, eval_metrics=metrics)

    def evaluate(self, step: int, final: bool) -> dict[str, float]:
        hp = self.config.hyperparameters
        loss = sft_eval_loss(self.model, self.val, hp.eval_batches * self.micro, self.micro, self.runtime)
        ctx = EvalContext(self.config, self.runtime, self.store, self.prefix, self.base.chat, self.base.eos_id,
                          self.base.pad_id)
        metrics = write_eval(ctx, unwrap(self.model), step, final, train_split_loss=loss)
        self.reporter.update(force=True, eval_metrics=metrics, eval_loss=metrics.get("loss"))
        return metrics

    def checkpoint(self, step: int, tokens_seen: int) -> None:
        hp = self.config.hyperparameters
        state = {"step": step, "tokens_seen": tokens_seen, "world_size": self.runtime.world_size,
                 "global_batch_size": hp.global_batch_size, "seed": hp.seed,
                 "data_position": step * hp.global_batch_size}
        checkpoint_and_prune(self.store, self.prefix, step, self.model, self.trainer.optimizer, state, self.runtime,
                             self.config.checkpointing.keep, self.reporter)

    def finish(self, metrics: dict[str, float]) -> TrainProgress:
        return finish_posttrain(self.model, self.config, self.runtime, self.base, self.store, self.prefix,
                                self.reporter, metrics)
