"""eval.json: loss/perplexity on an eval dataset, pass rate per verifier on task datasets, written every
N steps and at the end, mirrored in progress.json's evalMetrics."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from forge_trainer.config import DatasetPurpose, Hyperparameters, ModelConfig, Stage, TrainConfig
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.store import LocalStore
from forge_trainer.train.chat import ChatTokenizer
from forge_trainer.train.evaluate import EvalContext, write_eval
from forge_trainer.train.runtime import init_runtime
from forge_trainer.train.sft import run_sft
from tests.support.posttrain import (
    TINY,
    arithmetic_corpus,
    make_tokenizer,
    one_torch_thread,
    sum_conversations,
    write_base_model,
    write_records_dataset,
)
from tests.support.training import write_dataset

assert one_torch_thread  # imported for its autouse fixture

MIXED_TASKS: list[dict[str, Any]] = [
    {"prompt": "anything", "verifier": "regex", "pattern": ".*"},  # every completion passes
    {"prompt": "anything else", "verifier": "regex", "pattern": ".*"},
    {"prompt": "say it", "answer": "@@ no model says this @@"},  # exact_match: never passes
    {"prompt": "call it", "tool": "get_weather", "arguments": {"city": "Oslo"}},  # tool_call: never passes
]


def test_pass_rate_per_verifier_on_a_task_dataset(tmp_path: Path) -> None:
    tok = make_tokenizer()
    tasks = write_records_dataset(tmp_path / "tasks", DatasetPurpose.RL, MIXED_TASKS, [], tok)
    config = TrainConfig(stage=Stage.SFT, model=ModelConfig(size="tiny"), dataset=tasks, eval_dataset=tasks,
                         output=str(tmp_path / "out"), rl={"maxNewTokens": 6})
    chat = ChatTokenizer(tok)
    torch.manual_seed(0)
    model = Transformer(resolve_model_args(TINY, chat.vocab_size))
    ctx = EvalContext(config, init_runtime(force_cpu=True), LocalStore(tmp_path / "out"), "", chat, 0, 1)
    metrics = write_eval(ctx, model, step=10, final=True)
    assert metrics["pass_rate/regex"] == 1.0
    assert metrics["pass_rate/exact_match"] == 0.0 and metrics["pass_rate/tool_call"] == 0.0
    assert metrics["pass_rate"] == 0.5 and metrics["tasks"] == 4 and metrics["verifier_errors"] == 0
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written["metrics"] == metrics and written["step"] == 10 and written["final"]


def test_loss_and_perplexity_on_a_pretrain_eval_dataset(tmp_path: Path) -> None:
    tok = make_tokenizer()
    texts = arithmetic_corpus()
    corpus = write_dataset(LocalStore(tmp_path / "corpus"), "", texts, tokenizer=tok, validation_every=4)
    config = TrainConfig(stage=Stage.SFT, model=TINY, dataset=corpus, eval_dataset=corpus, output=str(tmp_path / "out"),
                         hyperparameters=Hyperparameters(sequence_length=32, micro_batch_size=2, eval_batches=2))
    chat = ChatTokenizer(tok)
    torch.manual_seed(0)
    model = Transformer(resolve_model_args(TINY, chat.vocab_size))
    ctx = EvalContext(config, init_runtime(force_cpu=True), LocalStore(tmp_path / "out"), "", chat, 0, 1)
    metrics = write_eval(ctx, model, step=0, final=False)
    # an untrained model is about as good as a uniform guess over the vocabulary
    assert abs(metrics["loss"] - math.log(chat.vocab_size)) < 0.5
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    assert "pass_rate" not in metrics


@pytest.mark.slow
def test_sft_writes_eval_json_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    tok = make_tokenizer()
    write_base_model(tmp_path / "base", tok)
    train = write_records_dataset(tmp_path / "sft", DatasetPurpose.SFT, sum_conversations(40, seed=1), [], tok)
    held_out = write_records_dataset(tmp_path / "heldout", DatasetPurpose.SFT, [], sum_conversations(8, seed=2), tok)
    config = TrainConfig(
        stage=Stage.SFT, model=TINY, dataset=train, eval_dataset=held_out, output=str(tmp_path / "out"),
        init_model=str(tmp_path / "base"), precision="fp32", metrics_port=0, checkpointing={"interval": 100},
        hyperparameters=Hyperparameters(learning_rate=3e-3, min_learning_rate=3e-4, warmup_steps=1, max_steps=10,
                                        global_batch_size=4, micro_batch_size=4, sequence_length=96,
                                        eval_interval=5, eval_batches=2, seed=3))
    run_sft(config)
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert [(h["step"], h["final"]) for h in written["history"]] == [(5, False), (10, True)]
    assert written["dataset"] == held_out
    first, last = written["history"][0]["metrics"], written["metrics"]
    assert last["loss"] < first["loss"]
    assert last["perplexity"] == pytest.approx(math.exp(last["loss"]))
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["evalMetrics"] == last and progress["evalLoss"] == last["loss"]
