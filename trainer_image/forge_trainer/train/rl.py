"""`stage: rl`: GRPO with task-completion rewards, on the same machinery as sft (runtime, StepEngine
step, DCP checkpoints with resume, progress.json, export with chat template, eval.json).

One step:
  1. take the step's prompts from the rl dataset (a seeded order; `globalBatchSize / groupSize`
     prompts per step across all workers, each worker its share);
  2. sample `groupSize` completions per prompt from the policy (temperature, maxNewTokens, KV cache);
  3. score every completion with the verifier (built-in or sandboxed custom; a verifier that crashes
     or times out scores 0 and is counted);
  4. group-relative advantages: A = (r - mean(group)) / (std(group) + 1e-4), std with Bessel's
     correction (as TRL's GRPOTrainer; 0 where a group's rewards are all equal);
  5. one optimizer step on the GRPO objective, per completion token t:
         -min(rho_t A, clip(rho_t, 1 - eps, 1 + eps) A) + beta * KL_t,
     rho_t = pi(y_t) / pi_old(y_t), KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1 (the unbiased
     k3 estimator against the frozen reference model), averaged over a completion's tokens, then
     over completions (the DeepSeekMath GRPO objective; TRL's `loss_type="grpo"`). Log-probabilities are
     taken at the sampling temperature. With one optimizer step per rollout rho_t is 1 at the update
     (as in TRL with num_iterations 1), so the clip fraction reported is 0 unless the policy moved
     between sampling and the update.
The reference is the initial model: a frozen copy for `method: full`; for lora/qlora the same model
with its adapters bypassed (no second copy). Progress adds, per step, mean reward, success rate
(sampled), KL, mean completion length and clip fraction; each step's record in the step log too.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from forge_trainer.config import DatasetPurpose, Precision, SftMethod, TrainConfig, TrainProgress
from forge_trainer.data.manifest import Split
from forge_trainer.data.shards import load_manifest
from forge_trainer.errors import ConfigError, WorkloadError
from forge_trainer.model.transformer import Transformer
from forge_trainer.store import ObjectStore, StoreError
from forge_trainer.train.batches import Batch
from forge_trainer.train.evaluate import EvalContext, prompt_text, read_tasks, task_prompt, write_eval
from forge_trainer.train.generate import sample
from forge_trainer.train.loop import StageRun, open_run, run_stage
from forge_trainer.train.lora import adapters_disabled
from forge_trainer.train.parallel import autocast, unwrap, wrap_model
from forge_trainer.train.posttrain import (
    Base,
    finish_posttrain,
    load_base,
    load_frozen_copy,
    prepare_for_method,
)
from forge_trainer.train.runtime import Runtime, all_reduce_sum, init_runtime
from forge_trainer.train.step_engine import StepEngine
from forge_trainer.train.verifiers import RewardModel, RewardStats

log = logging.getLogger(__name__)

ADV_EPS = 1e-4
"""Added to a group's reward std before dividing (TRL's value)."""


def group_advantages(rewards: Tensor) -> Tensor:
    """(B, G) rewards -> (B, G) advantages relative to each prompt's group (0 where a group is uniform)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # Bessel-corrected, as TRL
    return (rewards - mean) / (std + ADV_EPS)


