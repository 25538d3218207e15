"""Peak memory of `forge-trainer prepare` as the corpus grows: streaming keeps it flat.

    .venv/bin/python benchmarks/bench_data_rss.py --quick   # 10 MB vs 100 MB
    .venv/bin/python benchmarks/bench_data_rss.py --full    # 10 MB vs 100 MB vs 1 GB

Each size is a fresh corpus of distinct English-like documents in JSON Lines files, prepared by the
real CLI in its own process (pretrain, every cleaning step on, a 2048-token BPE trained on it); the
peak RSS of that process comes from the kernel (wait4's ru_maxrss). Prints each peak, and the ratio
of the largest corpus's peak to the smallest's: a pipeline that held the corpus would grow with it
(x10, x100); the dedup indexes (16 bytes a document and band) are what is left to grow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FILE_BYTES = 16 << 20


def write_corpus(root: Path, total_bytes: int, seed: int) -> int:
    """JSON Lines files of distinct documents adding up to about `total_bytes`; returns documents."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnoprstuvwy"))
    vocab = np.array(["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(30000)])
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    root.mkdir(parents=True)
    written = docs = part = 0
    fh = (root / f"part-{part:05d}.jsonl").open("w")
    in_file = 0
    while written < total_bytes:
        idx = rng.choice(len(vocab), size=(256, 300), p=p)
        for row in idx:
            line = json.dumps({"text": " ".join(vocab[row]).capitalize() + "."}) + "\n"
            fh.write(line)
            written += len(line)
            in_file += len(line)
            docs += 1
        if in_file >= FILE_BYTES:
            fh.close()
            part += 1
            in_file = 0
            fh = (root / f"part-{part:05d}.jsonl").open("w")
    fh.close()
    return docs


def peak_rss_of_prepare(source: Path, output: Path, config_dir: Path) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one `forge-trainer prepare` process."""
    cfg = config_dir / f"{output.name}.json"
    cfg.write_text(json.dumps({"source": str(source), "output": str(output),
                               "tokenizer": {"vocabSize": 2048}}))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "forge_trainer.cli", "prepare", "--config", str(cfg)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"prepare of {source} failed with status {proc.returncode}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="10 MB and 100 MB (the default)")
    mode.add_argument("--full", action="store_true", help="10 MB, 100 MB and 1 GB")
    args = parser.parse_args(argv)
    sizes = [10 << 20, 100 << 20] + ([1 << 30] if args.full else [])
    peaks = []
    with tempfile.TemporaryDirectory(prefix="forge-bench-rss-") as tmp:
        for i, size in enumerate(sizes):
            src = Path(tmp) / f"src-{i}"
            docs = write_corpus(src, size, seed=i)
            mb = sum(p.stat().st_size for p in src.iterdir()) / 2**20
            peak, secs = peak_rss_of_prepare(src, Path(tmp) / f"out-{i}", Path(tmp))
            manifest = json.loads((Path(tmp) / f"out-{i}" / "manifest.json").read_text())
            peaks.append(peak)
            print(f"{mb:7.0f} MiB corpus, {docs:8,} documents: peak RSS {peak:6.0f} MiB, {secs:5.0f} s, "
                  f"kept {manifest['counts']['documentsKept']:,}, {manifest['counts']['tokens']:,} tokens")
    growth = sizes[-1] / sizes[0]
    print(f"RATIO peak RSS {sizes[-1] >> 20} MiB / {sizes[0] >> 20} MiB corpus = {peaks[-1] / peaks[0]:.2f}x "
          f"for {growth:.0f}x the input")
    return 0


if __name__ == "__main__":
    sys.exit(main())
