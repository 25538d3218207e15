"""GRPO pieces: group-relative advantages, rollout layout, the KL estimate, the objective's direction,
the reference policy, and sampling with the KV cache."""

from __future__ import annotations

import torch

from forge_trainer.config import LoraConfig, SftMethod
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.train.generate import sample
from forge_trainer.train.lora import apply_lora, trainable_parameters
from forge_trainer.train.rl import (
    GrpoLoss,
    ReferencePolicy,
    group_advantages,
    kl_k3,
    masked_mean_per_row,
    rollout_batch,
    token_logprobs,
)
from tests.support.posttrain import TINY, one_torch_thread

VOCAB = 64
assert one_torch_thread  # imported for its autouse fixture


def tiny(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(resolve_model_args(TINY, VOCAB))


def test_advantages_are_relative_to_the_group() -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.5]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]) * 0.75 ** 0.5, atol=1e-3)  # Bessel's std
    assert torch.all(adv[1] == 0)  # a uniform group teaches nothing
    assert adv[2, 3] > 0 and torch.all(adv[2, :3] < 0)
    assert torch.allclose(adv.sum(dim=1), torch.zeros(3), atol=1e-5)


def test_rollout_targets_are_exactly_the_completion_tokens() -> None:
    batch = rollout_batch([[5, 6, 7], [8]], [[10, 11], [12, 13, 14]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 10, 11, 0], [0, 0, 8, 12, 13, 14]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    targets = batch["input_ids"][:, 1:][batch["target_mask"].bool()]
    assert targets.tolist() == [10, 11, 12, 13, 14]


def test_kl_estimate_is_zero_at_the_reference_and_positive_away_from_it() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.25]]))
    assert torch.all(kl_k3(logp, logp) == 0)
    assert torch.all(kl_k3(logp, logp - 0.3) > 0) and torch.all(kl_k3(logp, logp + 0.3) > 0)


def test_one_grpo_step_makes_rewarded_completions_more_likely() -> None:
    model = tiny()
    prompts = [[1, 2, 3]] * 4
    completions = [[10, 11], [20, 21], [10, 11], [20, 21]]
    batch = rollout_batch(prompts, completions, pad_id=0)
    batch["advantages"] = torch.tensor([1.0, -1.0, 1.0, -1.0])
    with torch.no_grad():
        before = masked_mean_per_row(token_logprobs(model, batch, 1.0), batch["target_mask"])
    batch["old_logp"] = token_logprobs(model, batch, 1.0).detach()
    batch["ref_logp"] = batch["old_logp"].clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = GrpoLoss(0.2, 0.04, 1.0)(model, batch)
    torch.autograd.backward(loss)
    opt.step()
    with torch.no_grad():
        after = masked_mean_per_row(token_logprobs(model, batch, 1.0), batch["target_mask"])
    assert after[0] > before[0] and after[1] < before[1]


def test_clipping_stops_the_gradient_once_the_ratio_is_out_of_range() -> None:
    model = tiny()
    batch = rollout_batch([[1, 2]], [[10, 11]], pad_id=0)
    batch["advantages"] = torch.tensor([1.0])
    batch["ref_logp"] = token_logprobs(model, batch, 1.0).detach()
    batch["old_logp"] = batch["ref_logp"] - 1.0  # the policy already moved far past 1 + clip
    loss = GrpoLoss(0.2, 0.0, 1.0)(model, batch)
    torch.autograd.backward(loss)
    assert all(p.grad is None or torch.all(p.grad == 0) for p in model.parameters())


def test_lora_reference_is_the_base_and_full_reference_is_frozen() -> None:
    ids = torch.randint(0, VOCAB, (1, 8))
    base_logits = tiny()(ids)
    policy = tiny()
    apply_lora(policy, LoraConfig(rank=2, targets=["q_proj", "v_proj"], dropout=0.0))
    with torch.no_grad():
        for p in trainable_parameters(policy):
            p.add_(0.5)
    ref = ReferencePolicy(policy, SftMethod.LORA)
    with ref.model() as m:
        torch.testing.assert_close(m(ids), base_logits)
    assert (policy(ids) - base_logits).abs().max() > 1e-3  # adapters are back on after the block

    full = tiny()
    ref_full = ReferencePolicy(full, SftMethod.FULL)
    with torch.no_grad():
        full.lm_head.weight.add_(1.0)
    with ref_full.model() as m:
        torch.testing.assert_close(m(ids), base_logits)


def test_sampling_with_the_cache_matches_greedy_decoding_without_it() -> None:
    model = tiny().eval()
    prompts = [[3, 4, 5, 6], [7, 8]]
    got = sample(model, prompts, max_new_tokens=6, temperature=0.0, stop_ids={63}, pad_id=0)
    for prompt, completion in zip(prompts, got, strict=True):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(len(completion)):
                ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        assert completion == ids[len(prompt):]


def test_sampling_stops_at_a_stop_token_and_is_seeded() -> None:
    model = tiny().eval()
    with torch.no_grad():
        model.lm_head.weight[9] += 5.0 * model.lm_head.weight[9].sign()  # make token 9 likely
    outs = sample(model, [[1, 2, 3]] * 8, max_new_tokens=20, temperature=1.0, stop_ids={9}, pad_id=0,
                  generator=torch.Generator().manual_seed(1))
    assert any(len(o) < 20 for o in outs)
    assert all(o[-1] == 9 and 9 not in o[:-1] for o in outs if len(o) < 20)
    again = sample(model, [[1, 2, 3]] * 8, max_new_tokens=20, temperature=1.0, stop_ids={9}, pad_id=0,
                   generator=torch.Generator().manual_seed(1))
    assert outs == again
