"""Throughput and time to first token of the builtin server against generating in-process.

    python benchmarks/bench_serve.py [--quick]

Eight concurrent clients stream completions of the same eight prompts (each exactly --max-tokens
tokens, greedy) from `forge-trainer serve` running in its own process; the references generate the
same prompts in this process, measured in the same run:

  * hf_generate: Hugging Face `model.generate` on the eight prompts as one left-padded batch;
  * engine: our batching engine called directly (no HTTP, no JSON, no tokenizer on the request path).

All three get the same logit bias: -100 on the end-of-text tokens (so every completion has its full
length) and on the tokens that decode to no text on their own (special tokens, and the byte tokens of
an incomplete UTF-8 character). The model has random weights, so without the second ban some
completions start with bytes that are no text yet, and a streaming client would see its first text
tokens later than the first token was generated: the time to first token of the server would count
the model's output, not the server. With it, the three generate the same greedy tokens, and a
client's first chunk carries the first token.

Rounds of the three are interleaved, so a change of machine load hits each alike. Prints medians over
the rounds and the ratios; the server's overhead is 1 - its throughput over the reference's, and its
time to first token over the reference's, less 1. Tokens/s count generated tokens only. CPU time per
generated token (this process for the references, the server process for the server) is printed
too: unlike wall-clock figures it hardly moves when other work shares the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.serve_rounds import banned_tokens, concurrent_round, round_hf_generate, round_server  # noqa: E402
from tests.support.serve import CORPUS, build_tiny_model  # noqa: E402

from forge_trainer.serve.engine import Engine  # noqa: E402
from forge_trainer.serve.loading import LoadedModel, load_model  # noqa: E402
from forge_trainer.serve.sampling import SamplingParams  # noqa: E402
from forge_trainer.serve.server import default_cpu_threads  # noqa: E402

CLIENTS = 8


def prompts(n: int) -> list[str]:
    """n different prompts of a few dozen tokens."""
    return [" ".join(CORPUS[(i + j) % len(CORPUS)] for j in range(2)) for i in range(n)]


async def round_engine(engine: Engine, loaded: LoadedModel, texts: list[str], max_tokens: int,
                       bias: dict[int, float], completions: list[str] | None = None) -> tuple[float, float, int]:
    async def one(text: str, start: float) -> tuple[float, int, str]:
        ttft, count, out = 0.0, 0, []
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logit_bias=bias)
        # tokenizing is part of "calling generation with the same prompts"
        async for delta in engine.generate(loaded.tokenizer(text)["input_ids"], params):
            if not ttft:
                ttft = time.perf_counter() - start
            out.append(delta.text)
            if delta.finish_reason:
                count = delta.completion_tokens
        return ttft, count, "".join(out)

    return await concurrent_round(one, texts, completions)


def start_server(model_dir: Path, port: int, threads: int) -> subprocess.Popen[bytes]:
    code = ("import sys; from forge_trainer.serve.server import main; main(sys.argv[1:])")
    proc = subprocess.Popen([sys.executable, "-c", code, "--model", str(model_dir), "--model-name", "bench",
                             "--host", "127.0.0.1", "--port", str(port), "--max-batch-size", str(CLIENTS),
                             "--device", "cpu", "--torch-threads", str(threads)],
                            env={**os.environ, "FORGE_LOG_LEVEL": "WARNING"})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit("the server exited before it was ready")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server was not ready within 120 s")


def summarize(name: str, rounds: list[tuple[float, float, int]], cpu: list[float]) -> tuple[float, float, float]:
    tps = statistics.median(tokens / wall for wall, _, tokens in rounds)
    ttft = statistics.median(t for _, t, _ in rounds)
    cpu_per_token = statistics.median(c / r[2] for c, r in zip(cpu, rounds, strict=True))
    print(f"  {name:<12} {tps:9.1f} tokens/s   time to first token {ttft * 1000:8.1f} ms   "
          f"CPU {cpu_per_token * 1000:6.2f} ms/token   ({len(rounds)} rounds, {rounds[0][2]} tokens each)")
    return tps, ttft, cpu_per_token


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of a process, all threads."""
    t = proc.cpu_times()
    return float(t.user + t.system)


