"""Post-training end to end on CPU: a tiny model is fine-tuned (sft) on noisy answers to a toy task,
then GRPO with an exact_match verifier raises its mean reward over a short run compared with step 0;
the runs leave progress.json, eval.json and a chat model transformers can load."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from forge_trainer.config import DatasetPurpose, Hyperparameters, SftMethod, Stage, TrainConfig
from forge_trainer.train.rl import RlResult, run_rl
from forge_trainer.train.sft import run_sft
from tests.support.posttrain import (
    TINY,
    make_tokenizer,
    sum_conversations,
    sum_tasks,
    write_base_model,
    write_records_dataset,
)

pytestmark = pytest.mark.e2e

HIGH = 3  # sums of two numbers below 3: nine questions a tiny model can tell apart


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tiny model fine-tuned on answers that are right only half of the time."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("posttrain")
    tok = make_tokenizer()
    write_base_model(tmp / "base", tok)
    sft_data = write_records_dataset(tmp / "sft", DatasetPurpose.SFT,
                                     sum_conversations(200, seed=3, high=HIGH, correct=0.5, system=None), [], tok)
    config = TrainConfig(
        stage=Stage.SFT, model=TINY, dataset=sft_data, output=str(tmp / "sft_out"), init_model=str(tmp / "base"),
        precision="fp32", metrics_port=0, checkpointing={"interval": 1000, "keep": 1},
        hyperparameters=Hyperparameters(learning_rate=3e-3, min_learning_rate=3e-4, warmup_steps=2, max_steps=300,
                                        global_batch_size=8, micro_batch_size=8, sequence_length=96,
                                        eval_interval=0, eval_batches=2, seed=7))
    run_sft(config)
    yield tmp / "sft_out" / "model"
    torch.set_num_threads(before)


def rl_run(sft_model: Path, out: Path, method: SftMethod, steps: int, lr: float) -> RlResult:
    tok = make_tokenizer()
    data = write_records_dataset(out / "tasks", DatasetPurpose.RL, sum_tasks(64, seed=5, high=HIGH),
                                 sum_tasks(32, seed=6, high=HIGH), tok)
    config = TrainConfig(
        stage=Stage.RL, model=TINY, dataset=data, output=str(out / "rl_out"), init_model=str(sft_model),
        method=method, precision="fp32", metrics_port=0, checkpointing={"interval": 1000, "keep": 1},
        rl={"reward": {"verifier": "exact_match"}, "groupSize": 8, "temperature": 1.0, "maxNewTokens": 4,
            "klCoefficient": 0.02},
        lora={"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "v_proj", "o_proj", "down_proj",
                                                                    "lm_head"]},
        hyperparameters=Hyperparameters(learning_rate=lr, min_learning_rate=lr / 10, warmup_steps=1, max_steps=steps,
                                        global_batch_size=128, micro_batch_size=64, sequence_length=96,
                                        eval_interval=0, eval_batches=2, seed=11))
    return run_rl(config)


def test_grpo_raises_mean_reward_over_step_zero(sft_model: Path, tmp_path: Path) -> None:
    # lr and margin chosen over seeds 11-14: gains of 0.25-0.33 in mean reward, KL below 0.3
    result = rl_run(sft_model, tmp_path, SftMethod.FULL, steps=30, lr=1e-3)
    rewards = [result.rewards[s] for s in sorted(result.rewards)]
    start, end = sum(rewards[:3]) / 3, sum(rewards[-5:]) / 5
    assert 0.2 < rewards[0] < 0.8, rewards  # the sft'd model is right some of the time: there is room
    assert end > start + 0.15, rewards
    assert result.success[30] > result.success[1]

    progress = json.loads((tmp_path / "rl_out" / "progress.json").read_text())
    assert progress["done"] and progress["step"] == 30
    assert progress["meanReward"] == pytest.approx(result.rewards[30])
    assert 0 <= progress["successRate"] <= 1 and progress["kl"] > 0
    steps = [json.loads(line) for line in (tmp_path / "rl_out" / "logs" / "steps-00000000.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 31))
    assert all({"kl", "mean_reward", "success_rate", "completion_length", "clip_fraction"} <= set(s) for s in steps)
    assert all(1 <= s["completion_length"] <= 4 and 0 <= s["clip_fraction"] <= 1 for s in steps), steps
    assert progress["completionLength"] == pytest.approx(steps[-1]["completion_length"])

    eval_json = json.loads((tmp_path / "rl_out" / "eval.json").read_text())
    metrics = eval_json["metrics"]
    assert eval_json["final"] and metrics["tasks"] == 32 and metrics["verifier_errors"] == 0
    assert metrics["pass_rate/exact_match"] == metrics["pass_rate"] >= eval_json["history"][0]["metrics"]["pass_rate"]
    assert eval_json["history"][0]["step"] == 0
    initial = eval_json["initial"]["metrics"]
    assert eval_json["initial"]["step"] == 0 and initial == eval_json["history"][0]["metrics"]
    assert eval_json["change"]["pass_rate"] == pytest.approx(metrics["pass_rate"] - initial["pass_rate"])
    assert metrics["pass_rate_low"] <= metrics["pass_rate"] <= metrics["pass_rate_high"]
    assert metrics["tasks/exact_match"] == 32 and metrics["pass_rate_high"] - metrics["pass_rate_low"] > 0.1
    assert progress["initialEvalMetrics"] == initial
    assert progress["evalMetrics"]["pass_rate"] == metrics["pass_rate"]


def test_lora_grpo_trains_adapters_and_exports_a_chat_model(sft_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = rl_run(sft_model, tmp_path, SftMethod.LORA, steps=15, lr=5e-3)
    rewards = [result.rewards[s] for s in sorted(result.rewards)]
    assert sum(rewards[-5:]) / 5 > sum(rewards[:3]) / 3 + 0.1, rewards
    assert result.progress.kl is not None and result.progress.kl > 0
    out = tmp_path / "rl_out"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    tok: Any = AutoTokenizer.from_pretrained(out / "model")
    model: Any = AutoModelForCausalLM.from_pretrained(out / "model")
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 1 plus 1?"}], add_generation_prompt=True,
                                     tokenize=False)
    assert prompt == "<|im_start|>user\nWhat is 1 plus 1?<|im_end|>\n<|im_start|>assistant\n"
    ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    text = str(tok.decode(generated[0, ids.shape[1]:], skip_special_tokens=True))
    assert text.strip().isdigit(), text
