"""The optimisation step, shared by every stage: gradient accumulation over micro-batches, gradient
sync across workers, a NaN guard, global-norm clipping and AdamW with the scheduled learning rate.

    trainer = Trainer(wrapped_model, hp, runtime)          # loss_fn defaults to causal_lm_loss
    stats = trainer.train_step(step, micro_batches)        # raises NonFiniteLossError on NaN/inf
    eval_loss = trainer.evaluate(eval_batches)

A loss function takes the (wrapped) model and a micro-batch and returns the mean loss to minimise;
SFT/RL pass their own (masked labels, policy-gradient objectives) and the parameters to train.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forge_trainer.cli import WorkloadError
from forge_trainer.config import Hyperparameters
from forge_trainer.train.batches import IGNORE_INDEX, Batch
from forge_trainer.train.parallel import autocast, gradient_sync, unwrap
from forge_trainer.train.runtime import Runtime, all_reduce_sum
from forge_trainer.train.schedule import lr_at

LossFn = Callable[[nn.Module, Batch], Tensor]


class NonFiniteLossError(WorkloadError):
    """The loss or gradient became NaN/inf; training stops before an optimizer step or checkpoint."""


def token_loss_sum(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """(sum of next-token cross-entropies, number of target tokens) of a micro-batch."""
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    labels = batch["labels"]
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    return loss, (labels != IGNORE_INDEX).sum()


def causal_lm_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean next-token cross-entropy, plus the weighted MoE load-balancing loss for MoE models."""
    total, count = token_loss_sum(model, batch)
    loss = total / count.clamp(min=1)
    core = unwrap(model)
    if core.aux_loss is not None:
        loss = loss + core.args.router_aux_loss_coef * core.aux_loss
    return loss


def build_optimizer(params: Iterable[tuple[str, nn.Parameter]], hp: Hyperparameters,
                    fused: bool = False) -> torch.optim.AdamW:
    """AdamW; matrices get weight decay, norms and other vectors do not."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in params:
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=hp.learning_rate, betas=(hp.beta1, hp.beta2), fused=fused or None)


@dataclass(frozen=True)
class StepStats:
    """What one optimizer step measured."""

    loss: float
    """Mean loss over the global batch."""
    grad_norm: float
    """Global gradient norm before clipping."""
    lr: float
    """Learning rate used."""


class Trainer:
    """Owns the optimizer of a wrapped model and performs optimizer steps."""

    def __init__(self, model: nn.Module, hp: Hyperparameters, runtime: Runtime, loss_fn: LossFn = causal_lm_loss,
                 params: Sequence[tuple[str, nn.Parameter]] | None = None, bf16: bool = True) -> None:
        self.model, self.hp, self.runtime, self.loss_fn, self.bf16 = model, hp, runtime, loss_fn, bf16
        named = list(params) if params is not None else list(model.named_parameters())
        self.params = [p for _, p in named if p.requires_grad]
        self.optimizer = build_optimizer(named, hp, fused=True)

    def train_step(self, step: int, micro_batches: Sequence[Batch]) -> StepStats:
        """One optimizer step over this worker's micro-batches (the global batch across workers)."""
        if not self.model.training:
            self.model.train()
        lr = lr_at(step, self.hp)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.runtime.device)
        n = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            with gradient_sync(self.model, i == n - 1), autocast(self.runtime, self.bf16):
                loss = self.loss_fn(self.model, _to(batch, self.runtime.device))
                (loss / n).backward()  # type: ignore[no-untyped-call]
            total += loss.detach().float()
        mean_loss = (all_reduce_sum(self.runtime, total) / (n * self.runtime.world_size)).item()
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"loss is {mean_loss} at step {step + 1}; stopped before the optimizer "
                                     "step, no checkpoint written from this state")
        grad_norm = _grad_norm(self.params, self.hp.grad_clip)
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"gradient norm is {grad_norm} at step {step + 1}; stopped before the "
                                     "optimizer step, no checkpoint written from this state")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepStats(loss=mean_loss, grad_norm=grad_norm, lr=lr)

    @torch.no_grad()
    def evaluate(self, micro_batches: Sequence[Batch]) -> float | None:
        """Token-weighted mean language-modelling loss over every worker's micro-batches (None if empty)."""
        self.model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=self.runtime.device)
        for batch in micro_batches:
            with autocast(self.runtime, self.bf16):
                loss, count = token_loss_sum(self.model, _to(batch, self.runtime.device))
            sums += torch.stack([loss.double(), count.double()])
        total, count = all_reduce_sum(self.runtime, sums).tolist()
        self.model.train()
        return total / count if count else None


def _to(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _grad_norm(params: list[nn.Parameter], clip: float) -> float:
    """Global gradient norm (clipping to `clip` when > 0); DTensor-aware for FSDP2."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    max_norm = clip if clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=True)
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def all_params_finite(model: nn.Module, runtime: Runtime) -> bool:
    """Whether every parameter of every worker is finite (checked before writing a checkpoint)."""
    bad = torch.zeros((), device=runtime.device)
    for p in model.parameters():
        local = getattr(p, "to_local", None)
        tensor = local() if local is not None else p
        if not torch.isfinite(tensor).all():
            bad += 1
    return bool(all_reduce_sum(runtime, bad).item() == 0)
