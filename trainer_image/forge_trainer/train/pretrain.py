"""`stage: pretrain`: train the transformer from scratch (or a base model) on a dataset's token
shards, checkpointing, resuming, reporting progress, and exporting a Hugging Face model at the end.

Under torchrun every worker runs this function; a worker group that re-forms (a node lost or
added) starts it again and it resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from forge_trainer.config import Precision, TrainConfig, TrainProgress
from forge_trainer.config.store import MODEL_DIR
from forge_trainer.data.manifest import Manifest, Split
from forge_trainer.data.shards import fetch_tokenizer, load_manifest
from forge_trainer.errors import ConfigError, WorkloadError
from forge_trainer.model.args import ModelArgs, resolve_model_args
from forge_trainer.model.flops import flops_per_token, peak_flops
from forge_trainer.model.hf_export import CONFIG_NAME, args_from_hf_config, export_hf
from forge_trainer.model.hf_import import HFImportError
from forge_trainer.store import ObjectStore, StoreError, join_key, open_uri, read_json
from forge_trainer.train.base_model import open_base_model
from forge_trainer.train.batches import (
    Batch,
    TokenSequences,
    eval_micro_batches,
    micro_batch_size_for,
    step_indices,
    step_micro_batches,
)
from forge_trainer.train.checkpoint import MARKER_NAME, Checkpoint, load_checkpoint
from forge_trainer.train.loop import StageRun, open_run, run_stage
from forge_trainer.train.parallel import build_model, gather_state, wrap_model
from forge_trainer.train.runtime import Runtime, barrier, init_runtime
from forge_trainer.train.step_engine import NonFiniteLossError, StepEngine, StepStats, first_non_finite


@dataclass
class PretrainResult:
    """What a finished run produced (returned to in-process callers such as tests and benchmarks)."""

    progress: TrainProgress
    """The final progress.json."""
    losses: dict[int, float] = field(default_factory=dict)
    """Training loss of each step this process ran (1-based step numbers)."""


def _dataset(config: TrainConfig) -> tuple[Manifest, str]:
    try:
        manifest, digest = load_manifest(config.dataset, config.store)
    except StoreError as exc:
        raise WorkloadError(f"dataset {config.dataset}: {exc}") from exc
    if not any(s.split is Split.TRAIN and s.tokens for s in manifest.shards):
        raise WorkloadError(f"dataset {config.dataset} has no training token shards (purpose "
                            f"{manifest.purpose.value}); pretraining needs a pretrain dataset")
    return manifest, digest


def _validation(config: TrainConfig, manifest: Manifest) -> TokenSequences:
    """Sequences evaluated on: the validation split of `evalDataset` (or its train split when it has
    no validation split), else the validation split of the training dataset."""
    hp = config.hyperparameters
    if config.eval_dataset is None:
        return TokenSequences(config.dataset, manifest, Split.VALIDATION, hp.sequence_length, hp.seed,
                              config.store, shuffle=False)
    try:
        other, _ = load_manifest(config.eval_dataset, config.store)
    except StoreError as exc:
        raise WorkloadError(f"evalDataset {config.eval_dataset}: {exc}") from exc
    if other.tokenizer.sha256 != manifest.tokenizer.sha256:
        raise ConfigError(f"evalDataset {config.eval_dataset} was tokenized with another tokenizer than "
                          f"dataset {config.dataset}")
    split = Split.VALIDATION if any(s.split is Split.VALIDATION for s in other.shards) else Split.TRAIN
    return TokenSequences(config.eval_dataset, other, split, hp.sequence_length, hp.seed, config.store,
                          shuffle=False)


def _model_args(config: TrainConfig, manifest: Manifest) -> ModelArgs:
    """Dimensions from `model` (preset / explicit), else those of the base model or checkpoint the
    run starts from; the vocabulary is the dataset tokenizer's."""
    vocab = manifest.tokenizer.vocab_size
    if config.model is not None:
        try:
            args = resolve_model_args(config.model, vocab)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from exc
    elif config.init_model:
        args = _read_base_args(config.init_model, config)
    elif config.init_checkpoint:
        raw = _read_marker(config).get("state", {}).get("model_args")
        if raw is None:
            raise ConfigError(f"initCheckpoint {config.init_checkpoint} does not record its model; set model")
        args = ModelArgs.from_dict(raw)
    else:
        raise ConfigError("model: pretraining from scratch needs model.size or explicit dimensions")
    if args.vocab_size < vocab or (args.vocab_size != vocab and not config.init_model):
        # a base's embedding table may have more rows than its tokenizer has tokens (Qwen2 pads it)
        raise ConfigError(f"the model's vocabulary ({args.vocab_size}) differs from the dataset tokenizer's "
                          f"({vocab})")
    if config.hyperparameters.sequence_length > args.max_seq_len:
        raise ConfigError(f"hyperparameters.sequenceLength ({config.hyperparameters.sequence_length}) exceeds "
                          f"the model's maxSeqLen ({args.max_seq_len})")
    return args


