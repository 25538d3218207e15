"""GRPO's objective pinned on a hand-computed example: group-normalised advantages (Bessel's std, as
TRL), the probability ratio and its clip, the k3 KL estimate against the reference, and the mean over
each completion's tokens, then over completions (DeepSeekMath GRPO; TRL `loss_type="grpo"`). Every
expected number is worked out here by hand, not by calling the trainer."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from forge_trainer.train.rl import GrpoLoss, group_advantages, token_logprobs


class FixedLogits(nn.Module):
    """A policy whose next-token logits are a fixed table: (rows, positions, vocabulary)."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.logits


def test_advantages_divide_by_the_groups_sample_std() -> None:
    # rewards 1, 0, 0, 0: mean 0.25; sample std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]))
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.0, 0.0, 0.0, 0.0]]) / (0.5 + 1e-4)
    torch.testing.assert_close(adv, expected)


def test_log_probabilities_are_taken_at_the_sampling_temperature() -> None:
    model = FixedLogits(torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [0.0, 0.0]]]))
    batch = {"input_ids": torch.tensor([[1, 0, 1]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    # temperature 1: p(token 0) = 3 / 4; temperature 2: the logits halve, p = sqrt(3) / (sqrt(3) + 1)
    torch.testing.assert_close(token_logprobs(model, batch, 1.0), torch.log(torch.tensor([[0.75, 0.5]])))
    root = math.sqrt(3.0)
    torch.testing.assert_close(token_logprobs(model, batch, 2.0), torch.log(torch.tensor([[root / (root + 1), 0.5]])))


def test_loss_on_a_hand_computed_batch() -> None:
    # Two completions after a one-token prompt, vocabulary {0, 1}, every logit 0: pi = 0.5 for each token.
    # Row 0: two completion tokens, advantage +1.5; row 1: one completion token then padding, advantage -0.5.
    model = FixedLogits(torch.zeros(2, 3, 2))
    log = math.log
    batch = {
        "input_ids": torch.tensor([[1, 0, 1], [1, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "target_mask": torch.tensor([[1, 1], [1, 0]]),
        "advantages": torch.tensor([1.5, -0.5]),
        # pi_old: 1/3 and 1/2 (ratios 1.5 and 1.0); 1.0 (ratio 0.5); the padded token's values are junk
        "old_logp": torch.tensor([[log(1 / 3), log(0.5)], [0.0, -50.0]]),
        # pi_ref: 1/4 and 1/2; 1.0
        "ref_logp": torch.tensor([[log(0.25), log(0.5)], [0.0, 50.0]]),
    }
    beta, eps = 0.1, 0.2
    # k3 = r - log r - 1 with r = pi_ref / pi: r = 0.5 -> 0.5 + log 2 - 1; r = 1 -> 0; r = 2 -> 2 - log 2 - 1
    kl_half, kl_two = 0.5 + math.log(2) - 1, 2 - math.log(2) - 1
    # row 0, token 1: ratio 1.5 > 1 + eps with A > 0: min(1.5 * 1.5, 1.2 * 1.5) = 1.8 (clipped)
    # row 0, token 2: ratio 1: 1.5.  Row mean: (-1.8 + beta * kl_half - 1.5) / 2
    row0 = ((-1.8 + beta * kl_half) + (-1.5 + 0.0)) / 2
    # row 1, token 1: ratio 0.5 < 1 - eps with A < 0: min(0.5 * -0.5, 0.8 * -0.5) = -0.4 (clipped); one token
    row1 = 0.4 + beta * kl_two
    loss_fn = GrpoLoss(clip_ratio=eps, kl_coefficient=beta, temperature=1.0)
    loss = float(loss_fn(model, batch).detach())
    assert math.isclose(loss, (row0 + row1) / 2, rel_tol=1e-6), (loss, (row0 + row1) / 2)
    assert math.isclose(loss, -0.6048287, rel_tol=1e-6)
    # 2 of the 3 completion tokens took the clipped term
    assert math.isclose(loss_fn.take_clip_fraction(), 2 / 3)
    assert loss_fn.take_clip_fraction() == 0.0  # counts restart


def test_the_gradient_flows_only_through_unclipped_tokens_and_the_kl_term() -> None:
    # Same batch without the KL term: only row 0's second token (ratio 1) moves the policy, by -A / 2 per
    # unit of its log-probability (its row has two tokens, and there are two rows).
    model = FixedLogits(torch.zeros(2, 3, 2))
    batch = {
        "input_ids": torch.tensor([[1, 0, 1], [1, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "target_mask": torch.tensor([[1, 1], [1, 0]]),
        "advantages": torch.tensor([1.5, -0.5]),
        "old_logp": torch.log(torch.tensor([[1 / 3, 0.5], [1.0, 0.5]])),
        "ref_logp": torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]])),
    }
    loss = GrpoLoss(clip_ratio=0.2, kl_coefficient=0.0, temperature=1.0)(model, batch)
    loss.backward()
    grad = model.logits.grad
    assert grad is not None
    # d loss / d logit[row 0, position 1, token 1] = -(A / 4) * ratio * d log p / d logit = -(1.5 / 4) * (1 - 0.5)
    assert math.isclose(float(grad[0, 1, 1]), -(1.5 / 4) * 0.5, rel_tol=1e-6)
    assert math.isclose(float(grad[0, 1, 0]), (1.5 / 4) * 0.5, rel_tol=1e-6)
    assert float(grad[0, 0].abs().sum()) == 0.0 and float(grad[1].abs().sum()) == 0.0  # clipped or padding
