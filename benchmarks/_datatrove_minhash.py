"""datatrove's MinHash dedup as `bench_data_scale.py` compares against it: its LocalPipelineExecutor running
signature -> buckets -> cluster -> filter over JSON Lines files, configured like Forge's near dedup (the same
bands x rows, 5-word shingles), with 64-bit sha1 hashes (xxhash is not installed), words as regex runs (its
language tokenizers need spaCy/nltk), and JSON read and written with the standard library (its JsonlReader and
JsonlWriter need orjson, not installed; they are otherwise copied: same sharding of files over tasks, one
document per line; output uncompressed, as Forge's shards are)."""

from __future__ import annotations

import contextlib
import json
import re
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers.disk_base import DiskWriter
from datatrove.utils.word_tokenizers import WordTokenizer


class RegexWords(WordTokenizer):  # type: ignore[misc]
    """Words as \\w+ runs (a module-level class: the local executor's workers unpickle it)."""

    pattern = re.compile(r"\w+|[^\w\s]+")

    def word_tokenize(self, text: str) -> list[str]:
        """The words of `text`."""
        return self.pattern.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        """The sentences of `text`, split at full stops."""
        return text.split(". ")

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        """The (start, end) of every word of `text`."""
        return [m.span() for m in self.pattern.finditer(text)]


class StdlibJsonlReader(BaseDiskReader):  # type: ignore[misc]
    """datatrove's JsonlReader (uncompressed files) with `json` in place of orjson."""

    name = "Jsonl (stdlib json)"

    def read_file(self, filepath: str) -> Iterator[Document]:
        """One document per line of `filepath`."""
        with self.data_folder.open(filepath, "r") as f:
            for li, line in enumerate(f):
                with self.track_time():
                    document = self.get_document_from_dict(json.loads(line), filepath, li)
                    if not document:
                        continue
                yield document


class StdlibJsonlWriter(DiskWriter):  # type: ignore[misc]
    """datatrove's JsonlWriter (uncompressed) with `json` in place of orjson."""

    default_output_filename = "${rank}.jsonl"
    name = "Jsonl (stdlib json)"

    def __init__(self, output_folder: str) -> None:
        super().__init__(output_folder, compression=None, mode="wt")

    def _write(self, document: dict[str, Any], file_handler: IO[str], _filename: str) -> None:
        file_handler.write(json.dumps(document, default=str) + "\n")


def minhash_config(bands: int, rows: int) -> Any:
    """`bands` x `rows` MinHash over 5-word shingles (Forge's shingle size), 64-bit sha1 hashes."""
    from datatrove.pipeline.dedup import MinhashConfig
    from datatrove.utils.hashing import HashConfig

    return MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows,
                         hash_config=HashConfig(precision=64, hash_fc="sha1"))


def quiet() -> None:
    """No datatrove log lines or progress bars on the benchmark's output."""
    from datatrove.utils.logging import logger

    logger.remove()


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_minhash_pipeline(source: Path, work: Path, bands: int, rows: int,
                         workers: int) -> tuple[dict[str, tuple[float, float]], int]:
    """datatrove's MinHash dedup of the JSON Lines files in `source` as its docs run it on one machine
    (LocalPipelineExecutor; signature -> buckets -> cluster -> filter, `workers` processes at a time, forked
    so that their CPU time is counted here; with one worker the tasks run in this process): ({step: (wall
    seconds, CPU seconds)}, documents kept), the kept documents in `work`/output."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )

    cfg = minhash_config(bands, rows)
    tasks = max(workers, len(list(source.glob("*.jsonl"))))
    steps = {
        "signature": ([StdlibJsonlReader(str(source)),
                       MinhashDedupSignature(f"{work}/sig", config=cfg, language=RegexWords("en"))], tasks),
        "buckets": ([MinhashDedupBuckets(f"{work}/sig", f"{work}/buckets", config=cfg)], bands),
        "cluster": ([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=cfg)], 1),
        "filter": ([StdlibJsonlReader(str(source)), MinhashDedupFilter(f"{work}/remove"),
                    StdlibJsonlWriter(f"{work}/output")], tasks),
    }
    times = {}
    (work / "logs").mkdir(parents=True, exist_ok=True)
    # each task logs to sys.stderr as it is when the task starts: a file here, not the benchmark's output
    with (work / "logs" / "stderr.log").open("w") as log, contextlib.redirect_stderr(log):
        for name, (pipeline, count) in steps.items():
            executor = LocalPipelineExecutor(pipeline, tasks=count, workers=min(workers, count),
                                             logging_dir=str(work / "logs" / name), start_method="fork")
            wall, cpu = time.perf_counter(), _cpu_seconds()
            executor.run()
            times[name] = (time.perf_counter() - wall, _cpu_seconds() - cpu)
    kept = 0
    for path in (work / "output").glob("*.jsonl"):
        with path.open("rb") as fh:
            kept += sum(1 for _ in fh)
    return times, kept