def _read_base_args(uri: str, config: TrainConfig) -> ModelArgs:
    store, key = open_uri(uri, config.store)
    try:
        return args_from_hf_config(read_json(store, join_key(key, CONFIG_NAME)), f"initModel {uri}/{CONFIG_NAME}")
    except HFImportError as exc:
        raise ConfigError(str(exc)) from exc
    except (StoreError, KeyError, TypeError) as exc:
        raise WorkloadError(f"initModel {uri}: {exc}") from exc


def _read_marker(config: TrainConfig) -> dict[str, Any]:
    assert config.init_checkpoint is not None
    store, key = open_uri(config.init_checkpoint, config.store)
    try:
        marker: dict[str, Any] = read_json(store, join_key(key, MARKER_NAME))
    except StoreError as exc:
        raise WorkloadError(f"initCheckpoint {config.init_checkpoint}: {exc}") from exc
    return marker


def run_pretrain(config: TrainConfig, runtime: Runtime | None = None,
                 config_path: Path | None = None) -> PretrainResult:
    """Run (or resume) a pretraining run to its last step and export the model.

    config_path: the file `config` was read from; its `hyperparameters.maxSteps` is followed while
    the run goes on (see `control`)."""
    runtime = runtime or init_runtime()
    return run_stage(config, runtime, lambda store, prefix: _train(config, runtime, store, prefix, config_path))