async def measure(loaded: LoadedModel, model_dir: Path, texts: list[str], max_tokens: int, rounds: int,
                  threads: int) -> dict[str, tuple[float, float, float]]:
    """Warm up, then run interleaved rounds of the three contenders; their summaries by name."""
    from tests.support.ports import free_port

    engine = Engine(loaded.model, loaded.tokenizer, eos_token_ids=loaded.eos_token_ids, max_batch_size=CLIENTS,
                    context_length=loaded.context_length, pad_token_id=loaded.pad_token_id)
    engine.start()
    port = free_port()
    server = start_server(model_dir, port, threads)
    url = f"http://127.0.0.1:{port}"
    bias = banned_tokens(loaded)
    me, server_proc = psutil.Process(), psutil.Process(server.pid)
    measured: dict[str, list[tuple[float, float, int]]] = {"hf_generate": [], "engine": [], "server": []}
    cpu: dict[str, list[float]] = {name: [] for name in measured}
    # one client for every round, its connections kept alive: connecting is the client's cost, not the server's
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=CLIENTS)) as client:

        async def run(name: str, completions: list[str] | None = None) -> tuple[float, float, int]:
            if name == "hf_generate":
                return round_hf_generate(loaded, texts, max_tokens, bias, completions)
            if name == "engine":
                return await round_engine(engine, loaded, texts, max_tokens, bias, completions)
            return await round_server(client, url, texts, max_tokens, bias, completions)

        try:
            # warm-up: first calls allocate, load kernels and open connections; and the three must agree
            completions: dict[str, list[str]] = {name: [] for name in measured}
            for name in measured:
                await run(name, completions[name])
            same = sum(len(set(c)) == 1 for c in zip(*completions.values(), strict=True))
            print(f"  same greedy text from all three for {same} of {len(texts)} prompts")
            for _ in range(rounds):
                for name in measured:
                    proc = server_proc if name == "server" else me
                    before = cpu_seconds(proc)
                    measured[name].append(await run(name))
                    cpu[name].append(cpu_seconds(proc) - before)
        finally:
            engine.stop()
            server.terminate()
            server.wait(timeout=30)
    return {name: summarize(name, rounds_, cpu[name]) for name, rounds_ in measured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and tokens (under 3 minutes)")
    parser.add_argument("--hidden-size", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--torch-threads", type=int, default=default_cpu_threads(),
                        help="torch CPU threads, here and in the server (default: the server's default)")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    rounds = args.rounds or (7 if args.quick else 11)
    max_tokens = args.max_tokens or (32 if args.quick else 128)
    texts = prompts(CLIENTS)

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", hidden_size=args.hidden_size, num_layers=args.layers,
                                     num_heads=8, num_kv_heads=4, intermediate_size=args.hidden_size * 3,
                                     max_positions=1024, vocab_size=1024, init_std=0.02)
        loaded = load_model(str(model_dir), cache_dir=Path(tmp) / "cache", device="cpu")
        n_params = sum(p.numel() for p in loaded.model.parameters())
        print(f"model: {n_params / 1e6:.1f}M parameters, {CLIENTS} concurrent clients, {max_tokens} tokens each, "
              f"{rounds} rounds, torch threads {torch.get_num_threads()}, cpu")
        results = asyncio.run(measure(loaded, model_dir, texts, max_tokens, rounds, args.torch_threads))

    s_tps, s_ttft, s_cpu = results["server"]
    for ref in ("hf_generate", "engine"):
        r_tps, r_ttft, r_cpu = results[ref]
        print(f"server vs {ref:<12} throughput ratio {s_tps / r_tps:5.3f} (overhead {1 - s_tps / r_tps:+6.1%})   "
              f"time-to-first-token ratio {s_ttft / r_ttft:5.3f} (overhead {s_ttft / r_ttft - 1:+6.1%})   "
              f"CPU/token ratio {s_cpu / r_cpu:5.3f}")


if __name__ == "__main__":
    main()
