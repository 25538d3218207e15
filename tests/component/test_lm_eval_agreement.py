"""lm-evaluation-harness, pointed at our OpenAI-compatible server with a task YAML built from an rl
dataset, agrees with our eval.json: the same pass rate over the same tasks, and the same outcome on
every single task (greedy decoding, the exact_match rule: the stripped completion equals the answer).

A user who trusts eval.json's gate and a user who runs lm-eval against the ForgeDeployment
(docs/evaluation.md) must see the same numbers.

Multiple-choice (loglikelihood) tasks go through our server's scoring (`echo` + `logprobs` on
/v1/completions): lm-eval's `local-completions` against our server gives the same accuracy and
per-choice log-likelihoods as lm-eval's own `hf` model on the same exported model directory."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from forge_trainer.config import DatasetPurpose, Hyperparameters, Stage, TrainConfig
from forge_trainer.data.tokenizer import special_token_ids
from forge_trainer.model.hf_export import load_hf
from forge_trainer.serve.loading import load_model
from forge_trainer.store import LocalStore
from forge_trainer.train.chat import ChatTokenizer
from forge_trainer.train.entry import run_training
from forge_trainer.train.evaluate import EvalContext, score_tasks
from forge_trainer.train.runtime import init_runtime
from forge_trainer.train.verifiers import RewardModel
from tests.support.posttrain import (
    TINY,
    make_tokenizer,
    one_torch_thread,
    sum_conversations,
    sum_question,
    sum_tasks,
    write_base_model,
    write_records_dataset,
)
from tests.support.serve import serving

assert one_torch_thread  # imported for its autouse fixture

MAX_NEW_TOKENS = 4
MODEL_NAME = "forge-sums"
"""The served model name: lm-eval sends it with every request, and our server refuses any other."""


def task_yaml(tasks_file: Path) -> dict[str, Any]:
    """An lm-eval generate_until task over an rl dataset's records: prompt in, greedy completion up to
    <|im_end|>, exact match of the stripped completion against `answer` (our exact_match verifier)."""
    return {
        "task": "forge_sums",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(tasks_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["<|im_end|>"], "max_gen_toks": MAX_NEW_TOKENS, "do_sample": False,
                              "temperature": 0.0},
        "filter_list": [{"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]], dict[str, Any]]:
    """An SFT run whose eval dataset is an rl task set: (its output, the tasks, its eval.json)."""
    root = tmp_path_factory.mktemp("lm-eval")
    tok = make_tokenizer()
    write_base_model(root / "base", tok)
    data = write_records_dataset(root / "data", DatasetPurpose.SFT, sum_conversations(256, seed=3, system=None),
                                 [], tok)
    tasks = sum_tasks(24, seed=11)
    task_data = write_records_dataset(root / "tasks", DatasetPurpose.RL, tasks, [], tok)
    # Trained part of the way, so that some tasks pass and some fail: both kinds of outcome are compared.
    hp = Hyperparameters(learning_rate=3e-3, min_learning_rate=3e-4, warmup_steps=2, max_steps=40,
                         global_batch_size=8, micro_batch_size=8, sequence_length=96, eval_interval=0,
                         eval_batches=1, seed=7)
    run_training(TrainConfig(stage=Stage.SFT, model=TINY, dataset=data, eval_dataset=task_data,
                             output=str(root / "out"), init_model=str(root / "base"), precision="fp32",
                             metrics_port=0, rl={"maxNewTokens": MAX_NEW_TOKENS}, hyperparameters=hp,
                             checkpointing={"interval": hp.max_steps, "keep": 1}))
    return root / "out", tasks, json.loads((root / "out" / "eval.json").read_text())


def our_outcomes(out: Path, tasks: list[dict[str, Any]]) -> list[bool]:
    """Pass or fail of each task, by the code that writes eval.json, one task at a time."""
    model, _ = load_hf(str(out / "model"))
    chat = ChatTokenizer(make_tokenizer())
    eos, pad = special_token_ids(chat.tok)
    config = TrainConfig(stage=Stage.SFT, model=TINY, dataset=str(out), output=str(out),
                         rl={"maxNewTokens": MAX_NEW_TOKENS})
    ctx = EvalContext(config, init_runtime(force_cpu=True), LocalStore(out), "", chat, eos,
                      pad if pad is not None else eos)
    rewards = RewardModel.from_config(config.rl.reward)
    return [score_tasks(ctx, model, [task], rewards)["pass_rate"] == 1.0 for task in tasks]


@pytest.mark.slow
def test_lm_eval_against_our_server_agrees_with_eval_json(
        trained: tuple[Path, list[dict[str, Any]], dict[str, Any]], tmp_path: Path) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out, tasks, eval_json = trained
    ours = our_outcomes(out, tasks)
    metrics = eval_json["metrics"]
    assert metrics["tasks"] == len(tasks)
    assert metrics["pass_rate"] == pytest.approx(sum(ours) / len(tasks))
    assert 0 < sum(ours) < len(tasks), f"the model should pass some tasks and fail others: {ours}"

    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    task_dir = tmp_path / "lm_eval_tasks"
    task_dir.mkdir()
    (task_dir / "forge_sums.yaml").write_text(yaml.safe_dump(task_yaml(tasks_file)))
    loaded = load_model(str(out / "model"), cache_dir=tmp_path / "cache")
    with serving(loaded, MODEL_NAME) as url:
        results = simple_evaluate(
            model="local-chat-completions",
            model_args=f"base_url={url}/v1/chat/completions,model={MODEL_NAME},num_concurrent=1,max_retries=1",
            tasks=["forge_sums"], task_manager=TaskManager(include_path=str(task_dir)),
            apply_chat_template=True, log_samples=True)
    assert results is not None
    samples = sorted(results["samples"]["forge_sums"], key=lambda s: s["doc_id"])
    theirs = [s["exact_match"] == 1.0 for s in samples]
    disagreements = [(t["prompt"], t["answer"], s["filtered_resps"], mine)
                     for t, s, mine, other in zip(tasks, samples, ours, theirs, strict=True) if mine != other]
    assert not disagreements, f"lm-eval and eval.json disagree on: {disagreements}"
    assert results["results"]["forge_sums"]["exact_match,strip"] == pytest.approx(metrics["pass_rate"])


LOGLIKELIHOOD_TOLERANCE = 1e-3
"""Largest difference between a choice's log-likelihood through our server and through lm-eval's hf
model (float32 on a CPU both; they differ by the order of sums in batched forward passes)."""


def choice_items(n: int, seed: int) -> list[dict[str, Any]]:
    """Multiple-choice sums: a question and three numbers, one of them the answer (`label`)."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        a, b = rng.randrange(5), rng.randrange(5)
        wrong = rng.sample([x for x in range(10) if x != a + b], 2)
        choices = [str(x) for x in [a + b, *wrong]]
        rng.shuffle(choices)
        items.append({"question": sum_question(a, b), "choices": choices, "label": choices.index(str(a + b))})
    return items


