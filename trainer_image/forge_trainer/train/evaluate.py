"""Evaluation for sft and rl: the numbers a ForgeDeployment's eval gate reads, in `<output>/eval.json`.

    {"step": 200, "final": true, "dataset": "<eval dataset URI>", "metrics": {...},
     "initial": {"step": 0, "metrics": {...}}, "change": {"pass_rate": 0.4, ...},
     "history": [{"step": 0, "final": false, "metrics": {...}}, ...], "updatedAt": "..."}

`initial` is the run's first evaluation (for rl: the starting model, before the first step, on the
same tasks) and `change` the final minus the initial value of every rate both have (pass rates,
mean reward, loss): the SFT -> RL difference.

Metrics (flat names, floats):
    loss, perplexity          mean token loss on the eval dataset (sft: assistant tokens only; pretrain
                              dataset: every token), else on the training dataset's validation split
    pass_rate                 tasks (rl records) whose greedy completion passes its verifier
    pass_rate_low, _high      its 95% Wilson score interval
    pass_rate/<verifier>      the same per verifier (exact_match, regex, json_schema, tool_call, ...),
    pass_rate_low/<verifier>, pass_rate_high/<verifier>, tasks/<verifier>   with its interval and tasks
    mean_reward               mean verifier score of those completions
    tasks                     tasks evaluated
    verifier_errors           verifications that crashed, timed out or ran out of memory (scored 0)

Which tasks: the eval dataset's records when it is an rl dataset; for stage rl without one, the
validation split of the training dataset. At most `MAX_EVAL_TASKS`, in dataset order, so every
evaluation of a run scores the same tasks. Every worker generates for its share; rank 0 writes.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

from forge_trainer.config import DatasetPurpose, Stage, TrainConfig
from forge_trainer.config.store import EVAL_NAME
from forge_trainer.config.wire import rfc3339
from forge_trainer.data.manifest import Manifest, ShardFormat, Split
from forge_trainer.data.shards import iter_records, load_manifest
from forge_trainer.model.transformer import Transformer
from forge_trainer.store import ObjectStore, StoreError, join_key, read_json, write_json_atomic
from forge_trainer.train.batches import TokenSequences, eval_micro_batches
from forge_trainer.train.chat import ChatTokenizer
from forge_trainer.train.generate import sample
from forge_trainer.train.runtime import Runtime, all_reduce_sum, gather_objects
from forge_trainer.train.sft_examples import PackedStream, read_sft_examples, sft_eval_loss
from forge_trainer.train.step_engine import token_loss_sum
from forge_trainer.train.verifiers import RewardModel

log = logging.getLogger(__name__)

MAX_EVAL_TASKS = 256
"""Most tasks scored per evaluation."""
EVAL_BATCH = 16
"""Prompts generated together."""
WILSON_Z = 1.959964
"""Normal quantile of a two-sided 95% interval."""
CHANGE_KEYS = ("pass_rate", "mean_reward", "loss")
"""Metrics (and their per-verifier forms) whose final - initial difference eval.json reports."""


def wilson_interval(passed: int, total: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The Wilson score interval of a pass rate of `passed` out of `total` (0, 1 when there are none)."""
    if total <= 0:
        return 0.0, 1.0
    p = passed / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_metrics(passes: list[bool], suffix: str = "") -> dict[str, float]:
    """pass_rate, its Wilson interval and the task count of `passes`, names ending in `suffix`."""
    low, high = wilson_interval(sum(passes), len(passes))
    return {f"pass_rate{suffix}": sum(passes) / len(passes), f"pass_rate_low{suffix}": low,
            f"pass_rate_high{suffix}": high, f"tasks{suffix}": float(len(passes))}