def rollout_batch(prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], pad_id: int) -> Batch:
    """Sequences [left-padded prompt | completion | right padding] with `attention_mask` and
    `target_mask` (N, T - 1): 1 where the next token is a completion token."""
    p_width = max(len(p) for p in prompts)
    c_width = max(1, max(len(c) for c in completions))
    n, t = len(prompts), p_width + c_width
    ids = torch.full((n, t), pad_id, dtype=torch.long)
    attn = torch.zeros((n, t), dtype=torch.long)
    target = torch.zeros((n, t), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        start = p_width - len(p)
        ids[i, start:p_width] = torch.tensor(list(p), dtype=torch.long)
        attn[i, start:p_width + len(c)] = 1
        if c:
            ids[i, p_width:p_width + len(c)] = torch.tensor(list(c), dtype=torch.long)
            target[i, p_width:p_width + len(c)] = 1
    return {"input_ids": ids, "attention_mask": attn, "target_mask": target[:, 1:].contiguous()}


def token_logprobs(model: nn.Module, batch: Batch, temperature: float) -> Tensor:
    """log pi(token t+1 | tokens <= t) at the sampling temperature, (N, T - 1)."""
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])[:, :-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    return logp.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token estimate of KL(pi || ref) from samples of pi: exp(ref - logp) - (ref - logp) - 1 (>= 0)."""
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def masked_mean_per_row(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of each row's masked values, (N,)."""
    m = mask.to(values.dtype)
    return (values * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)


@dataclass
class GrpoLoss:
    """The StepEngine loss function of GRPO for these settings; it also counts, for the step log, the
    completion tokens whose clipped term was the one taken (TRL's clip ratio)."""

    clip_ratio: float
    kl_coefficient: float
    temperature: float
    clipped: float = 0.0
    tokens: float = 0.0

    def __call__(self, model: nn.Module, batch: Batch) -> Tensor:
        """Mean over completions of each completion's mean per-token GRPO loss."""
        logp = token_logprobs(model, batch, self.temperature)
        ratio = torch.exp(logp - batch["old_logp"])
        adv = batch["advantages"][:, None]
        surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - self.clip_ratio, 1 + self.clip_ratio) * adv)
        per_token = -surrogate + self.kl_coefficient * kl_k3(logp, batch["ref_logp"])
        mask = batch["target_mask"]
        with torch.no_grad():
            clipped = ((ratio < 1 - self.clip_ratio) & (adv < 0)) | ((ratio > 1 + self.clip_ratio) & (adv > 0))
            self.clipped += float((clipped & mask.bool()).sum())
            self.tokens += float(mask.sum())
        return masked_mean_per_row(per_token, mask).mean()

    def take_clip_fraction(self) -> float:
        """Clipped share of the completion tokens since the last call (then the counts restart)."""
        fraction = self.clipped / self.tokens if self.tokens else 0.0
        self.clipped = self.tokens = 0.0
        return fraction


@dataclass
class StepRollout:
    """What sampling and scoring produced for one worker in one step."""

    batch: Batch
    stats: RewardStats
    kl: float
    completion_tokens: int
    samples: list[tuple[str, str, float]] = field(default_factory=list)
    """A few (prompt, completion, reward) for the step log."""


class ReferencePolicy:
    """The frozen initial model: a copy (full fine-tuning) or the policy with adapters bypassed."""

    def __init__(self, policy: Transformer, method: SftMethod) -> None:
        self.policy = policy
        self.copy: Transformer | None = None
        if method is SftMethod.FULL:
            self.copy = copy.deepcopy(policy).eval()
            for p in self.copy.parameters():
                p.requires_grad_(False)

    @contextmanager
    def model(self) -> Iterator[Transformer]:
        """The reference model, for the duration of the block."""
        if self.copy is not None:
            yield self.copy
            return
        with adapters_disabled(self.policy):
            yield self.policy


@dataclass
class RlResult:
    """What a finished run produced (for in-process callers: tests, benchmarks)."""

    progress: TrainProgress
    rewards: dict[int, float] = field(default_factory=dict)
    """Mean reward of each step this process ran (1-based)."""
    success: dict[int, float] = field(default_factory=dict)
    """Success rate of each step this process ran."""
    eval_metrics: dict[str, float] = field(default_factory=dict)
    initial_eval: dict[str, float] = field(default_factory=dict)
    """Evaluation before the first step (fresh runs only)."""


def _tasks(config: TrainConfig) -> list[dict[str, Any]]:
    try:
        manifest, _ = load_manifest(config.dataset, config.store)
        if manifest.purpose is not DatasetPurpose.RL:
            raise WorkloadError(f"dataset {config.dataset} has purpose {manifest.purpose.value}; stage rl needs "
                                "an rl dataset of tasks")
        tasks, _ = read_tasks(config.dataset, config, (Split.TRAIN,))
    except StoreError as exc:
        raise WorkloadError(f"dataset {config.dataset}: {exc}") from exc
    if not tasks:
        raise WorkloadError(f"dataset {config.dataset} has no training tasks with a prompt")
    return tasks


def run_rl(config: TrainConfig, runtime: Runtime | None = None, config_path: Path | None = None) -> RlResult:
    """Run (or resume) an RL run to its last step and export the model (and adapter)."""
    runtime = runtime or init_runtime()
    return run_stage(config, runtime, lambda store, prefix: _train(config, runtime, store, prefix, config_path))