def _train(config: TrainConfig, runtime: Runtime, store: ObjectStore, prefix: str,
           config_path: Path | None = None) -> PretrainResult:
    hp = config.hyperparameters
    manifest, _ = _dataset(config)
    args = _model_args(config, manifest)
    try:
        micro = micro_batch_size_for(hp.global_batch_size, runtime.world_size, hp.micro_batch_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    train = TokenSequences(config.dataset, manifest, Split.TRAIN, hp.sequence_length, hp.seed, config.store)
    if train.total < hp.global_batch_size:
        raise WorkloadError(f"dataset {config.dataset} holds {train.total} training sequences of "
                            f"{hp.sequence_length} tokens, fewer than one global batch ({hp.global_batch_size})")
    val = _validation(config, manifest)

    torch.manual_seed(hp.seed)
    with open_base_model(config, runtime) as base:
        if base is not None and base.args != args:
            raise ConfigError(f"initModel {base.uri} has other dimensions than model: {base.args} vs {args}")
        model = wrap_model(build_model(args), runtime, hp.activation_checkpointing, hp.compile,
                           load=base.load if base is not None else None)
    engine = StepEngine(model, hp, runtime, bf16=config.precision is Precision.BF16)

    def checkpoint_extra(step: int) -> dict[str, Any]:
        return {"sequence_length": hp.sequence_length, "data_position": step * hp.global_batch_size,
                "model_args": args.to_dict()}

    with open_run(config, runtime, store, prefix, engine, config_path, checkpoint_extra) as run:
        if base is not None:
            run.reporter.update(base_model_digest=base.digest)
        if run.resumed is None and config.init_checkpoint:
            _load_weights_from_checkpoint(config, model)
        return _Pretrain(run, manifest, args, train, val, micro).loop()


def _load_weights_from_checkpoint(config: TrainConfig, model: torch.nn.Module) -> None:
    """Start from the weights (only) of the checkpoint directory `initCheckpoint` names."""
    assert config.init_checkpoint is not None
    marker = _read_marker(config)
    store, key = open_uri(config.init_checkpoint, config.store)
    try:
        load_checkpoint(store, Checkpoint(step=int(marker["step"]), key=key, marker=marker), model, None)
    except StoreError as exc:
        raise WorkloadError(f"initCheckpoint {config.init_checkpoint}: {exc}") from exc


SYNC_SECONDS = 1.0
"""About how often (in seconds of training) the loop waits for the device to read losses, report and
re-decide; steps between sync steps run without waiting."""
MAX_SYNC_STEPS = 50
"""Sync at least every this many steps."""


@dataclass
class _Pending:
    """A step whose values are not read yet."""

    done: int
    stats: StepStats
    seconds: float
    time: float
    tokens_seen: int


@dataclass
class _Pretrain:
    """One start of a pretraining run: its data and the loop from a step to the end."""

    run: StageRun
    manifest: Manifest
    args: ModelArgs
    train: TokenSequences
    val: TokenSequences
    micro: int
    _warming: Future[None] | None = None

    def loop(self) -> PretrainResult:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="forge-shards") as loader:
            return self._steps(loader)

    def _batches(self, step: int, loader: ThreadPoolExecutor) -> list[Batch]:
        """This worker's micro-batches of `step` (pinned for a GPU), and the shards the next step needs,
        when not read yet, read in the background (from S3, say) while this step computes. The batches
        themselves are gathered here: tens of microseconds, less than handing them between threads
        costs on a busy machine."""
        hp, rt = self.run.config.hyperparameters, self.run.runtime
        try:
            batches = step_micro_batches(self.train, step, hp.global_batch_size, rt.rank, rt.world_size,
                                         self.micro)
            warming = self._warming
            if warming is not None and warming.done():
                self._warming = None
                warming.result()  # a failed read surfaces here
        except StoreError as exc:
            raise WorkloadError(f"dataset {self.run.config.dataset}: {exc}") from exc
        if self._warming is None:
            upcoming = self.train.missing_shards(step_indices(step + 1, hp.global_batch_size, rt.rank,
                                                              rt.world_size))
            if upcoming:
                self._warming = loader.submit(self.train.warm, upcoming)
        if rt.device.type == "cuda":
            batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
        return batches

    def _steps(self, loader: ThreadPoolExecutor) -> PretrainResult:
        """Steps until the last one. Nothing here waits for the device between sync steps: a step's
        loss, gradient norm and the workers' agreement (SIGTERM, live max steps) ride along with its
        loss all-reduce and are read at sync steps (about every SYNC_SECONDS, at checkpoints, evals
        and the last step; the same steps on every worker). A non-finite step is skipped on the
        device and stops the run at the next sync step, before any checkpoint."""
        run = self.run
        hp, rt, control = run.config.hyperparameters, run.runtime, run.control
        step_tokens = hp.global_batch_size * hp.sequence_length
        flops_per_tok = flops_per_token(self.args, hp.sequence_length)
        peak = peak_flops(rt.device)
        losses: dict[int, float] = {}
        pending: list[_Pending] = []
        sync_every, synced_step, synced_at = 1, run.step, time.perf_counter()
        step_seconds = 0.0
        step, tokens_seen = run.step, run.tokens_seen
        while step < run.max_steps:
            began = time.perf_counter()
            batches = self._batches(step, loader)
            extra = control.local_tensor(step_seconds) if rt.distributed else None
            stats = run.engine.train_step(step, batches, check=False, extra=extra)
            step += 1
            step_seconds = time.perf_counter() - began
            tokens_seen += step_tokens
            pending.append(_Pending(step, stats, step_seconds, time.time(), tokens_seen))
            if not (run.checkpoint_due(step) or run.eval_due(step) or step >= run.max_steps
                    or step - synced_step >= sync_every):
                continue

            bad = first_non_finite([p.stats for p in pending])
            good = pending if bad is None else pending[:bad]
            decision = control.agree(stats.extra if rt.distributed else control.local_values(step_seconds))
            now = time.perf_counter()
            tps = step_tokens * (step - synced_step) / max(now - synced_at, 1e-9)
            records: list[dict[str, Any]] = [
                {"step": p.done, "loss": p.stats.loss, "lr": p.stats.lr, "grad_norm": p.stats.grad_norm,
                 "step_seconds": p.seconds, "tokens_per_second": tps, "world_size": rt.world_size, "time": p.time}
                for p in good]
            losses.update((p.done, p.stats.loss) for p in good)
            if bad is not None:
                first = pending[bad]
                if good:
                    last = good[-1]
                    run.reporter.update(step_records=records, step=last.done, tokens_seen=last.tokens_seen,
                                        loss=last.stats.loss)
                raise NonFiniteLossError(f"{first.stats.problem} at step {first.done}; its optimizer step was "
                                         "skipped and no checkpoint written from this state")
            fields: dict[str, Any] = {
                "step": step, "tokens_seen": tokens_seen, "loss": stats.loss, "tokens_per_second": tps,
                "mfu": flops_per_tok * tps / (peak * rt.world_size) if peak else None, "world_size": rt.world_size,
            }
            run.after_step(step, tokens_seen, fields, records, decision, evaluate=lambda _: self.evaluate(),
                           summary=f"loss {stats.loss:.4f} lr {stats.lr:.2e} {tps:.0f} tok/s")
            pending.clear()
            seconds = decision.step_seconds if rt.distributed else step_seconds
            sync_every = max(1, min(MAX_SYNC_STEPS, int(SYNC_SECONDS / max(seconds, 1e-6))))
            synced_step, synced_at = step, time.perf_counter()
        return PretrainResult(progress=self.finish(), losses=losses)

    def evaluate(self) -> float | None:
        hp, rt = self.run.config.hyperparameters, self.run.runtime
        batches = eval_micro_batches(self.val, hp.eval_batches * hp.micro_batch_size, rt.rank, rt.world_size,
                                     self.micro)
        return self.run.engine.evaluate(batches)

    def finish(self) -> TrainProgress:
        """Final evaluation and the Hugging Face export; the final progress."""
        run = self.run
        eval_loss = self.evaluate()
        full = gather_state(run.engine.model)
        metrics: dict[str, float] = {}
        if eval_loss is not None:
            metrics = {"loss": eval_loss, "perplexity": math.exp(min(eval_loss, 50.0))}
        if run.runtime.is_main:
            tokenizer = fetch_tokenizer(run.config.dataset, run.config.store, manifest=self.manifest)
            tok = self.manifest.tokenizer
            export = export_hf(full, self.args, tokenizer, run.store.uri(join_key(run.prefix, MODEL_DIR)),
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                               store_config=run.config.store, base_uri=run.config.init_model)
            run.reporter.update(force=True, eval_loss=eval_loss, eval_metrics=metrics, done=True,
                                final_model_uri=export.uri, final_model_digest=export.digest, error=None)
        barrier(run.runtime)
        return run.reporter.progress
