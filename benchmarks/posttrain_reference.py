"""What the post-training comparisons with TRL share: the toy arithmetic task family split into
training and held-out pairs, our tokenization of its conversations (so both trainers see the same ids
and the same response-only loss mask), and the judges that score a finished model the same way
whichever trainer produced it — held-out assistant-token loss and greedy pass rate, both computed
with `transformers` on the exported Hugging Face directory (or the reference's in-memory model).
"""

from __future__ import annotations

import logging
import random
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.posttrain import (  # noqa: E402
    TINY,
    make_tokenizer,
    sum_question,
    write_base_model,
    write_records_dataset,
)

from forge_trainer.config import Hyperparameters  # noqa: E402
from forge_trainer.train.chat import ChatTokenizer, messages_of  # noqa: E402
from forge_trainer.train.schedule import lr_at  # noqa: E402
from forge_trainer.train.step_engine import build_optimizer  # noqa: E402

__all__ = ["TINY", "make_tokenizer", "write_base_model", "write_records_dataset"]
"""The tests' builders the benchmarks use too (re-exported: this module puts the repository on sys.path)."""

SYSTEM = "Answer with a number."
HIGH = 10
"""Operands are 0 .. HIGH-1: 100 distinct sums."""


def quiet() -> None:
    """Warnings only: both trainers log every step at INFO."""
    logging.basicConfig(level=logging.WARNING)
    for name in ("transformers", "trl", "forge_trainer", "datasets", "peft"):
        logging.getLogger(name).setLevel(logging.WARNING)


def split_pairs(held_out: int = 30, seed: int = 1234) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(training pairs, held-out pairs): a fixed split of all (a, b) below HIGH; no held-out question is trained."""
    pairs = [(a, b) for a in range(HIGH) for b in range(HIGH)]
    random.Random(seed).shuffle(pairs)
    return pairs[held_out:], pairs[:held_out]


def conversations(pairs: Sequence[tuple[int, int]], n: int, seed: int, correct: float = 1.0,
                  system: str | None = SYSTEM) -> list[dict[str, Any]]:
    """`n` sft conversations drawn from `pairs`; a fraction `1 - correct` of answers is a wrong number."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choice(list(pairs))
        answer = a + b if rng.random() < correct else rng.choice([x for x in range(2 * HIGH - 1) if x != a + b])
        turns = [{"role": "user", "content": sum_question(a, b)}, {"role": "assistant", "content": str(answer)}]
        out.append({"messages": ([{"role": "system", "content": system}] if system else []) + turns})
    return out


def tasks(pairs: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """rl tasks (exact_match on the sum), one per pair."""
    return [{"prompt": sum_question(a, b), "answer": str(a + b)} for a, b in pairs]


def tokenized(chat: ChatTokenizer, records: Sequence[dict[str, Any]]) -> list[tuple[list[int], list[bool]]]:
    """(ids, trained) of each conversation as our sft stage renders it: ChatML, loss on assistant turns."""
    out = []
    for record in records:
        rendered = chat.render(messages_of(record))
        out.append((rendered.ids, rendered.trained))
    return out


@torch.no_grad()
def held_out_loss(model: nn.Module, examples: Sequence[tuple[list[int], list[bool]]]) -> float:
    """Token-weighted mean cross-entropy on the trained (assistant) tokens of `examples`, one at a
    time through a `transformers` causal LM (no padding, so nothing depends on a pad convention)."""
    model.eval()
    total, count = 0.0, 0
    for ids, trained in examples:
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].float()
        targets = torch.tensor(ids[1:])
        mask = torch.tensor(trained[1:])
        losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        total += float(losses[mask].sum())
        count += int(mask.sum())
    return total / count


@torch.no_grad()
def greedy_pass_rate(model: nn.Module, chat: ChatTokenizer, task_list: Sequence[dict[str, Any]],
                     max_new_tokens: int, eos_id: int) -> float:
    """Share of `task_list` whose greedy completion (up to <|im_end|> or EOS), stripped, equals the
    answer — our exact_match verifier's rule, scored through `transformers`' generate."""
    model.eval()
    passed = 0
    for task in task_list:
        prompt = chat.prompt_ids([{"role": "user", "content": task["prompt"]}])
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=[chat.im_end, eos_id],
                             pad_token_id=eos_id)
        completion = [t for t in out[0, len(prompt):].tolist() if t not in (chat.im_end, eos_id)]
        passed += chat.decode(completion).strip() == task["answer"]
    return passed / len(task_list)


def our_optimizer(model: nn.Module, hp: Hyperparameters) -> tuple[torch.optim.Optimizer,
                                                                torch.optim.lr_scheduler.LambdaLR]:
    """Our AdamW (decay on matrices only, the same betas) and our warm-up + cosine schedule, for the
    reference trainer — so the comparison is of the trainers, not of their defaults."""
    opt = build_optimizer(model.named_parameters(), hp)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, hp) / hp.learning_rate)


def median(values: Sequence[float]) -> float:
    """Median (of per-seed figures)."""
    return statistics.median(values)


def table(rows: Sequence[tuple[str, float, float, str]]) -> str:
    """A fixed-width table: metric, ours, reference, ours/reference (ours - reference for a rate, a
    metric named "... rate") and the target."""
    lines = [f"{'metric':<38} {'ours':>10} {'reference':>10} {'ours/ref':>9}  target"]
    for name, ours, ref, target in rows:
        if name.endswith("rate"):
            versus = f"{ours - ref:>+9.3f}"
        else:
            versus = f"{ours / ref:>8.3f}x" if ref else f"{'-':>9}"
        lines.append(f"{name:<38} {ours:>10.4f} {ref:>10.4f} {versus}  {target}")
    return "\n".join(lines)
