"""The learning-rate schedule: linear warm-up, then cosine decay to the minimum at the last step.

A pure function of the step, so the schedule's whole state is the step a checkpoint records."""

from __future__ import annotations

import math

from forge_trainer.config import Hyperparameters


def lr_at(step: int, hp: Hyperparameters) -> float:
    """Learning rate of optimizer step `step` (0-based)."""
    if hp.warmup_steps and step < hp.warmup_steps:
        return hp.learning_rate * (step + 1) / hp.warmup_steps
    floor = hp.min_learning_rate if hp.min_learning_rate is not None else hp.learning_rate / 10
    span = max(1, hp.max_steps - hp.warmup_steps)
    progress = min(1.0, max(0.0, (step - hp.warmup_steps) / span))
    return floor + (hp.learning_rate - floor) * 0.5 * (1 + math.cos(math.pi * progress))