def _train(config: TrainConfig, runtime: Runtime, store: ObjectStore, prefix: str,
           config_path: Path | None) -> RlResult:
    hp, rl = config.hyperparameters, config.rl
    prompts_per_step = max(1, hp.global_batch_size // rl.group_size)
    if prompts_per_step % runtime.world_size:
        raise ConfigError(f"hyperparameters.globalBatchSize / rl.groupSize ({prompts_per_step} prompts per step) "
                          f"must be divisible by the number of workers ({runtime.world_size})")
    if rl.reward is None:
        raise ConfigError("rl.reward: stage rl needs a verifier (rl.reward.verifier)")
    rewards = RewardModel.from_config(rl.reward)
    tasks = _tasks(config)
    torch.manual_seed(hp.seed)
    with load_base(config, runtime) as base:  # built on the meta device; each worker loads its shard
        prepare_for_method(base.model, config)
        reference = ReferencePolicy(base.model, config.method)
        model = wrap_model(base.model, runtime, hp.activation_checkpointing, hp.compile, load=base.load)
        if reference.copy is not None:
            load_frozen_copy(reference.copy, base, runtime)
    loss_fn = GrpoLoss(rl.clip_ratio, rl.kl_coefficient, rl.temperature)
    engine = StepEngine(model, hp, runtime, loss_fn=loss_fn, params=list(model.named_parameters()),
                        bf16=config.precision is Precision.BF16)
    with open_run(config, runtime, store, prefix, engine, config_path,
                  lambda step: {"task_position": step * prompts_per_step}) as run:
        run.reporter.update(base_model_digest=base.digest)
        return _Rl(run, base, reference, rewards, tasks, prompts_per_step, loss_fn).loop()


@dataclass
class _Rl:
    """One start of an RL run: its policy, reference, tasks and rewards, and the loop to the end."""

    run: StageRun
    base: Base
    reference: ReferencePolicy
    rewards: RewardModel
    tasks: list[dict[str, Any]]
    prompts_per_step: int
    loss: GrpoLoss
    _order: dict[int, list[int]] = field(default_factory=dict)

    def step_tasks(self, step: int) -> list[dict[str, Any]]:
        """This worker's tasks of `step`: a contiguous share of the seeded endless task stream."""
        rt, n = self.run.runtime, len(self.tasks)
        share = self.prompts_per_step // rt.world_size
        start = step * self.prompts_per_step + rt.rank * share
        out = []
        for index in range(start, start + share):
            epoch, within = divmod(index, n)
            if epoch not in self._order:
                order = list(range(n))
                random.Random(self.run.config.hyperparameters.seed * 1_000_003 + epoch).shuffle(order)
                self._order = {epoch: order}
            out.append(self.tasks[self._order[epoch][within]])
        return out

    @torch.no_grad()
    def rollout(self, step: int) -> StepRollout:
        """Sample, score and prepare the GRPO batch of this worker for `step`."""
        config, rt, chat = self.run.config, self.run.runtime, self.base.chat
        rl = config.rl
        tasks = self.step_tasks(step)
        group = [t for t in tasks for _ in range(rl.group_size)]
        prompts = [task_prompt(chat, t) for t in group]
        generator = torch.Generator(device=rt.device).manual_seed(
            config.hyperparameters.seed * 1_000_003 + step * 1009 + rt.rank)
        policy = unwrap(self.run.engine.model)
        policy.eval()  # no dropout while sampling and scoring old/reference log-probs
        completions = sample(policy, prompts, max_new_tokens=rl.max_new_tokens, temperature=rl.temperature,
                             stop_ids={chat.im_end, self.base.eos_id}, pad_id=self.base.pad_id,
                             generator=generator)
        texts = [chat.decode(c) for c in completions]
        outcomes, stats = self.rewards.score([prompt_text(t) for t in group], texts, group)
        scores = torch.tensor([o.score for o in outcomes], dtype=torch.float32).view(len(tasks), rl.group_size)
        batch = rollout_batch(prompts, completions, self.base.pad_id)
        batch["advantages"] = group_advantages(scores).reshape(-1)
        on_device = {k: v.to(rt.device) for k, v in batch.items()}
        with autocast(rt, config.precision is Precision.BF16):
            old = token_logprobs(policy, on_device, rl.temperature)
            with self.reference.model() as ref_model:
                ref = token_logprobs(ref_model, on_device, rl.temperature)
        mask = on_device["target_mask"]
        kl = float((kl_k3(old, ref) * mask).sum() / mask.sum().clamp(min=1))
        batch["old_logp"], batch["ref_logp"] = old.cpu(), ref.cpu()
        samples = [(prompt_text(group[i]), texts[i], outcomes[i].score) for i in range(min(2, len(group)))]
        return StepRollout(batch, stats, kl, int(batch["target_mask"].sum()), samples)

    def micro_batches(self, batch: Batch) -> list[Batch]:
        """The step's rollout batch cut into micro-batches."""
        micro = self.run.config.hyperparameters.micro_batch_size
        n = batch["input_ids"].shape[0]
        return [{k: v[i:i + micro] for k, v in batch.items()} for i in range(0, n, micro)]

    def loop(self) -> RlResult:
        """Train from the run's step to its last, evaluating before the first step and after the last."""
        run, rt = self.run, self.run.runtime
        result = RlResult(progress=run.reporter.progress)
        step, tokens_seen = run.step, run.tokens_seen
        if step == 0:
            result.initial_eval = self.evaluate(0, final=False)
            run.reporter.update(force=True, initial_eval_metrics=result.initial_eval)
        while step < run.max_steps:
            began = time.perf_counter()
            roll = self.rollout(step)
            stats = run.engine.train_step(step, self.micro_batches(roll.batch))
            totals = all_reduce_sum(rt, torch.tensor([roll.stats.score_sum, float(roll.stats.passed),
                                                      float(roll.stats.total), float(roll.stats.errors), roll.kl,
                                                      float(roll.batch["attention_mask"].sum()),
                                                      float(roll.completion_tokens), self.loss.take_clip_fraction()],
                                                     dtype=torch.float64))
            score_sum, passed, total, errors, kl_sum, seq_tokens, completion_tokens, clip_sum = totals.tolist()
            step += 1
            mean_reward, success, kl = score_sum / total, passed / total, kl_sum / rt.world_size
            length, clipped = completion_tokens / total, clip_sum / rt.world_size
            tokens_seen += int(seq_tokens)
            result.rewards[step], result.success[step] = mean_reward, success
            fields: dict[str, Any] = {"step": step, "tokens_seen": tokens_seen, "loss": stats.loss,
                                      "mean_reward": mean_reward, "success_rate": success, "kl": kl,
                                      "completion_length": length, "clip_fraction": clipped,
                                      "tokens_per_second": seq_tokens / max(time.perf_counter() - began, 1e-9),
                                      "world_size": rt.world_size}
            record: dict[str, Any] = {"step": step, "loss": stats.loss, "lr": stats.lr, "grad_norm": stats.grad_norm,
                                      "mean_reward": mean_reward, "success_rate": success, "kl": kl,
                                      "completion_length": length, "clip_fraction": clipped,
                                      "verifier_errors": int(errors), "completion_tokens": roll.completion_tokens,
                                      "samples": roll.samples}
            run.after_step(step, tokens_seen, fields, [record],
                           evaluate=lambda at: self.evaluate(at, final=False).get("loss"),
                           summary=f"reward {mean_reward:.3f} success {success:.3f} kl {kl:.4f} "
                                   f"length {length:.1f} clipped {clipped:.3f} loss {stats.loss:.4f}")
        result.eval_metrics = self.evaluate(run.max_steps, final=True)
        result.progress = self.finish(result.eval_metrics)
        return result

    def evaluate(self, step: int, final: bool) -> dict[str, float]:
        """Write eval.json at `step` and report its metrics."""
        run = self.run
        ctx = EvalContext(run.config, run.runtime, run.store, run.prefix, self.base.chat, self.base.eos_id,
                          self.base.pad_id)
        extra = {"train_verifier_errors": float(self.rewards.totals.errors)} if final else None
        metrics = write_eval(ctx, unwrap(run.engine.model), step, final, extra=extra)
        run.reporter.update(force=True, eval_metrics=metrics, eval_loss=metrics.get("loss"))
        return metrics

    def finish(self, metrics: dict[str, float]) -> TrainProgress:
        """Export the model and mark the run done."""
        run = self.run
        return finish_posttrain(run.engine.model, run.config, run.runtime, self.base, run.store, run.prefix,
                                run.reporter, metrics)
