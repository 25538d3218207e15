"""Synthetic English-like corpora written as JSON Lines files, up to gigabytes, for `bench_data_scale.py`.

Words come from a Zipf-weighted vocabulary of made-up words mixed with English stop words, with the mix of
`bench_data_dedup.py`'s in-memory corpus planted: exact copies (10%), near copies with one or two words
changed (10%), low quality (10%: too short, symbol runs, a repeated spam line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

STOP = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which"]
LETTERS = "abcdefghijklmnoprstuvwy"
SYMBOL_RUNS = ["$$$", "###", "%%", "&&", "1234", "~~"]
SPAM_LINE = "buy now and save big today"


class CorpusFiles:
    """What `write_corpus_files` wrote: documents, files, bytes, and the planted copies (exact, near; how
    many of them in another file than their original)."""

    def __init__(self) -> None:
        self.docs = self.files = self.bytes = 0
        self.exact = self.near = self.cross_file = self.low_quality = self.with_email = 0


def write_corpus_files(root: Path, total_bytes: int, seed: int = 0, file_bytes: int | None = None) -> CorpusFiles:
    """JSON Lines files (`{"text": ...}`) under `root` adding up to about `total_bytes`, in the mix of
    `make_corpus` but streamed and vectorised (a gigabyte in minutes, memory flat): copies are drawn from a
    uniform reservoir of every earlier distinct document, so most land in a later file than their original;
    2% of documents carry an e-mail address (for the PII redactor)."""
    rng = np.random.default_rng(seed)
    vocab = ["".join(rng.choice(list(LETTERS), size=int(rng.integers(3, 10)))) for _ in range(20000)]
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    file_bytes = file_bytes or int(min(32 << 20, max(1 << 20, total_bytes // 8)))
    reservoir: list[tuple[int, str]] = []  # (file index, text) of distinct documents
    seen_distinct = 0
    stats = CorpusFiles()
    root.mkdir(parents=True, exist_ok=True)

    def distinct_batch(count: int) -> list[str]:
        lines_per_doc = rng.integers(4, 11, size=count)
        words_per_line = rng.integers(30, 61, size=int(lines_per_doc.sum()))
        ids = rng.choice(len(vocab), size=int(words_per_line.sum()), p=p).tolist()
        stop = (rng.random(len(ids)) < 0.35).tolist()
        stop_ids = rng.integers(0, len(STOP), size=len(ids)).tolist()
        words = [STOP[s] if is_stop else vocab[i] for i, is_stop, s in zip(ids, stop, stop_ids, strict=True)]
        lines, at = [], 0
        for n in words_per_line.tolist():
            lines.append(" ".join(words[at:at + n]).capitalize() + ".")
            at += n
        docs, at = [], 0
        for n in lines_per_doc.tolist():
            docs.append("\n".join(lines[at:at + n]))
            at += n
        return docs

    fh = None
    in_file = 0
    while stats.bytes < total_bytes:
        if fh is None or in_file >= file_bytes:
            if fh is not None:
                fh.close()
            fh = (root / f"part-{stats.files:05d}.jsonl").open("w", encoding="utf-8")
            stats.files += 1
            in_file = 0
        fresh = iter(distinct_batch(256))
        rolls = rng.random(256).tolist()
        out = []
        for roll in rolls:
            if reservoir and roll < 0.10:
                origin, text = reservoir[int(rng.integers(len(reservoir)))]
                stats.exact += 1
                stats.cross_file += origin != stats.files - 1
            elif reservoir and roll < 0.20:
                origin, text = reservoir[int(rng.integers(len(reservoir)))]
                words = text.split(" ")
                for _ in range(int(rng.integers(1, 3))):
                    words[int(rng.integers(len(words)))] = vocab[int(rng.integers(len(vocab)))]
                text = " ".join(words)
                stats.near += 1
                stats.cross_file += origin != stats.files - 1
            elif roll < 0.30:
                kind = int(rng.integers(3))
                text = ("short text only" if kind == 0 else
                        " ".join(SYMBOL_RUNS[int(i)] for i in rng.integers(0, len(SYMBOL_RUNS), size=80)) if kind == 1
                        else "\n".join([SPAM_LINE] * 10 + [next(fresh)]))
                stats.low_quality += 1
            else:
                text = next(fresh)
                if roll > 0.98:
                    text += f"\nWrite to {vocab[int(rng.integers(len(vocab)))]}.{seen_distinct}@example.org for a copy."
                    stats.with_email += 1
                seen_distinct += 1
                if len(reservoir) < 4096:  # reservoir sampling: every distinct document equally likely
                    reservoir.append((stats.files - 1, text))
                elif (slot := int(rng.integers(seen_distinct))) < 4096:
                    reservoir[slot] = (stats.files - 1, text)
            out.append(json.dumps({"text": text}) + "\n")
        chunk = "".join(out)
        fh.write(chunk)
        size = len(chunk.encode())
        stats.bytes += size
        in_file += size
        stats.docs += len(out)
    if fh is not None:
        fh.close()
    return stats
