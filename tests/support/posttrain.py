"""Builders for post-training tests: a tokenizer with the chat tokens, a tiny base model exported in
Hugging Face format, and sft/rl record datasets (manifest.json + JSONL shards) laid out exactly as
`forge-trainer prepare` writes them; plus a toy arithmetic task set small models learn on CPU."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer

from forge_trainer.config import (
    DatasetCounts,
    DatasetPurpose,
    Hyperparameters,
    ModelConfig,
    SftMethod,
    Stage,
    TrainConfig,
)
from forge_trainer.data.manifest import (
    MANIFEST_NAME,
    TOKENIZER_NAME,
    Manifest,
    ShardFormat,
    ShardInfo,
    Split,
    TokenizerInfo,
)
from forge_trainer.data.tokenizer import special_token_ids, train_tokenizer
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.model.hf_export import export_hf
from forge_trainer.store import LocalStore, sha256_bytes, write_json_atomic


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run an order of magnitude faster on one thread when the CPUs are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                   max_seq_len=96)


def sum_question(a: int, b: int) -> str:
    return f"What is {a} plus {b}?"


def arithmetic_corpus() -> list[str]:
    """Text covering the toy tasks' vocabulary, to train a small tokenizer on."""
    return [f"{sum_question(a, b)} {a + b}. Answer with a number." for a in range(10) for b in range(10)] * 3


def make_tokenizer(vocab_size: int = 300) -> Tokenizer:
    """A byte-level BPE with Forge's special tokens (<|endoftext|>, <|pad|>, <|im_start|>, <|im_end|>)."""
    return train_tokenizer(iter(arithmetic_corpus()), vocab_size)


def write_records_dataset(root: Path, purpose: DatasetPurpose, train: list[dict[str, Any]],
                          validation: list[dict[str, Any]], tok: Tokenizer) -> str:
    """A prepared sft/rl dataset under `root`; returns the manifest URI (a local path)."""
    store = LocalStore(root)
    tok_bytes = tok.to_str().encode()
    store.put_bytes(TOKENIZER_NAME, tok_bytes)
    shards = []
    for split, records in ((Split.TRAIN, train), (Split.VALIDATION, validation)):
        if not records:
            continue
        data = b"".join(json.dumps(r, sort_keys=True).encode() + b"\n" for r in records)
        path = f"records/{split.value}-00000.jsonl"
        store.put_bytes(path, data)
        shards.append(ShardInfo(path=path, split=split, format=ShardFormat.JSONL, bytes=len(data),
                                records=len(records), sha256=sha256_bytes(data)))
    eos, pad = special_token_ids(tok)
    manifest = Manifest(purpose=purpose, tokenizer=TokenizerInfo(
        path=TOKENIZER_NAME, sha256=sha256_bytes(tok_bytes), vocab_size=tok.get_vocab_size(), eos_token_id=eos,
        pad_token_id=pad), shards=shards, counts=DatasetCounts(documents_read=len(train) + len(validation),
                                                                 documents_kept=len(train) + len(validation)),
        created_at=datetime.now(UTC).isoformat())
    write_json_atomic(store, MANIFEST_NAME, manifest.to_wire())
    return str(root / MANIFEST_NAME)


def write_base_model(out: Path, tok: Tokenizer, seed: int = 0, config: ModelConfig = TINY) -> Transformer:
    """A freshly initialised tiny model exported (with the tokenizer) as a Hugging Face directory."""
    torch.manual_seed(seed)
    model = Transformer(resolve_model_args(config, tok.get_vocab_size()))
    tok_path = out.parent / f"{out.name}-tokenizer.json"
    tok_path.parent.mkdir(parents=True, exist_ok=True)
    tok_path.write_text(tok.to_str())
    eos, pad = special_token_ids(tok)
    export_hf(model, model.args, tok_path, out, eos_token_id=eos, pad_token_id=pad)
    return model


def sum_tasks(n: int, seed: int, high: int = 5) -> list[dict[str, Any]]:
    """rl tasks: add two numbers below `high`; exact_match on the sum."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(high), rng.randrange(high)
        out.append({"prompt": sum_question(a, b), "answer": str(a + b)})
    return out


def sum_conversations(n: int, seed: int, high: int = 5, correct: float = 1.0,
                      system: str | None = "Answer with a number.") -> list[dict[str, Any]]:
    """sft conversations answering sum questions; a fraction `1 - correct` of answers is a wrong number."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randrange(high), rng.randrange(high)
        answer = a + b if rng.random() < correct else rng.choice([x for x in range(2 * high - 1) if x != a + b])
        turns = [{"role": "user", "content": sum_question(a, b)}, {"role": "assistant", "content": str(answer)}]
        out.append({"messages": ([{"role": "system", "content": system}] if system else []) + turns})
    return out


# A custom verifier that raises on about half of the completions.
FLAKY_VERIFIER = '''
def verify(prompt, completion, task):
    if len(completion) % 2:
        raise RuntimeError("this verifier has a bug")
    return 1.0 if completion.strip() == task["answer"] else 0.1
'''


def rl_config(tmp_path: Path, steps: int) -> TrainConfig:
    """An rl run of `steps` steps on sum tasks with the custom verifier, its base model written under `tmp_path`."""
    tok = make_tokenizer()
    write_base_model(tmp_path / "base", tok)
    data = write_records_dataset(tmp_path / "tasks", DatasetPurpose.RL, sum_tasks(16, seed=1), sum_tasks(4, seed=2),
                                 tok)
    return TrainConfig(
        stage=Stage.RL, model=TINY, dataset=data, output=str(tmp_path / "out"), init_model=str(tmp_path / "base"),
        precision="fp32", metrics_port=0, checkpointing={"interval": 2, "keep": 3},
        rl={"reward": {"verifier": "custom", "customSource": {"name": "verifier"}, "timeoutSeconds": 5},
            "groupSize": 4, "maxNewTokens": 3},
        hyperparameters=Hyperparameters(learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=1, max_steps=steps,
                                        global_batch_size=16, micro_batch_size=8, sequence_length=96,
                                        eval_interval=0, eval_batches=1, seed=5))


def sft_config(tmp_path: Path, method: SftMethod, steps: int, lr: float) -> TrainConfig:
    """An SFT run on sum conversations, its base model and dataset written under `tmp_path`."""
    tok = make_tokenizer()
    write_base_model(tmp_path / "base", tok)
    dataset = write_records_dataset(tmp_path / "data", DatasetPurpose.SFT, sum_conversations(96, seed=3),
                                    sum_conversations(16, seed=4), tok)
    return TrainConfig(
        stage=Stage.SFT, model=TINY, dataset=dataset, output=str(tmp_path / "out"), init_model=str(tmp_path / "base"),
        method=method, precision="fp32", metrics_port=0,
        lora={"rank": 8, "alpha": 16, "dropout": 0.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                    "gate_proj", "up_proj", "down_proj", "lm_head"]},
        hyperparameters=Hyperparameters(learning_rate=lr, min_learning_rate=lr / 10, warmup_steps=2, max_steps=steps,
                                        global_batch_size=4, micro_batch_size=4, sequence_length=96,
                                        eval_interval=0, eval_batches=2, seed=7),
        checkpointing={"interval": steps, "keep": 1},
    )
