"""Builders of small real datasets for training tests: a corpus of English text (the docstrings of
Python's standard library), a byte-level BPE tokenizer trained on it, and a prepared dataset
(manifest.json + token shards + tokenizer.json) written to a store exactly as `forge-trainer prepare`
lays it out."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from forge_trainer.config import DatasetCounts, DatasetPurpose, TrainConfig, TrainProgress
from forge_trainer.data.manifest import (
    MANIFEST_NAME,
    TOKENIZER_NAME,
    Manifest,
    ShardFormat,
    ShardInfo,
    Split,
    TokenizerInfo,
)
from forge_trainer.store import LocalStore, ObjectStore, join_key, sha256_bytes, write_json_atomic

EOS = "<|endoftext|>"
PAD = "<|pad|>"
CORPUS_MODULES = ("json", "pathlib", "argparse", "collections", "functools", "itertools", "textwrap",
                  "string", "datetime", "random", "statistics", "fractions", "decimal", "csv",
                  "logging", "shutil", "tempfile", "contextlib", "dataclasses", "enum", "heapq", "bisect")


def real_corpus(max_docs: int = 400) -> list[str]:
    """English prose: the docstrings of a fixed list of standard-library modules and their members."""
    docs: list[str] = []
    for name in CORPUS_MODULES:
        module = importlib.import_module(name)
        members = [module, *(obj for _, obj in sorted(vars(module).items()) if not _.startswith("_"))]
        for obj in members:
            doc = inspect.getdoc(obj) if callable(obj) or obj is module else None
            if doc and len(doc) > 80 and doc not in docs:
                docs.append(doc)
    return docs[:max_docs]


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> Tokenizer:
    """A byte-level BPE tokenizer with `<|endoftext|>` (id 0) and `<|pad|>` (id 1)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def _pack(tok: Tokenizer, texts: list[str], eos_id: int) -> np.ndarray:
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids)
        ids.append(eos_id)
    return np.asarray(ids, dtype=np.uint16)


