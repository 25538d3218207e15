"""Tokenization throughput of the packing stage against calling `tokenizers` batch-encode directly.

    .venv/bin/python benchmarks/bench_data_tokenize.py --quick   # ~10 MB of text, 3 repeats
    .venv/bin/python benchmarks/bench_data_tokenize.py           # ~50 MB of text, 3 repeats

Forge's number covers the whole packing pass of `forge-trainer prepare`: reading the cleaned spill
file, encoding in batches (a pre-token cache in front of the tokenizer, see forge_trainer.data.encode),
appending eos, packing into uint16 shards, hashing them and publishing them to a local store; the
shards are checked to hold exactly the ids `encode_batch` gives. The reference is `Tokenizer.encode_batch` over the same texts already in memory, in
batches of the same size (and, for information, `encode_batch_fast`). Both use the same trained
byte-level BPE tokenizer and the same thread pool. Prints medians and the ratio (target >= 1.0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench_data_dedup import make_corpus
from forge_trainer.data.prepare import ENCODE_BATCH, spill_batches
from forge_trainer.data.shard_writers import pack_token_shards
from forge_trainer.data.tokenizer import special_token_ids, train_tokenizer
from forge_trainer.store import LocalStore


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of all this process's threads, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="about 10 MB of text")
    parser.add_argument("--docs", type=int, default=None, help="documents in the corpus")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.docs or (6000 if args.quick else 30000)
    texts = make_corpus(n, seed=3)
    mb = sum(len(t) for t in texts) / 1e6
    tok = train_tokenizer(iter(texts[:2000]), vocab_size=8192)
    eos, _ = special_token_ids(tok)
    print(f"corpus: {n} documents, {mb:.1f} MB; tokenizer vocab {tok.get_vocab_size()}")

    def direct(encode: Any) -> list[int]:
        ids: list[int] = []
        for i in range(0, len(texts), ENCODE_BATCH):
            for e in encode(texts[i:i + ENCODE_BATCH], add_special_tokens=False):
                ids.extend(e.ids)
                ids.append(eos)
        return ids

    runs: dict[str, list[tuple[float, float]]] = {"encode_batch": [], "encode_batch_fast": [], "forge": []}
    with tempfile.TemporaryDirectory() as tmp:
        spill = Path(tmp) / "clean.jsonl"
        with spill.open("w") as fh:
            for t in texts:
                fh.write(json.dumps({"s": 0, "t": t}) + "\n")
        store = LocalStore(Path(tmp) / "out")

        def publish(path: Path, info: Any) -> None:
            store.put_file(info.path, path)

        def forge() -> list[Any]:
            work = Path(tempfile.mkdtemp(dir=tmp))
            shards, _ = pack_token_shards(spill_batches(spill, False), tok, eos, "uint16", 1 << 24, work, publish)
            return shards

        reference: list[int] = []
        for _ in range(args.repeats):  # interleaved, so load from other processes hits all alike
            wall, cpu, reference = measure(lambda: direct(tok.encode_batch))
            runs["encode_batch"].append((wall, cpu))
            wall, cpu, _ = measure(lambda: direct(tok.encode_batch_fast))
            runs["encode_batch_fast"].append((wall, cpu))
            wall, cpu, shards = measure(forge)
            runs["forge"].append((wall, cpu))
        packed = np.concatenate([np.fromfile(store.root / s.path, dtype="<u2") for s in shards])
    assert packed.tolist() == reference, "forge's shards hold exactly the ids tokenizers gives"
    tokens = len(reference)
    print(f"token ids identical to encode_batch's: True ({tokens:,} tokens incl. one eos per document)")
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    for name, label in (("encode_batch", "tokenizers encode_batch"),
                        ("encode_batch_fast", "tokenizers encode_batch_fast"), ("forge", "forge packing pass")):
        print(f"{label:29s} {tokens / wall[name] / 1e6:6.2f} M tokens/s wall, "
              f"{tokens / cpu[name] / 1e6:6.2f} M tokens/CPU-s  (median of {args.repeats})")
    print(f"RATIO tokenization forge/encode_batch = {wall['encode_batch'] / wall['forge']:.2f}x wall, "
          f"{cpu['encode_batch'] / cpu['forge']:.2f}x per CPU-s (target >= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
