"""The optimisation step, shared by every stage: gradient accumulation over micro-batches, gradient
sync across workers, a NaN guard, global-norm clipping and AdamW with the scheduled learning rate.

    engine = StepEngine(wrapped_model, hp, runtime)        # loss_fn defaults to causal_lm_loss
    stats = engine.train_step(step, micro_batches)         # raises NonFiniteLossError on NaN/inf
    stats = engine.train_step(step, micro_batches, check=False)  # no wait: a NaN step is skipped on
    first_non_finite([stats])                              # the device, found when read
    eval_loss = engine.evaluate(eval_batches)

A loss function takes the (wrapped) model and a micro-batch and returns the mean loss to minimise;
SFT/RL pass their own (masked labels, policy-gradient objectives) and the parameters to train.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from forge_trainer.config import Hyperparameters
from forge_trainer.errors import WorkloadError
from forge_trainer.train.batches import IGNORE_INDEX, Batch
from forge_trainer.train.parallel import autocast, gradient_sync, unwrap
from forge_trainer.train.runtime import Runtime, all_reduce_sum
from forge_trainer.train.schedule import lr_at

LossFn = Callable[[nn.Module, Batch], Tensor]


class NonFiniteLossError(WorkloadError):
    """The loss or gradient became NaN/inf; training stops before an optimizer step or checkpoint."""


def cross_entropy_sum(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy over the labelled positions, number of labelled positions)."""
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (labels != IGNORE_INDEX).sum()


def mean_with_balance_loss(model: nn.Module, total: Tensor, count: Tensor) -> Tensor:
    """The mean loss from a (sum, count) pair, plus the weighted MoE load-balancing loss for MoE models."""
    loss = total / count.clamp(min=1)
    core = unwrap(model)
    if core.aux_loss is not None:
        loss = loss + core.args.router_aux_loss_coef * core.aux_loss
    return loss


def token_loss_sum(model: nn.Module, batch: Batch) -> tuple[Tensor, Tensor]:
    """(sum of next-token cross-entropies, number of target tokens) of a micro-batch."""
    return cross_entropy_sum(model(batch["input_ids"], attention_mask=batch.get("attention_mask")), batch["labels"])


def causal_lm_loss(model: nn.Module, batch: Batch) -> Tensor:
    """Mean next-token cross-entropy, plus the weighted MoE load-balancing loss for MoE models."""
    return mean_with_balance_loss(model, *token_loss_sum(model, batch))


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


class StepStats:
    """What one optimizer step measured. The values stay on the device until read: reading one
    (`loss`, `grad_norm`, `extra`) waits for the step to finish; `read_stats` reads many at once."""

    def __init__(self, lr: float, values: Tensor, checked: bool) -> None:
        self.lr = lr
        """Learning rate used."""
        self.values = values
        """[mean loss, gradient norm, *extra] (float64, on the device)."""
        self.checked = checked
        """The loss and gradient norm were verified finite before the optimizer step."""
        self._read: list[float] | None = None

    def read(self) -> list[float]:
        """The values as floats (waits for the device)."""
        if self._read is None:
            self._read = self.values.tolist()
        return self._read

    @property
    def loss(self) -> float:
        """Mean loss over the global batch."""
        return self.read()[0]

    @property
    def grad_norm(self) -> float:
        """Global gradient norm before clipping."""
        return self.read()[1]

    @property
    def problem(self) -> str | None:
        """What was not finite ("loss is nan"), or None."""
        loss, grad_norm = self.read()[:2]
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        return None

    @property
    def extra(self) -> list[float]:
        """The step's `extra` values summed over the workers."""
        return self.read()[2:]


def read_stats(stats: Sequence[StepStats]) -> None:
    """Read the values of many steps with one wait for the device."""
    todo = [s for s in stats if s._read is None]
    if not todo:
        return
    if len(todo) == 1:
        todo[0].read()
        return
    width = max(s.values.numel() for s in todo)
    rows = torch.stack([F.pad(s.values, (0, width - s.values.numel())) for s in todo]).tolist()
    for s, row in zip(todo, rows, strict=True):
        s._read = row[:s.values.numel()]