def write_dataset(store: ObjectStore, prefix: str, texts: list[str], *, vocab_size: int = 512,
                  tokens_per_shard: int = 8192, validation_every: int = 10,
                  tokenizer: Tokenizer | None = None) -> str:
    """Write a prepared pretraining dataset under `prefix`; return the manifest URI.

    Every `validation_every`-th document goes to the validation split; shards hold at most
    `tokens_per_shard` tokens (little-endian uint16)."""
    tok = tokenizer or train_tokenizer(texts, vocab_size)
    eos_id = int(tok.token_to_id(EOS))
    tok_bytes = tok.to_str().encode()
    store.put_bytes(join_key(prefix, TOKENIZER_NAME), tok_bytes)
    splits = {
        Split.TRAIN: [t for i, t in enumerate(texts) if i % validation_every],
        Split.VALIDATION: [t for i, t in enumerate(texts) if i % validation_every == 0],
    }
    shards: list[ShardInfo] = []
    counts = DatasetCounts(documents_read=len(texts), documents_kept=len(texts))
    for split, docs in splits.items():
        tokens = _pack(tok, docs, eos_id)
        for n, start in enumerate(range(0, len(tokens), tokens_per_shard)):
            data = tokens[start:start + tokens_per_shard].astype("<u2").tobytes()
            path = f"shards/{split.value}-{n:05d}.bin"
            store.put_bytes(join_key(prefix, path), data)
            shards.append(ShardInfo(path=path, split=split, format=ShardFormat.TOKENS, bytes=len(data),
                                    tokens=len(data) // 2, records=0, sha256=sha256_bytes(data)))
        if split is Split.TRAIN:
            counts.train_tokens = len(tokens)
        else:
            counts.validation_tokens = len(tokens)
    counts.tokens = counts.train_tokens + counts.validation_tokens
    manifest = Manifest(
        purpose=DatasetPurpose.PRETRAIN, dtype="uint16",
        tokenizer=TokenizerInfo(path=TOKENIZER_NAME, sha256=sha256_bytes(tok_bytes),
                                vocab_size=tok.get_vocab_size(), eos_token_id=eos_id,
                                pad_token_id=tok.token_to_id(PAD)),
        shards=shards, counts=counts, created_at=datetime.now(UTC).isoformat(),
    )
    write_json_atomic(store, join_key(prefix, MANIFEST_NAME), manifest.to_wire())
    uri: str = store.uri(join_key(prefix, MANIFEST_NAME))
    return uri


def local_dataset(root: Path, texts: list[str] | None = None, **kwargs: object) -> str:
    """`write_dataset` into a local directory store at `root`; return the manifest URI."""
    return write_dataset(LocalStore(root), "", texts if texts is not None else real_corpus(),
                         **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Launching training under torchrun, as the operator's pods do
# ---------------------------------------------------------------------------------------------

ELASTIC_ENV = {
    # without it, re-rendezvous reads stale worker-store addresses and fails about half the time
    "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def torchrun_command(config_path: Path, port: int, *, nnodes: str = "1", nproc: int = 1,
                     max_restarts: int = 0, run_id: str = "forge-test", is_host: bool | None = None) -> list[str]:
    """`torchrun ... -m forge_trainer.cli train --config <path>` with a c10d rendezvous on loopback.

    `is_host` says whether this agent hosts the rendezvous store (set it when several agents share
    one machine, else whichever binds the port first hosts it)."""
    host = "" if is_host is None else f",is_host={str(is_host).lower()}"
    return [
        str(Path(sys.executable).parent / "torchrun"),
        f"--nnodes={nnodes}", f"--nproc-per-node={nproc}", "--rdzv-backend=c10d",
        f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id={run_id}", f"--max-restarts={max_restarts}",
        f"--rdzv-conf=last_call_timeout=1,keep_alive_interval=1,join_timeout=60{host}",
        "--monitor-interval=0.5",
        "-m", "forge_trainer.cli", "train", "--config", str(config_path),
    ]


def start_torchrun(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start torchrun in its own session, output to `log_path`."""
    env = {**os.environ, **ELASTIC_ENV}
    log = log_path.open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Kill a process and every descendant (torchrun workers run in sessions of their own)."""
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)


def worker_pids(agent_pid: int) -> list[int]:
    """Pids of the training workers under a torchrun agent."""
    try:
        children = psutil.Process(agent_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p.pid for p in children if "forge_trainer.cli" in " ".join(p.cmdline())]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll until `predicate()` holds; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def start_long_pretrain(tmp_path: Path, env: dict[str, str] | None = None,
                        ) -> tuple[subprocess.Popen[str], Path, Path]:
    """`forge-trainer train` (the console script, as in a pod) on a tiny model with maxSteps 100000 and
    no checkpoint before step 1000, for tests that act on a run while it trains. Returns the process
    (text pipes), its config file and its output directory."""
    import yaml

    from forge_trainer.config import TrainConfig

    out = tmp_path / "run"
    config = TrainConfig.model_validate({
        "stage": "pretrain", "model": {"size": "tiny"}, "dataset": local_dataset(tmp_path / "ds"),
        "output": str(out), "precision": "fp32", "metricsPort": 0,
        "hyperparameters": {"maxSteps": 100_000, "globalBatchSize": 8, "microBatchSize": 4,
                            "sequenceLength": 64, "evalInterval": 0},
        "checkpointing": {"interval": 1000, "keep": 2},
    })
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config.to_wire()))
    # the console script: under `python -m forge_trainer.cli` the CLI module is imported twice and its
    # WorkloadError handler misses errors raised as forge_trainer.cli.WorkloadError (reported)
    forge_trainer = str(Path(sys.executable).parent / "forge-trainer")
    proc = subprocess.Popen([forge_trainer, "train", "--config", str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **ELASTIC_ENV, **(env or {})})
    return proc, path, out


def read_train_progress(out: Path) -> TrainProgress:
    """The run's progress.json, or an empty progress while it is not written yet."""
    try:
        return TrainProgress.model_validate_json((out / "progress.json").read_text())
    except (OSError, ValueError):
        return TrainProgress()


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Run the test's in-process training with one torch thread, as each torchrun worker does
    (OMP_NUM_THREADS=1): on a busy machine, more threads than free cores slow training many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pretrain_config(dataset: str, output: Path | str, **overrides: Any) -> TrainConfig:
    """A 20-step tiny pretrain on `dataset`; `overrides` replace (or, for dicts, update) top-level fields."""
    raw: dict[str, Any] = {
        "stage": "pretrain", "model": {"size": "tiny"}, "dataset": dataset, "output": str(output),
        "precision": "fp32", "metricsPort": 0,
        "hyperparameters": {"maxSteps": 20, "globalBatchSize": 8, "microBatchSize": 4, "sequenceLength": 64,
                            "warmupSteps": 4, "learningRate": 3e-3, "evalInterval": 10, "evalBatches": 4},
        "checkpointing": {"interval": 5, "keep": 2},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw[key] = {**raw.get(key, {}), **value}
        else:
            raw[key] = value
    return TrainConfig.model_validate(raw)
