"""SFT: ChatML rendering, loss only on response tokens, packing without cross-contamination, and the
fine-tuning workload (full, LoRA, QLoRA) lowering the response loss on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forge_trainer.config import SftMethod
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.model.hf_export import load_hf
from forge_trainer.train.batches import IGNORE_INDEX
from forge_trainer.train.chat import CHATML_TEMPLATE, ChatTokenizer, messages_of
from forge_trainer.train.sample_packing import (
    block_causal_mask,
    make_example,
    pack,
    packed_logits,
    rows_batch,
)
from forge_trainer.train.sft import run_sft
from forge_trainer.train.sft_examples import sft_loss
from tests.support.posttrain import (
    TINY,
    make_tokenizer,
    one_torch_thread,
    sft_config,
    sum_conversations,
)

CONVO = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 plus 3?"},
                      {"role": "assistant", "content": "5"}, {"role": "user", "content": "And 4 plus 4?"},
                      {"role": "assistant", "content": "8."}]}


@pytest.fixture(scope="module")
def chat() -> ChatTokenizer:
    assert one_torch_thread  # imported for its autouse fixture
    return ChatTokenizer(make_tokenizer())


def tiny_model(chat: ChatTokenizer, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(resolve_model_args(TINY, chat.vocab_size))


def test_chatml_rendering_matches_the_stored_template(chat: ChatTokenizer) -> None:
    from jinja2 import Template

    rendered = chat.render(messages_of(CONVO))
    text = Template(CHATML_TEMPLATE).render(messages=CONVO["messages"], add_generation_prompt=False)
    assert chat.tok.decode(rendered.ids, skip_special_tokens=False) == text
    prompt = Template(CHATML_TEMPLATE).render(messages=CONVO["messages"][:2], add_generation_prompt=True)
    assert chat.tok.decode(chat.prompt_ids(CONVO["messages"][:2]), skip_special_tokens=False) == prompt


def test_only_assistant_turns_and_their_end_token_are_trained(chat: ChatTokenizer) -> None:
    rendered = chat.render(messages_of(CONVO))
    trained = [i for i, t in zip(rendered.ids, rendered.trained, strict=True) if t]
    assert trained == [*chat.encode("5"), chat.im_end, *chat.encode("8."), chat.im_end]


def test_prompt_response_pairs_are_conversations() -> None:
    assert messages_of({"prompt": "hi", "response": "hello"}) == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(ValueError, match="assistant"):
        messages_of({"messages": [{"role": "user", "content": "hi"}]})


def test_prompt_tokens_carry_no_loss(chat: ChatTokenizer) -> None:
    """The gradient of the loss reaches the logits of response positions only."""
    rendered = chat.render(messages_of(CONVO))
    ex = make_example(rendered.ids, rendered.trained, 96)
    assert ex is not None
    batch = rows_batch([ex], [[0]], 96, 0)
    model = tiny_model(chat)
    captured: list[torch.Tensor] = []

    def keep(_m: object, _i: object, out: torch.Tensor) -> None:
        out.retain_grad()
        captured.append(out)

    model.lm_head.register_forward_hook(keep)
    torch.autograd.backward(sft_loss(model, batch))
    grad = captured[0].grad
    assert grad is not None
    per_position = grad[0].abs().sum(-1)
    response = batch["labels"][0] != IGNORE_INDEX
    assert int(response.sum()) == len(chat.encode("5")) + len(chat.encode("8.")) + 2
    assert torch.all(per_position[~response] == 0)
    assert torch.all(per_position[response] > 0)


def test_packing_fills_rows_and_keeps_every_example(chat: ChatTokenizer) -> None:
    convos = sum_conversations(40, seed=1)
    rendered = [chat.render(messages_of(c)) for c in convos]
    examples = [e for r in rendered if (e := make_example(r.ids, r.trained, 256)) is not None]
    rows = pack(examples, 256)
    assert sorted(i for row in rows for i in row) == list(range(len(examples)))
    assert all(sum(len(examples[i].inputs) for i in row) <= 256 for row in rows)
    assert len(rows) <= len(examples) / 4  # several conversations share a row


def test_packed_samples_do_not_see_each_other(chat: ChatTokenizer) -> None:
    """A sample's logits in a packed row equal its logits alone."""
    model = tiny_model(chat).eval()
    convos = [messages_of(c) for c in sum_conversations(2, seed=2)]
    examples = [make_example(r.ids, r.trained, 96) for r in map(chat.render, convos)]
    exs = [e for e in examples if e is not None]
    assert len(exs) == 2 and sum(len(e.inputs) for e in exs) < 96  # two samples, then padding
    batch = rows_batch(exs, [[0, 1]], 96, 0)
    with torch.no_grad():
        packed = packed_logits(model, batch["input_ids"], batch["position_ids"], batch["seq_ids"])
        at = 0
        for ex in exs:
            alone = model(torch.tensor([ex.inputs]))[0]
            torch.testing.assert_close(packed[0, at:at + len(ex.inputs)], alone, rtol=1e-4, atol=1e-5)
            at += len(ex.inputs)