def metric_change(initial: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """final - initial for the rates and losses both evaluations have (the SFT -> RL difference)."""
    return {k: final[k] - initial[k] for k in sorted(final)
            if k in initial and k.split("/", 1)[0] in CHANGE_KEYS}


@dataclass
class EvalContext:
    """What an evaluation needs from its run."""

    config: TrainConfig
    runtime: Runtime
    store: ObjectStore
    prefix: str
    chat: ChatTokenizer
    eos_id: int
    pad_id: int
    history: list[dict[str, Any]] = field(default_factory=list)


def task_prompt(chat: ChatTokenizer, task: dict[str, Any]) -> list[int]:
    """Prompt ids of a task: its `messages` when it has them, else one user turn with its `prompt`."""
    messages = task.get("messages")
    if not isinstance(messages, list):
        messages = [{"role": "user", "content": str(task.get("prompt", ""))}]
    return chat.prompt_ids(messages)


def prompt_text(task: dict[str, Any]) -> str:
    """The prompt a verifier sees."""
    return str(task.get("prompt", ""))


def read_tasks(uri: str, config: TrainConfig, splits: tuple[Split, ...], limit: int | None = None
               ) -> tuple[list[dict[str, Any]], Manifest]:
    """The task records of an rl dataset's `splits`, in dataset order (records without a string
    prompt are skipped)."""
    manifest, _ = load_manifest(uri, config.store)
    tasks: list[dict[str, Any]] = []
    for shard in manifest.shards:
        if shard.split not in splits or shard.format is not ShardFormat.JSONL:
            continue
        for record in iter_records(uri, shard, config.store):
            if isinstance(record.get("prompt"), str) or isinstance(record.get("messages"), list):
                tasks.append(record)
            if limit is not None and len(tasks) >= limit:
                return tasks, manifest
    return tasks, manifest


def score_tasks(ctx: EvalContext, model: Transformer, tasks: list[dict[str, Any]],
                rewards: RewardModel) -> dict[str, float]:
    """Greedy completions of `tasks` (each worker its share) scored by `rewards`: pass rates overall
    and per verifier, mean reward, verifier errors."""
    rt = ctx.runtime
    mine = tasks[rt.rank::rt.world_size]
    rows: list[tuple[str, float, bool, bool]] = []
    for i in range(0, len(mine), EVAL_BATCH):
        chunk = mine[i:i + EVAL_BATCH]
        outs = sample(model, [task_prompt(ctx.chat, t) for t in chunk], max_new_tokens=ctx.config.rl.max_new_tokens,
                      temperature=0.0, stop_ids={ctx.chat.im_end, ctx.eos_id}, pad_id=ctx.pad_id)
        texts = [ctx.chat.decode(o) for o in outs]
        outcomes, _ = rewards.score([prompt_text(t) for t in chunk], texts, chunk)
        rows += [(rewards.kind_of(t).value, o.score, o.passed, o.is_error)
                 for t, o in zip(chunk, outcomes, strict=True)]
    everyone = [r for part in gather_objects(rt, rows) for r in part]
    if not everyone:
        return {}
    per_kind: dict[str, list[bool]] = defaultdict(list)
    for kind, _, passed, _ in everyone:
        per_kind[kind].append(passed)
    metrics = {
        **rate_metrics([r[2] for r in everyone]),
        "mean_reward": sum(r[1] for r in everyone) / len(everyone),
        "verifier_errors": float(sum(r[3] for r in everyone)),
    }
    for kind, passes in sorted(per_kind.items()):
        metrics.update(rate_metrics(passes, f"/{kind}"))
    return metrics


@torch.no_grad()
def token_loss(ctx: EvalContext, model: Transformer, uri: str, manifest: Manifest) -> float | None:
    """Mean next-token loss on a pretrain dataset's validation split (or train split if it has none)."""
    hp, rt = ctx.config.hyperparameters, ctx.runtime
    seq_len = min(hp.sequence_length, model.args.max_seq_len)
    for split in (Split.VALIDATION, Split.TRAIN):
        data = TokenSequences(uri, manifest, split, seq_len, hp.seed, ctx.config.store, shuffle=False)
        if data.total:
            break
    else:
        return None
    model.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)
    for batch in eval_micro_batches(data, hp.eval_batches * hp.micro_batch_size, rt.rank, rt.world_size,
                                    hp.micro_batch_size):
        total, count = token_loss_sum(model, {k: v.to(rt.device) for k, v in batch.items()})
        sums += torch.stack([total.double(), count.double()])
    total, count = all_reduce_sum(rt, sums).tolist()
    return total / count if count else None


