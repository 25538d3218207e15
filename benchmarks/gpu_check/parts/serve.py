"""The builtin server (`forge-trainer serve`, its own process) on the device against Hugging Face
`generate` in this process, on the same exported model: generated tokens/s and time to first token at
1 and 16 concurrent streams (1 and 4 in a dry run), greedy, every completion of full length.

The model is the ~1B dense model with random weights (tiny in a dry run) and a byte-level BPE tokenizer
trained on a synthetic corpus, exported as the trainer exports (`export_hf`, bf16 on a GPU). Both
contenders get the logit bias of `serve_rounds.banned_tokens`; rounds alternate between them."""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from benchmarks.gpu_check.measure import free_port, model_args
from benchmarks.gpu_check.part import Context
from benchmarks.serve_rounds import banned_tokens, round_hf_generate, round_server

from forge_trainer.data.tokenizer import special_token_ids, train_tokenizer
from forge_trainer.model import Transformer
from forge_trainer.model.hf_export import export_hf
from forge_trainer.serve.loading import LoadedModel, load_model

MODEL_NAME = "gpu-check"
WORDS = ("model", "foundry", "cluster", "token", "train", "serve", "shard", "tensor", "kernel", "batch", "step",
         "loss", "weight", "layer", "expert", "route", "cache", "query", "answer", "prompt", "the", "a", "of",
         "and", "to", "in", "is", "on", "with", "for")


def corpus(n: int, seed: int = 0) -> list[str]:
    """Synthetic sentences of made-up and common words (enough distinct pairs for the BPE merges)."""
    rng = random.Random(seed)
    made_up = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
               for _ in range(2000)]
    vocab = list(WORDS) + made_up
    return [" ".join(rng.choice(vocab) for _ in range(rng.randint(8, 24))) + "." for _ in range(n)]


def export_model(ctx: Context, directory: Path) -> Path:
    """A random model of the planned size and its tokenizer, exported as a Hugging Face directory."""
    s, device = ctx.sizes, ctx.device
    tok = train_tokenizer(iter(corpus(20_000 if not ctx.dry_run else 500)), s.serve_vocab)
    tok_path = ctx.workdir / "tokenizer.json"
    tok.save(str(tok_path))
    eos, pad = special_token_ids(tok)
    args = model_args(s.dense, tok.get_vocab_size())
    torch.manual_seed(0)
    with torch.device(device):
        model = Transformer(args)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    del model
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    export_hf(state, args, tok_path, directory, eos_token_id=eos, pad_token_id=pad, dtype=dtype)
    ctx.record("model", {"layers": args.num_layers, "hidden": args.hidden_size, "vocab": args.vocab_size,
                         "dtype": str(dtype).removeprefix("torch.")})
    return directory


def start_server(ctx: Context, model_dir: Path, port: int, batch: int) -> subprocess.Popen[bytes]:
    """`forge-trainer serve` on loopback, loading (see `wait_ready`); its output goes to the part's log."""
    cpu = ["--device", "cpu", "--torch-threads", "1"] if ctx.device.type == "cpu" else []
    env = {k: v for k, v in os.environ.items() if k not in ("FORGE_API_KEY", "FORGE_METRICS_API_KEY")}
    return subprocess.Popen([sys.executable, "-m", "forge_trainer.cli", "serve", "--model", str(model_dir),
                             "--model-name", MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
                             "--max-batch-size", str(batch), *cpu], env={**env, "FORGE_LOG_LEVEL": "WARNING"})


def wait_ready(ctx: Context, proc: subprocess.Popen[bytes], url: str) -> float:
    """Wait until GET /readyz is 200; the seconds waited. Raises when the server exits or takes too long."""
    began = time.monotonic()
    deadline = began + min(180.0, max(10.0, ctx.time_left() - 20))
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return round(time.monotonic() - began, 1)
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode} before it was ready")
        time.sleep(0.25)
    raise RuntimeError("the server was not ready in time")


def summarize(rounds: list[tuple[float, float, int]]) -> dict[str, Any]:
    """Median tokens/s and time to first token over rounds."""
    return {"tokens_per_s": round(statistics.median(t / w for w, _, t in rounds), 1),
            "ttft_ms": round(statistics.median(f for _, f, _ in rounds) * 1e3, 1), "rounds": len(rounds),
            "tokens_per_round": rounds[0][2]}


async def compare(ctx: Context, loaded: LoadedModel, url: str, streams: int) -> dict[str, Any]:
    """Warm-up, then alternating rounds of HF generate and the server on `streams` prompts."""
    s = ctx.sizes
    texts = corpus(streams, seed=7)
    bias = banned_tokens(loaded)
    measured: dict[str, list[tuple[float, float, int]]] = {"hf_generate": [], "server": []}
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=streams)) as client:
        async def one(name: str, completions: list[str] | None = None) -> tuple[float, float, int]:
            if name == "hf_generate":
                return round_hf_generate(loaded, texts, s.serve_tokens, bias, completions)
            return await round_server(client, url, texts, s.serve_tokens, bias, completions, model=MODEL_NAME)

        completions: dict[str, list[str]] = {name: [] for name in measured}
        for name in measured:
            await one(name, completions[name])
        same = sum(a == b for a, b in zip(*completions.values(), strict=True))
        for _ in range(s.serve_rounds):
            for name in measured:
                measured[name].append(await one(name))
    out: dict[str, Any] = {name: summarize(rounds) for name, rounds in measured.items()}
    server, hf = out["server"], out["hf_generate"]
    out["throughput_overhead"] = f"{1 - server['tokens_per_s'] / hf['tokens_per_s']:+.1%}"
    out["ttft_ratio"] = round(server["ttft_ms"] / hf["ttft_ms"], 3)
    out["same_greedy_text"] = f"{same}/{streams}"
    return out


def run(ctx: Context) -> None:
    """Export, start the server and load the reference meanwhile, compare at each concurrency."""
    s, device = ctx.sizes, ctx.device
    model_dir = export_model(ctx, ctx.workdir / "model")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(ctx, model_dir, port, max(s.serve_streams))
    try:
        loaded = load_model(str(model_dir), cache_dir=ctx.workdir / "cache", device=str(device))
        ctx.record("server_ready_after_s", wait_ready(ctx, server, url))
        for streams in s.serve_streams:
            def measure(n: int = streams) -> dict[str, Any]:
                return asyncio.run(compare(ctx, loaded, url, n))

            ctx.attempt(f"streams_{streams}", measure)
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()