def test_block_mask_is_causal_within_samples_only() -> None:
    mask = block_causal_mask(torch.tensor([[0, 0, 1, 1, -1]]))[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]],
                            dtype=torch.bool)
    assert torch.equal(mask, expected)


@pytest.mark.slow
def test_full_sft_lowers_response_loss_and_exports_a_chat_model(tmp_path: Path) -> None:
    config = sft_config(tmp_path, SftMethod.FULL, steps=30, lr=3e-3)
    result = run_sft(config)
    first, last = result.losses[1], result.losses[30]
    assert last < 0.5 * first, result.losses
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["done"] and progress["step"] == 30 and progress["finalModelDigest"].startswith("sha256:")
    eval_json = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert eval_json["final"] and eval_json["metrics"]["loss"] < first
    assert eval_json["metrics"]["perplexity"] == pytest.approx(2.718281828 ** eval_json["metrics"]["loss"])
    assert progress["evalMetrics"]["loss"] == eval_json["metrics"]["loss"]
    tok_config = json.loads((tmp_path / "out" / "model" / "tokenizer_config.json").read_text())
    assert tok_config["chat_template"] == CHATML_TEMPLATE
    model, _ = load_hf(tmp_path / "out" / "model")
    assert model.args.vocab_size == load_hf(tmp_path / "base")[1].vocab_size


@pytest.mark.slow
@pytest.mark.parametrize("method", [SftMethod.LORA, SftMethod.QLORA])
def test_lora_and_qlora_sft_lower_response_loss(tmp_path: Path, method: SftMethod) -> None:
    config = sft_config(tmp_path, method, steps=30, lr=1e-2)
    result = run_sft(config)
    assert result.losses[30] < 0.5 * result.losses[1], result.losses
    adapter = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["peft_type"] == "LORA"
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()
    base, _ = load_hf(tmp_path / "base")
    merged, _ = load_hf(tmp_path / "out" / "model")
    base_q = base.state_dict()["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.allclose(merged.state_dict()["model.layers.0.self_attn.q_proj.weight"], base_q)
    # untargeted weights are the base's (up to NF4 rounding for qlora's targets only)
    torch.testing.assert_close(merged.state_dict()["model.norm.weight"], base.state_dict()["model.norm.weight"])


@pytest.mark.slow
@pytest.mark.parametrize("method", [SftMethod.FULL, SftMethod.QLORA])
def test_a_resumed_run_continues_exactly_where_it_stopped(tmp_path: Path, method: SftMethod) -> None:
    config = sft_config(tmp_path, method, steps=8, lr=1e-2)
    config = config.model_copy(update={"checkpointing": config.checkpointing.model_copy(update={"interval": 4,
                                                                                                  "keep": 2})})
    uninterrupted = run_sft(config)
    # the worker died after step 4's checkpoint: step 8's checkpoint was never completed
    (tmp_path / "out" / "checkpoints" / "step-00000008" / "checkpoint.json").unlink()
    resumed = run_sft(config)
    assert sorted(resumed.losses) == [5, 6, 7, 8]
    for step in (5, 6, 7, 8):
        assert resumed.losses[step] == pytest.approx(uninterrupted.losses[step], rel=1e-4)
    assert resumed.progress.done and resumed.progress.step == 8


def test_one_sample_per_row_gives_the_same_loss_as_packing(chat: ChatTokenizer) -> None:
    """Worker groups lay one padded sample per row (the wrapper must see the model's forward); the loss
    is the packed one."""
    model = tiny_model(chat).eval()
    rendered = [chat.render(messages_of(c)) for c in sum_conversations(4, seed=5)]
    exs = [e for r in rendered if (e := make_example(r.ids, r.trained, 96)) is not None]
    packed = rows_batch(exs, pack(exs, 96), 96, 0)
    padded = rows_batch(exs, [[i] for i in range(len(exs))], 96, 0, one_per_row=True)
    assert "seq_ids" in packed and "attention_mask" in padded
    with torch.no_grad():
        torch.testing.assert_close(sft_loss(model, packed), sft_loss(model, padded), rtol=1e-5, atol=1e-5)