def choice_task_yaml(items_file: Path) -> dict[str, Any]:
    """An lm-eval multiple_choice task: the choice with the highest log-likelihood after the question."""
    return {
        "task": "forge_sum_choice",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(items_file)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "{{question}}",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "{{label}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


@pytest.mark.slow
def test_multiple_choice_through_our_server_agrees_with_lm_evals_hf_model(
        trained: tuple[Path, list[dict[str, Any]], dict[str, Any]], tmp_path: Path) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    model_dir = trained[0] / "model"
    items = choice_items(20, seed=5)
    items_file = tmp_path / "items.jsonl"
    items_file.write_text("".join(json.dumps(item) + "\n" for item in items))
    task_dir = tmp_path / "lm_eval_tasks"
    task_dir.mkdir()
    (task_dir / "forge_sum_choice.yaml").write_text(yaml.safe_dump(choice_task_yaml(items_file)))

    def evaluate(model: str, model_args: str) -> dict[str, Any]:
        results = simple_evaluate(model=model, model_args=model_args, tasks=["forge_sum_choice"],
                                  task_manager=TaskManager(include_path=str(task_dir)), log_samples=True)
        assert results is not None
        return results

    reference = evaluate("hf", f"pretrained={model_dir},device=cpu,dtype=float32,batch_size=4")
    loaded = load_model(str(model_dir), cache_dir=tmp_path / "cache", device="cpu")
    with serving(loaded, MODEL_NAME) as url:
        # batch_size 4: lm-eval sends four prompts (token ids) per request
        ours = evaluate("local-completions", f"base_url={url}/v1/completions,model={MODEL_NAME},"
                        f"tokenizer={model_dir},tokenizer_backend=huggingface,num_concurrent=1,max_retries=1,"
                        "batch_size=4")

    def loglikelihoods(results: dict[str, Any]) -> list[list[float]]:
        samples = sorted(results["samples"]["forge_sum_choice"], key=lambda s: s["doc_id"])
        assert len(samples) == len(items)
        return [[resp[0][0] for resp in s["resps"]] for s in samples]

    theirs, mine = loglikelihoods(reference), loglikelihoods(ours)
    for k, (t, m) in enumerate(zip(theirs, mine, strict=True)):
        assert m == pytest.approx(t, abs=LOGLIKELIHOOD_TOLERANCE), f"item {k}: {items[k]}"
    acc = reference["results"]["forge_sum_choice"]["acc,none"]
    assert ours["results"]["forge_sum_choice"]["acc,none"] == acc
    assert all(ll < 0 for row in mine for ll in row)
