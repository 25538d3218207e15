"""Throughput of our pretraining loop against a plain PyTorch loop, tiny preset on CPU.

Both train the same model (same seed) on the same batches with the same optimizer, schedule,
clipping and accumulation; ours runs the whole workload (`run_pretrain`: store reads with digest
checks, progress.json, step log, a final checkpoint and export; a step is timed from the end of the
previous one, so batch reads and reporting count), the reference is a bare loop over batches
already in memory. Each loop runs in a process of its own (so neither inherits the allocator and
interpreter state the other leaves) and rounds alternate which goes first, so machine load hits both
alike; the headline is the median of the per-round ratios. Prints
median step times, tokens/s, the ratio (target >= 1.0x), and the largest loss difference over the
first 50 steps.

    .venv/bin/python benchmarks/bench_train_throughput.py --quick
"""

from __future__ import annotations

import argparse
import gc
import itertools
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.unit.train_fixtures import local_dataset

from forge_trainer.config import TrainConfig
from forge_trainer.data.manifest import Split
from forge_trainer.data.shards import load_manifest
from forge_trainer.model import Transformer, resolve_model_args
from forge_trainer.store import LocalStore
from forge_trainer.train.batches import TokenSequences, step_micro_batches
from forge_trainer.train.pretrain import run_pretrain
from forge_trainer.train.progress import read_step_log
from forge_trainer.train.schedule import lr_at

STEPS_COMPARED = 50


def make_config(dataset: str, output: Path, steps: int) -> TrainConfig:
    return TrainConfig.model_validate({
        "stage": "pretrain", "model": {"size": "tiny"}, "dataset": dataset, "output": str(output),
        "precision": "fp32", "metricsPort": 0,
        "hyperparameters": {"maxSteps": steps, "globalBatchSize": 16, "microBatchSize": 8, "sequenceLength": 128,
                            "warmupSteps": 10, "learningRate": 3e-3, "evalInterval": 0, "evalBatches": 1},
        "checkpointing": {"interval": steps, "keep": 1},
    })


def ours(config: TrainConfig) -> tuple[list[float], list[float]]:
    """(step seconds, losses) of our full workload; a step's time runs from the end of the previous
    step to its own end, so it includes reading batches, progress and step-log writes."""
    run_pretrain(config)
    log = read_step_log(LocalStore(Path(config.output)), "")
    steps = sorted(log)
    ends = [log[s]["time"] for s in steps]
    times = [log[steps[0]]["step_seconds"]] + [b - a for a, b in itertools.pairwise(ends)]
    return times, [log[s]["loss"] for s in steps]


def plain(config: TrainConfig) -> tuple[list[float], list[float]]:
    """(step seconds, losses) of a bare PyTorch loop over the same batches."""
    hp = config.hyperparameters
    manifest, _ = load_manifest(config.dataset)
    data = TokenSequences(config.dataset, manifest, Split.TRAIN, hp.sequence_length, hp.seed)
    batches = [step_micro_batches(data, s, hp.global_batch_size, 0, 1, hp.micro_batch_size)
               for s in range(hp.max_steps)]
    torch.manual_seed(hp.seed)
    model = Transformer(resolve_model_args(config.model, manifest.tokenizer.vocab_size))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=hp.learning_rate, betas=(hp.beta1, hp.beta2))
    times, losses = [], []
    for step, micro in enumerate(batches):
        began = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, hp)
        total = 0.0
        for batch in micro:
            logits = model(batch["input_ids"])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
            (loss / len(micro)).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - began)
        losses.append(total / len(micro))
    return times, losses


def _worker(conn: Connection, threads: int) -> None:
    """A process that runs one kind of loop on request, so neither loop runs after the other in the same
    process (allocator and interpreter state left by one run would tax the next)."""
    torch.set_num_threads(threads)
    while True:
        job = conn.recv()
        if job is None:
            return
        kind, config = job
        gc.collect()
        conn.send((ours if kind == "ours" else plain)(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"8 rounds of {STEPS_COMPARED} steps (1-2 minutes)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both loops")
    a = parser.parse_args()
    rounds = a.rounds or (8 if a.quick else 12)
    steps = a.steps or (STEPS_COMPARED if a.quick else 200)
    torch.set_num_threads(a.threads)
    ctx = mp.get_context("spawn")
    workers: dict[str, tuple[Connection, BaseProcess]] = {}
    for kind in ("ours", "plain"):
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(there, a.threads), daemon=True)
        proc.start()
        workers[kind] = (here, proc)

    def run(kind: str, config: TrainConfig) -> tuple[list[float], list[float]]:
        conn = workers[kind][0]
        conn.send((kind, config))
        result: tuple[list[float], list[float]] = conn.recv()
        return result

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset = local_dataset(root / "ds")
        ours_times: list[float] = []
        plain_times: list[float] = []
        ratios: list[float] = []
        max_diff = 0.0
        try:
            for r in range(rounds):  # A/B, B/A, ...: machine load hits both alike
                order = ("ours", "plain") if r % 2 == 0 else ("plain", "ours")
                results = {kind: run(kind, make_config(dataset, root / f"{kind}-{r}", steps)) for kind in order}
                (t_ours, l_ours), (t_plain, l_plain) = results["ours"], results["plain"]
                warm = 5
                ours_times += t_ours[warm:]
                plain_times += t_plain[warm:]
                ratios.append(statistics.median(t_plain[warm:]) / statistics.median(t_ours[warm:]))
                max_diff = max(max_diff, *(abs(x - y) for x, y in zip(l_ours[:STEPS_COMPARED],
                                                                      l_plain[:STEPS_COMPARED], strict=True)))
        finally:
            for conn, proc in workers.values():
                conn.send(None)
                proc.join(timeout=30)
        tokens = 16 * 128
        med_ours, med_plain = statistics.median(ours_times), statistics.median(plain_times)
        print(f"tiny preset, CPU, {a.threads} thread(s), {rounds} rounds x {steps} steps, {tokens} tokens/step, "
              "each loop in a process of its own, alternating")
        print(f"plain PyTorch loop : median step {med_plain * 1e3:7.2f} ms  {tokens / med_plain:9.0f} tokens/s")
        print(f"forge trainer      : median step {med_ours * 1e3:7.2f} ms  {tokens / med_ours:9.0f} tokens/s")
        print(f"ratio forge/plain tokens/s: {med_plain / med_ours:.3f}x over all steps, "
              f"{statistics.median(ratios):.3f}x median of per-round ratios "
              f"({', '.join(f'{r:.2f}' for r in ratios)}) (target >= 1.0x)")
        print(f"max |loss difference| over the first {STEPS_COMPARED} steps: {max_diff:.2e}")


if __name__ == "__main__":
    main()