def sft_dataset_loss(ctx: EvalContext, model: Transformer, uri: str, manifest: Manifest) -> float | None:
    """Assistant-token loss on an sft dataset's validation split (or train split if it has none)."""
    hp = ctx.config.hyperparameters
    seq_len = min(hp.sequence_length, model.args.max_seq_len)
    for split in (Split.VALIDATION, Split.TRAIN):
        examples, _ = read_sft_examples(uri, manifest, split, ctx.chat, seq_len, ctx.config)
        if examples:
            stream = PackedStream(examples, seq_len, hp.seed, one_per_row=ctx.runtime.distributed)
            return sft_eval_loss(model, stream, hp.eval_batches * hp.micro_batch_size, hp.micro_batch_size,
                                 ctx.runtime)
    return None


def evaluate(ctx: EvalContext, model: Transformer, train_split_loss: float | None = None) -> dict[str, float]:
    """Every metric this run's evaluation yields (see the module docstring)."""
    config = ctx.config
    metrics: dict[str, float] = {}
    loss = train_split_loss
    task_uri: str | None = None
    task_splits: tuple[Split, ...] = (Split.VALIDATION,)
    if config.eval_dataset:
        try:
            manifest, _ = load_manifest(config.eval_dataset, config.store)
        except StoreError as exc:
            log.warning("eval dataset %s unreadable, evaluating without it: %s", config.eval_dataset, exc)
        else:
            if manifest.purpose is DatasetPurpose.SFT:
                loss = sft_dataset_loss(ctx, model, config.eval_dataset, manifest)
            elif manifest.purpose is DatasetPurpose.PRETRAIN:
                loss = token_loss(ctx, model, config.eval_dataset, manifest)
            else:
                task_uri, task_splits = config.eval_dataset, (Split.TRAIN, Split.VALIDATION)
    elif config.stage is Stage.RL:
        task_uri = config.dataset
    if loss is not None and math.isfinite(loss):
        metrics["loss"] = loss
        metrics["perplexity"] = math.exp(min(loss, 50.0))
    if task_uri is not None:
        tasks, _ = read_tasks(task_uri, config, task_splits, MAX_EVAL_TASKS)
        if tasks:
            metrics.update(score_tasks(ctx, model, tasks, RewardModel.from_config(config.rl.reward)))
    return metrics


def write_eval(ctx: EvalContext, model: Transformer, step: int, final: bool,
               train_split_loss: float | None = None, extra: dict[str, float] | None = None) -> dict[str, float]:
    """Evaluate and (rank 0) write `<output>/eval.json`, keeping earlier evaluations as its history;
    `extra` metrics (e.g. training-time counts) are reported alongside."""
    metrics = {**evaluate(ctx, model, train_split_loss), **(extra or {})}
    if ctx.runtime.is_main:
        key = join_key(ctx.prefix, EVAL_NAME)
        if not ctx.history and ctx.store.exists(key):
            try:
                ctx.history = [h for h in read_json(ctx.store, key).get("history", []) if h.get("step", 0) < step]
            except (StoreError, AttributeError):
                ctx.history = []
        entry = {"step": step, "final": final, "metrics": metrics}
        ctx.history.append(entry)
        first = ctx.history[0]
        write_json_atomic(ctx.store, key, {
            **entry, "dataset": ctx.config.eval_dataset or ctx.config.dataset,
            "initial": {"step": first["step"], "metrics": first["metrics"]},
            "change": metric_change(first["metrics"], metrics), "history": ctx.history,
            "updatedAt": rfc3339(datetime.now(UTC))})
    log.info("eval at step %d: %s", step, {k: round(v, 4) for k, v in metrics.items()})
    return metrics