def first_non_finite(stats: Sequence[StepStats]) -> int | None:
    """Index of the first of `stats` whose loss or gradient norm is NaN/inf (one wait for the device)."""
    read_stats(stats)
    return next((i for i, s in enumerate(stats) if s.problem is not None), None)


class StepEngine:
    """Owns the optimizer of a wrapped model and performs optimizer steps (the loops around it are the
    stages' own, see `loop.py`)."""

    def __init__(self, model: nn.Module, hp: Hyperparameters, runtime: Runtime, loss_fn: LossFn = causal_lm_loss,
                 params: Sequence[tuple[str, nn.Parameter]] | None = None, bf16: bool = True) -> None:
        self.model, self.hp, self.runtime, self.loss_fn, self.bf16 = model, hp, runtime, loss_fn, bf16
        named = list(params) if params is not None else list(model.named_parameters())
        self.params = [p for _, p in named if p.requires_grad]
        self.optimizer = build_optimizer(named, hp, fused=True)
        # the fused AdamW skips its update on the device when `found_inf` is non-zero (no host sync)
        self.can_skip_on_device = bool(self.optimizer.defaults.get("fused"))

    def train_step(self, step: int, micro_batches: Sequence[Batch], check: bool = True,
                   extra: Tensor | None = None) -> StepStats:
        """One optimizer step over this worker's micro-batches (the global batch across workers).

        check: read the loss and gradient norm now and raise NonFiniteLossError before the optimizer
        step when either is NaN/inf. Without it nothing waits for the device: a non-finite step is
        skipped on the device (the weights stay as they were) and the caller finds it in the
        returned values later (`first_non_finite`), before it writes a checkpoint.
        extra: float values (1-D, on the device) summed over the workers along with the loss, so the
        loop's own agreements cost no collective of their own."""
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
        packed = total.double().reshape(1)
        if extra is not None:
            packed = torch.cat([packed, extra.to(packed.device, torch.float64)])
        packed = all_reduce_sum(self.runtime, packed) if self.runtime.distributed else packed
        mean_loss = packed[:1] / (n * self.runtime.world_size)
        if check or not self.can_skip_on_device:
            value = mean_loss.item()
            if not math.isfinite(value):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"loss is {value} at step {step + 1}; stopped before the optimizer "
                                         "step, no checkpoint written from this state")
            norm = _grad_norm(self.params, self.hp.grad_clip, self.runtime.device)
            grad_norm = float(norm)
            if not math.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(f"gradient norm is {grad_norm} at step {step + 1}; stopped before the "
                                         "optimizer step, no checkpoint written from this state")
            self.optimizer.step()
            checked = True
        else:
            norm = _grad_norm(self.params, self.hp.grad_clip, self.runtime.device)
            bad = torch.logical_not(torch.isfinite(mean_loss) & torch.isfinite(norm.reshape(1)))
            self.optimizer.found_inf = bad.float().reshape(())  # type: ignore[attr-defined]
            try:
                self.optimizer.step()
            finally:
                del self.optimizer.found_inf  # type: ignore[attr-defined]
            checked = False
        self.optimizer.zero_grad(set_to_none=True)
        values = torch.cat([mean_loss, norm.detach().double().reshape(1).to(mean_loss.device), packed[1:]])
        return StepStats(lr, values, checked)

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


def _grad_norm(params: list[nn.Parameter], clip: float, device: torch.device) -> Tensor:
    """Global gradient norm, a scalar on the device (clipping to `clip` when > 0); DTensor-aware for FSDP2."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    max_norm = clip if clip > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(grads, max_norm, foreach=True)
    full = getattr(norm, "full_tensor", None)
    result: Tensor = full() if full is not None else norm
    return result


def all_params_finite(model: nn.Module, runtime: Runtime) -> bool:
    """Whether every parameter of every worker is finite (checked before writing a checkpoint)."""
    bad = torch.zeros((), device=runtime.device)
    for p in model.parameters():
        local = getattr(p, "to_local", None)
        tensor = local() if local is not None else p
        if not torch.isfinite(tensor).all():
            bad += 1
    return bool(all_reduce_sum(runtime, bad).item() == 0)
