"""Dedup + filter throughput against datatrove's equivalent pipeline, on the same documents.

    .venv/bin/python benchmarks/bench_data_dedup.py --quick     # ~4k documents, well under 2 minutes
    .venv/bin/python benchmarks/bench_data_dedup.py             # 20k documents, 3 repeats

Prints, measured in this one run:
- exact dedup: kept sets of Forge and datatrove (ExactDedupSignature -> ExactFindDedups ->
  ExactDedupFilter) must be identical;
- near dedup: share of documents on which Forge and datatrove's MinHash pipeline (Signature ->
  Buckets -> Cluster -> Filter, same bands x rows and shingle size) agree (target >= 99%);
- throughput of the whole chain (quality filters + exact + near dedup) in documents per CPU-second
  (both run single-threaded in this process, so that is per core), and the ratio Forge / datatrove
  (target >= 1.0). datatrove's equivalent filters are GopherQualityFilter (word count, symbol ratio,
  non-alpha words) and GopherRepetitionFilter (duplicate-line fraction) with only those checks on.

The corpus is synthetic English-like text with exact copies (10%), near copies with one or two
words changed (10%), and low-quality documents (10%).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling _datatrove_minhash module
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainer_image"))

from forge_trainer.config import DatasetPurpose as Purpose
from forge_trainer.config import NearDedupConfig, ProcessingConfig, QualityConfig
from forge_trainer.data.clean import Cleaner, Kept
from forge_trainer.data.dedup import lsh_params
from forge_trainer.data.ingest import RawRecord

STOP = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which"]


def make_corpus(n: int, seed: int = 0) -> list[str]:
    """`n` documents: 70% distinct, 10% exact copies, 10% near copies, 10% low quality."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choices("abcdefghijklmnoprstuvwy", k=rng.randint(3, 9))) for _ in range(20000)]
    cum_weights = list(itertools.accumulate(1 / (i + 1) for i in range(len(vocab))))

    def distinct() -> str:
        lines = []
        for _ in range(rng.randint(4, 10)):
            words = []
            for _ in range(rng.randint(30, 60)):
                words.append(rng.choice(STOP) if rng.random() < 0.35 else rng.choices(vocab, cum_weights=cum_weights)[0])
            lines.append(" ".join(words).capitalize() + ".")
        return "\n".join(lines)

    docs: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if docs and roll < 0.10:
            docs.append(rng.choice(docs))
        elif docs and roll < 0.20:
            words = rng.choice(docs).split(" ")
            for _ in range(rng.randint(1, 2)):
                words[rng.randrange(len(words))] = rng.choice(vocab)
            docs.append(" ".join(words))
        elif roll < 0.30:
            kind = rng.randrange(3)
            if kind == 0:
                docs.append("short text only")
            elif kind == 1:
                docs.append(" ".join(rng.choice(["$$$", "###", "%%", "&&", "1234", "~~"]) for _ in range(80)))
            else:
                docs.append("\n".join(["buy now and save big today"] * 10 + [distinct()]))
        else:
            docs.append(distinct())
    return docs


# ---------------------------------------------------------------------------------------------
# Forge
# ---------------------------------------------------------------------------------------------

NO_FILTERS = QualityConfig(min_chars=0, max_chars=10_000_000, min_alpha_ratio=0.0, max_symbol_ratio=1.0,
                           max_duplicate_line_fraction=1.0)


def forge_kept(docs: list[str], processing: ProcessingConfig) -> set[int]:
    """Indices of the documents Forge keeps."""
    cleaner = Cleaner(processing, Purpose.PRETRAIN, seed=1)
    return {i for i, d in enumerate(docs) if isinstance(cleaner.process(RawRecord("bench", text=d)), Kept)}


# ---------------------------------------------------------------------------------------------
# datatrove
# ---------------------------------------------------------------------------------------------


def _word_tokenizer() -> Any:
    from _datatrove_minhash import RegexWords  # datatrove is imported only when it is compared against

    return RegexWords("en")


def datatrove_kept(docs: list[str], filters: bool, exact: bool, near: bool, bands: int, rows: int,
                   clusters: dict[int, int] | None = None) -> set[int]:
    """Indices of the documents datatrove's pipeline keeps (steps run in this process, one rank);
    with `clusters`, fills it with the near-duplicate cluster id of every clustered document."""
    from datatrove.data import Document
    from datatrove.pipeline.dedup import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.dedup.exact_dedup import (
        ExactDedupConfig,
        ExactDedupFilter,
        ExactDedupSignature,
        ExactFindDedups,
    )
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.utils.hashing import HashConfig

    hash_config = HashConfig(precision=64, hash_fc="sha1")  # xxhash is not installed
    current = [Document(text=d, id=str(i)) for i, d in enumerate(docs)]
    with tempfile.TemporaryDirectory() as tmp:
        if filters:
            words = _word_tokenizer()
            quality = GopherQualityFilter(min_doc_words=5, max_doc_words=1_000_000, min_avg_word_length=None,
                                          max_avg_word_length=None, max_symbol_word_ratio=0.3,
                                          max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                                          max_non_alpha_words_ratio=0.5, min_stop_words=None, language=words)
            repetition = GopherRepetitionFilter(dup_line_frac=0.3, dup_para_frac=None, dup_line_char_frac=None,
                                                dup_para_char_frac=None, top_n_grams=(), dup_n_grams=(),
                                                language=words)
            current = list(repetition.run(quality.run(iter(current))))
        if exact:
            def content(doc: Document) -> str:
                return doc.text

            cfg = ExactDedupConfig(content_getter=content, hash_config=hash_config)
            ExactDedupSignature(f"{tmp}/esig", cfg).run(iter(current))
            ExactFindDedups(f"{tmp}/esig", f"{tmp}/edup", cfg).run()
            current = list(ExactDedupFilter(f"{tmp}/edup", cfg).run(iter(current)))
        if near:
            mcfg = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows, hash_config=hash_config)
            sig = MinhashDedupSignature(f"{tmp}/msig", config=mcfg, language=_word_tokenizer())
            sig.run(iter(current))
            for bucket in range(bands):
                MinhashDedupBuckets(f"{tmp}/msig", f"{tmp}/mbuckets", config=mcfg).run(rank=bucket, world_size=bands)
            MinhashDedupCluster(f"{tmp}/mbuckets", f"{tmp}/mremove", config=mcfg,
                                save_cluster_id=clusters is not None).run()
            if clusters is not None and Path(f"{tmp}/mremove/000000.clusters").exists():
                pairs = np.fromfile(f"{tmp}/mremove/000000.clusters", dtype="<u4").reshape(-1, 2)
                clusters.update({int(current[d].id): int(c) for d, c in pairs.tolist()})
            current = list(MinhashDedupFilter(f"{tmp}/mremove").run(iter(current)))
    return {int(d.id) for d in current}


def cpu_seconds(fn: Callable[[], Any]) -> tuple[float, Any]:
    """CPU seconds `fn` took in this process, and its result."""
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def _quiet_datatrove() -> None:
    from datatrove.utils.logging import logger

    logger.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpus, one repeat")
    parser.add_argument("--docs", type=int, default=None, help="documents in the corpus")
    args = parser.parse_args(argv)
    n = args.docs or (4000 if args.quick else 20000)
    repeats = 1 if args.quick else 3
    _quiet_datatrove()
    docs = make_corpus(n)
    near_cfg = NearDedupConfig(threshold=0.8, num_permutations=128, shingle_size=5)
    bands, rows = lsh_params(near_cfg.threshold, near_cfg.num_permutations)
    print(f"corpus: {n} documents, {sum(len(d) for d in docs) / 1e6:.1f} MB; LSH {bands} bands x {rows} rows")

    # exact dedup only: the kept sets must be identical
    exact_only = ProcessingConfig(exact_dedup=True, near_dedup={"enabled": False}, quality=NO_FILTERS,
                                  pii={"enabled": False}, normalize=False)
    ours = forge_kept(docs, exact_only)
    theirs = datatrove_kept(docs, filters=False, exact=True, near=False, bands=bands, rows=rows)
    print(f"exact dedup: forge kept {len(ours)}, datatrove kept {len(theirs)}, "
          f"identical kept set: {ours == theirs}")

    # near dedup only: agreement on keep/drop per document
    near_only = ProcessingConfig(exact_dedup=False, near_dedup=near_cfg, quality=NO_FILTERS,
                                 pii={"enabled": False}, normalize=False)
    ours = forge_kept(docs, near_only)
    clusters: dict[int, int] = {}
    theirs = datatrove_kept(docs, filters=False, exact=False, near=True, bands=bands, rows=rows,
                            clusters=clusters)
    per_doc = sum((i in ours) == (i in theirs) for i in range(n)) / n
    print(f"near dedup: forge kept {len(ours)}, datatrove kept {len(theirs)}, "
          f"per-document agreement {per_doc:.2%}")
    # Within a cluster of near duplicates Forge (one streaming pass) keeps the first document;
    # datatrove keeps its union-find root, which union-by-size may make a later one. Both keep one:
    # the kept set agrees up to that choice when every cluster keeps as many documents in both.
    members: dict[int, list[int]] = {}
    for doc, cluster in clusters.items():
        members.setdefault(cluster, []).append(doc)
    agreeing = sum((i in ours) == (i in theirs) for i in range(n) if i not in clusters)
    for docs_in in members.values():
        if sum(i in ours for i in docs_in) == sum(i in theirs for i in docs_in):
            agreeing += len(docs_in)
    print(f"near dedup: agreement up to the cluster representative {agreeing / n:.2%} (target >= 99%)")

    # throughput of the whole chain
    full = ProcessingConfig(exact_dedup=True, near_dedup=near_cfg, pii={"enabled": False},
                            quality=QualityConfig(min_chars=20, max_duplicate_line_fraction=0.3))
    forge_times, dt_times = [], []
    for _ in range(repeats):
        t, kept_f = cpu_seconds(lambda: forge_kept(docs, full))
        forge_times.append(t)
        t, kept_d = cpu_seconds(lambda: datatrove_kept(docs, True, True, True, bands, rows))
        dt_times.append(t)
    f_rate = n / statistics.median(forge_times)
    d_rate = n / statistics.median(dt_times)
    print(f"dedup+filter: forge {f_rate:,.0f} docs/CPU-s (kept {len(kept_f)}), "
          f"datatrove {d_rate:,.0f} docs/CPU-s (kept {len(kept_d)}); median of {repeats}")
    print(f"RATIO dedup+filter forge/datatrove = {f_rate / d_rate:.2f}x (target >= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
