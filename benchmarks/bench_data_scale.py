"""Dataset preparation split across workers (`spec.parallelism`): throughput at 1 and 2 workers, peak memory per
worker as the corpus grows, bytes moved through the store per input byte, and datatrove's MinHash pipeline on
the same corpus in the same run.

    .venv/bin/python benchmarks/bench_data_scale.py --quick   # 10 MB and 100 MB corpora (the default)
    .venv/bin/python benchmarks/bench_data_scale.py --full    # 10 MB, 100 MB and 1 GB
    .venv/bin/python benchmarks/bench_data_scale.py --sizes 10 --json /tmp/scale.json   # one size, figures kept

Each size is a fresh synthetic corpus of JSON Lines files (`_synthetic_text.py`: English-like text with 10%
exact copies and 10% near copies, most of them in another file than their original, so on another scan
worker, and 10% low-quality documents), prepared three ways by the real CLI, pretrain with every cleaning
step on (PII too) and a 2048-token BPE trained on it:

- unsplit: one `forge-trainer prepare` process (what `forge run` runs at parallelism 1);
- staged N=1 and N=2: the processes `plan.dataset.prepare_stage_args(N)` lists (scan, dedup, tokenizer, pack,
  manifest; tokenizer and manifest by one worker), stage after stage, min(N, cores) at a time with the
  environment `forge run` gives them (`local.processes.workload_env`), as `local.staged.StagedProcesses`
  runs them (without its polling interval between stages). The three manifests must be identical.

Measured per process: wall time, CPU (user + system, from wait4), peak RSS (wait4's ru_maxrss: the worker's
own high-water mark), and every call it makes to the store with its bytes (each process runs under
`_store_meter.py`, which wraps the local store: the same calls go to S3 on Kubernetes). Throughput is input
MB and documents per wall second and per CPU-second; the ratios staged-2 / staged-1 and staged-2 / unsplit
are taken on the largest corpus (on a 2-core machine; the target is >= 1.7x).

datatrove (`_datatrove_minhash.py`) runs its MinHash dedup (signature -> buckets -> cluster -> filter with
LocalPipelineExecutor, the same bands x rows and shingles) with 1 and N workers on the largest corpus up to
100 MB (or the one `--compare-mb` names; at 1 GB it would double the run). It does less than Forge's pipeline (no normalisation, quality filters, exact
dedup, PII or tokenization), so two ratios are printed: Forge's whole preparation, and its scan + dedup
stages only, per CPU-second against datatrove's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "trainer_image"))
os.environ.setdefault("TQDM_DISABLE", "1")

from _synthetic_text import CorpusFiles, write_corpus_files
from forge_operator.local.processes import workload_env
from forge_operator.plan.dataset import prepare_stage_args
from forge_trainer.config.data import PREPARE_STAGES
from forge_trainer.config.store import MANIFEST_NAME
from forge_trainer.data.dedup import lsh_params

METER = Path(__file__).resolve().parent / "_store_meter.py"
MB = 1 << 20
Counts = dict[str, dict[str, list[int]]]
AREAS = ("source", "work", "output", "progress")
OPS = ("get", "put", "list", "head", "delete")


@dataclass
class Proc:
    """One finished process of a run."""

    stage: str
    worker: int
    wall: float
    cpu: float
    rss_mib: float
    store: Counts


@dataclass
class Run:
    """One preparation of one corpus: its processes, stage by stage, and what it produced."""

    label: str
    workers: int
    stages: dict[str, list[Proc]] = field(default_factory=dict)
    stage_wall: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    manifest_sha256: str = ""
    kept: int = 0
    tokens: int = 0

    @property
    def cpu(self) -> float:
        """CPU seconds of every process."""
        return sum(p.cpu for procs in self.stages.values() for p in procs)

    def stage_cpu(self, stage: str) -> float:
        """CPU seconds of the processes of `stage`."""
        return sum(p.cpu for p in self.stages.get(stage, []))

    def stage_rss(self, stage: str) -> float:
        """The largest peak RSS of one worker of `stage`, MiB."""
        return max((p.rss_mib for p in self.stages.get(stage, [])), default=0.0)

    def store(self, stage: str | None = None) -> Counts:
        """Store calls and bytes of `stage` (None: of the whole run), summed over its processes."""
        total: Counts = {}
        for name, procs in self.stages.items():
            if stage is not None and name != stage:
                continue
            for p in procs:
                for area, ops in p.store.items():
                    for op, (calls, size) in ops.items():
                        entry = total.setdefault(area, {}).setdefault(op, [0, 0])
                        entry[0] += calls
                        entry[1] += size
        return total


def _bytes(counts: Counts, area: str, op: str) -> int:
    return counts.get(area, {}).get(op, [0, 0])[1]


def _calls(counts: Counts, op: str) -> int:
    return sum(ops.get(op, [0, 0])[0] for ops in counts.values())


def stage_args(workers: int) -> list[list[list[str]]]:
    """The processes of a preparation stage by stage, as `forge run` lists them (`prepare_stage_args`); with
    `workers` 0 the unsplit one, with 1 the five stages by one worker (`forge run` runs the unsplit process at
    parallelism 1; this is what a split preparation costs when it does not split)."""
    if workers == 0:
        return [[[]]]
    if workers == 1:
        return [[["--stage", stage, "--worker", "0", "--workers", "1"]] for stage in PREPARE_STAGES]
    return prepare_stage_args(workers)


def run_preparation(label: str, workers: int, config: Path, output: Path, scratch: Path,
                    env: dict[str, str]) -> Run:
    """Prepare `config`'s corpus: unsplit (`workers` 0) or staged across `workers`, every process measured."""
    plan = stage_args(workers)
    slots = max(1, min(workers, os.cpu_count() or 1))
    run = Run(label, workers)
    log = scratch / f"{label.replace(' ', '-').replace('=', '')}.log"
    started = time.perf_counter()
    for procs_args in plan:
        stage = procs_args[0][procs_args[0].index("--stage") + 1] if procs_args[0] else "prepare"
        pending = list(enumerate(procs_args))
        running: dict[int, tuple[subprocess.Popen[bytes], int, float, Path]] = {}
        stage_start = time.perf_counter()
        while pending or running:
            while pending and len(running) < slots:
                worker, args = pending.pop(0)
                report = scratch / f"store-{uuid.uuid4().hex}.json"
                argv = [sys.executable, str(METER), str(report), str(output), "--",
                        "prepare", "--config", str(config), *args]
                with log.open("ab") as fh:
                    proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
                running[proc.pid] = (proc, worker, time.perf_counter(), report)
            pid, status, usage = os.wait4(-1, 0)
            if pid not in running:
                continue
            proc, worker, t0, report = running.pop(pid)
            proc.returncode = os.waitstatus_to_exitcode(status)
            if proc.returncode != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                raise SystemExit(f"{label}: {stage} worker {worker} failed with status {proc.returncode}:\n"
                                 + "\n".join(tail))
            store = json.loads(report.read_text()) if report.exists() else {}
            run.stages.setdefault(stage, []).append(Proc(stage, worker, time.perf_counter() - t0,
                                                         usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024,
                                                         store))
        run.stage_wall[stage] = time.perf_counter() - stage_start
    run.wall = time.perf_counter() - started
    manifest = (output / MANIFEST_NAME).read_bytes()
    run.manifest_sha256 = hashlib.sha256(manifest).hexdigest()
    counts = json.loads(manifest).get("counts", {})
    run.kept, run.tokens = int(counts.get("documentsKept", 0)), int(counts.get("tokens", 0))
    return run


def startup_cpu(env: dict[str, str]) -> float:
    """CPU seconds a worker process spends before it does any work (interpreter, imports): median of 3."""
    code = "import forge_trainer.cli, forge_trainer.data.stages, forge_trainer.data.prepare"
    times = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", code], env=env)
        _, _, usage = os.wait4(proc.pid, 0)
        proc.returncode = 0
        times.append(usage.ru_utime + usage.ru_stime)
    return sorted(times)[1]


def parse_cpu_per_gb(source: Path) -> float:
    """CPU seconds per GB to read and parse JSON Lines files line by line in Python (`json.loads`): a bound on
    what the tokenizer stage spends on reading every candidate of every worker, serially, to draw its sample
    (it decodes only the lines it takes)."""
    start, size = time.process_time(), 0
    for path in sorted(source.glob("*.jsonl")):
        size += path.stat().st_size
        with path.open("rb") as fh:
            for line in fh:
                json.loads(line)
    return (time.process_time() - start) / (size / 1e9)


def run_datatrove(source: Path, work: Path, workers: int) -> dict[str, Any]:
    """datatrove's MinHash pipeline over `source` with `workers` processes: per step (wall, CPU), and kept."""
    from _datatrove_minhash import quiet, run_minhash_pipeline

    quiet()
    bands, rows = lsh_params(0.8, 128)
    steps, kept = run_minhash_pipeline(source, work, bands, rows, workers)
    return {"steps": steps, "kept": kept, "wall": sum(w for w, _ in steps.values()),
            "cpu": sum(c for _, c in steps.values())}


# ---- printing ----------------------------------------------------------------------------------------------

def print_size(corpus: CorpusFiles, runs: list[Run]) -> None:
    """Throughput and the per-stage breakdown of the runs on one corpus."""
    mb, docs = corpus.bytes / 1e6, corpus.docs
    print(f"\n== corpus {mb:,.1f} MB: {docs:,} documents in {corpus.files} files ({corpus.exact:,} exact and "
          f"{corpus.near:,} near copies, {corpus.cross_file:,} of them in another file; "
          f"{corpus.low_quality:,} low quality)")
    print(f"{'run':<12} {'wall s':>8} {'CPU s':>8} {'MB/s':>7} {'docs/s':>8} {'MB/CPU-s':>9} {'docs/CPU-s':>10} "
          f"{'max RSS/worker':>14} {'kept':>8} {'tokens':>11}  manifest")
    for r in runs:
        rss = max(r.stage_rss(s) for s in r.stages)
        print(f"{r.label:<12} {r.wall:8.1f} {r.cpu:8.1f} {mb / r.wall:7.2f} {docs / r.wall:8.0f} {mb / r.cpu:9.2f} "
              f"{docs / r.cpu:10.0f} {rss:11.0f} MiB {r.kept:8,} {r.tokens:11,}  {r.manifest_sha256[:12]}")
    digests = {r.manifest_sha256 for r in runs}
    print(f"identical manifests: {len(digests) == 1}")
    staged = [r for r in runs if r.workers > 0]
    if not staged:
        return
    head = f"{'stage':<10}" + "".join(f" | {r.label + ' wall s':>15} {'CPU s':>7} {'RSS MiB':>7}" for r in staged)
    print(head + (" | wall N=1/N=2" if len(staged) == 2 else ""))
    for stage in PREPARE_STAGES:
        row = f"{stage:<10}"
        for r in staged:
            row += f" | {r.stage_wall.get(stage, 0):15.2f} {r.stage_cpu(stage):7.2f} {r.stage_rss(stage):7.0f}"
        if len(staged) == 2 and staged[1].stage_wall.get(stage):
            row += f" | {staged[0].stage_wall[stage] / staged[1].stage_wall[stage]:12.2f}x"
        print(row)
    for r in staged:
        print(f"{r.label}: {sum(len(ps) for ps in r.stages.values())} processes")


def print_store(corpus: CorpusFiles, runs: list[Run]) -> None:
    """Bytes moved through the store per input byte, per stage, and the requests."""
    print(f"\n== store traffic per input byte, {corpus.bytes / 1e6:,.1f} MB corpus (read = get, write = put; "
          "requests: get/put/list/head/delete)")
    print(f"{'run':<12} {'stage':<10} {'src read':>8} {'work rd':>8} {'work wr':>8} {'out rd':>8} {'out wr':>8} "
          f"{'progr r+w':>9} {'total':>7}   requests")
    for r in runs:
        for stage in [*r.stages, "all"]:
            c = r.store(None if stage == "all" else stage)
            cols = [_bytes(c, "source", "get"), _bytes(c, "work", "get"), _bytes(c, "work", "put"),
                    _bytes(c, "output", "get"), _bytes(c, "output", "put"),
                    _bytes(c, "progress", "get") + _bytes(c, "progress", "put")]
            total = sum(cols)
            reqs = "/".join(str(_calls(c, op)) for op in OPS)
            print(f"{r.label:<12} {stage:<10} " + " ".join(f"{v / corpus.bytes:8.3f}" for v in cols[:5])
                  + f" {cols[5] / corpus.bytes:9.4f} {total / corpus.bytes:7.3f}   {reqs}")


def print_rss(sizes: list[CorpusFiles], by_size: list[list[Run]]) -> None:
    """Peak RSS per worker, per run and stage, across corpus sizes."""
    print("\n== peak RSS per worker (MiB) as the corpus grows")
    print(f"{'run':<12} {'stage':<10}" + "".join(f" {c.bytes / 1e6:>9,.0f} MB" for c in sizes)
          + f" {'largest/smallest':>17}")
    for i, r0 in enumerate(by_size[0]):
        for stage in r0.stages:
            values = [runs[i].stage_rss(stage) for runs in by_size]
            print(f"{r0.label:<12} {stage:<10}" + "".join(f" {v:12.0f}" for v in values)
                  + f" {values[-1] / values[0]:16.2f}x")
    print(f"(input grows {sizes[-1].bytes / sizes[0].bytes:.0f}x)")


def print_compare(corpus: CorpusFiles, runs: list[Run], datatrove: dict[int, dict[str, Any]]) -> None:
    """Forge's staged preparation against datatrove's MinHash pipeline with the same worker counts."""
    docs = corpus.docs
    print(f"\n== against datatrove's MinHash dedup, {corpus.bytes / 1e6:,.1f} MB corpus, {docs:,} documents")
    for n, dt in sorted(datatrove.items()):
        steps = ", ".join(f"{k} {w:.1f}/{c:.1f}" for k, (w, c) in dt["steps"].items())
        print(f"datatrove N={n}: {dt['wall']:7.1f} s wall, {dt['cpu']:7.1f} CPU-s: {docs / dt['wall']:7.0f} docs/s, "
              f"{docs / dt['cpu']:6.0f} docs/CPU-s, kept {dt['kept']:,} (wall/CPU s per step: {steps})")
    for r in runs:
        if r.workers == 0 or r.workers not in datatrove:
            continue
        dt = datatrove[r.workers]
        sd_cpu = r.stage_cpu("scan") + r.stage_cpu("dedup")
        sd_wall = r.stage_wall["scan"] + r.stage_wall["dedup"]
        print(f"forge {r.label}: whole preparation {docs / r.wall:7.0f} docs/s, {docs / r.cpu:6.0f} docs/CPU-s; "
              f"scan + dedup {docs / sd_wall:7.0f} docs/s, {docs / sd_cpu:6.0f} docs/CPU-s")
        print(f"RATIO forge/datatrove docs/CPU-s at N={r.workers}: whole preparation "
              f"{dt['cpu'] / r.cpu:.2f}x, scan + dedup {dt['cpu'] / sd_cpu:.2f}x; "
              f"wall: whole {dt['wall'] / r.wall:.2f}x, scan + dedup {dt['wall'] / sd_wall:.2f}x")
    if 1 in datatrove and 2 in datatrove:
        print(f"datatrove wall N=2 / N=1: {datatrove[1]['wall'] / datatrove[2]['wall']:.2f}x")


def print_cost_model(sizes: list[CorpusFiles], by_size: list[list[Run]], startup: float, parse: float) -> None:
    """Per stage of the widest staged run on the largest corpus: CPU-seconds and wall seconds per GB of
    input, store bytes read and written per input byte, peak RSS per worker (and its growth from the smallest
    corpus): the figures the sizing section of the docs is built from."""
    corpus, run, small = sizes[-1], by_size[-1][-1], by_size[0][-1]
    gb = corpus.bytes / 1e9
    print(f"\n== cost model: {run.label}, {corpus.bytes / 1e6:,.0f} MB corpus (per GB of input; bytes per input "
          f"byte; a worker process starts with {startup:.2f} CPU-s of interpreter and imports)")
    print(f"{'stage':<10} {'workers':>7} {'CPU-s/GB':>9} {'wall s/GB':>9} {'store rd':>8} {'store wr':>8} "
          f"{'requests':>8} {'RSS/worker':>10} {'x smallest':>10}")
    rows = [*run.stages, "all"]
    for stage in rows:
        c = run.store(None if stage == "all" else stage)
        read = sum(ops.get("get", [0, 0])[1] for ops in c.values())
        wrote = sum(ops.get("put", [0, 0])[1] for ops in c.values())
        reqs = sum(_calls(c, op) for op in OPS)
        if stage == "all":
            cpu, wall, workers, rss, small_rss = run.cpu, run.wall, "", max(run.stage_rss(s) for s in run.stages), \
                max(small.stage_rss(s) for s in small.stages)
        else:
            cpu, wall, workers = run.stage_cpu(stage), run.stage_wall[stage], str(len(run.stages[stage]))
            rss, small_rss = run.stage_rss(stage), small.stage_rss(stage)
        print(f"{stage:<10} {workers:>7} {cpu / gb:9.0f} {wall / gb:9.0f} {read / corpus.bytes:8.3f} "
              f"{wrote / corpus.bytes:8.3f} {reqs:8d} {rss:7.0f} MiB {rss / small_rss:9.2f}x")
    read_tok = sum(ops.get("get", [0, 0])[1] for ops in run.store("tokenizer").values())
    reading = parse * read_tok / 1e9
    print(f"tokenizer stage: reading its {read_tok / 1e6:,.0f} MB of candidate lines costs at most {reading:.1f} "
          f"CPU-s (a JSON decode of every line, measured at {parse:.1f} CPU-s/GB; it decodes only the sampled "
          f"ones); the rest, at least {run.stage_cpu('tokenizer') - reading - startup:.1f} CPU-s, is training on at "
          "most 256 MiB of kept text")


def _json_run(r: Run) -> dict[str, Any]:
    return {"label": r.label, "workers": r.workers, "wall": r.wall, "cpu": r.cpu, "kept": r.kept,
            "tokens": r.tokens, "manifest_sha256": r.manifest_sha256,
            "stages": {s: {"wall": r.stage_wall[s], "cpu": r.stage_cpu(s), "rss_mib": r.stage_rss(s),
                           "procs": [[p.worker, p.wall, p.cpu, p.rss_mib] for p in procs], "store": r.store(s)}
                       for s, procs in r.stages.items()}}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="10 MB and 100 MB corpora (the default)")
    mode.add_argument("--full", action="store_true", help="10 MB, 100 MB and 1 GB corpora")
    mode.add_argument("--sizes", type=int, nargs="+", metavar="MB", help="corpus sizes in MB (MiB) instead")
    parser.add_argument("--workers", type=int, default=2, help="workers of the largest staged run (default 2)")
    parser.add_argument("--compare-mb", type=int, default=None,
                        help="corpus size (one of the sizes) datatrove runs on (default: the largest up to 100 MB)")
    parser.add_argument("--no-datatrove", action="store_true", help="skip datatrove")
    parser.add_argument("--tmp", type=Path, default=None, help="where the corpora go (default: the system's)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    args = parser.parse_args(argv)
    sizes_mb = args.sizes or ([10, 100, 1024] if args.full else [10, 100])
    compare_mb = args.compare_mb or max((s for s in sizes_mb if s <= 100), default=sizes_mb[0])
    if compare_mb not in sizes_mb:
        parser.error(f"--compare-mb {compare_mb} is not one of the sizes {sizes_mb}")
    if args.workers < 2:
        parser.error("--workers must be at least 2")
    env = workload_env(f"bench-data-scale-{uuid.uuid4().hex}", {"SOURCE_DATE_EPOCH": "1700000000"})
    print(f"load average at start {os.getloadavg()[0]:.2f} (other processes on the machine compete for the cores)")
    print(f"{os.cpu_count()} CPUs; sizes {', '.join(f'{s} MB' for s in sizes_mb)}; workers 1 and {args.workers}; "
          f"datatrove on {'nothing' if args.no_datatrove else f'{compare_mb} MB'}", flush=True)
    corpora: list[CorpusFiles] = []
    by_size: list[list[Run]] = []
    datatrove: dict[int, dict[str, Any]] = {}
    compare_index = sizes_mb.index(compare_mb)
    startup = startup_cpu(env)
    with tempfile.TemporaryDirectory(prefix="forge-bench-scale-", dir=args.tmp) as tmp_name:
        tmp = Path(tmp_name)
        for i, size in enumerate(sizes_mb):
            src = tmp / f"src-{size}"
            t0 = time.perf_counter()
            corpus = write_corpus_files(src, size * MB, seed=i)
            print(f"wrote {corpus.bytes / 1e6:,.1f} MB corpus in {time.perf_counter() - t0:.0f} s", flush=True)
            config = tmp / f"prepare-{size}.json"
            out = tmp / f"out-{size}"
            config.write_text(json.dumps({"source": str(src), "output": str(out), "tokenizer": {"vocabSize": 2048}}))
            runs = []
            for label, workers in (("unsplit", 0), ("staged N=1", 1), (f"staged N={args.workers}", args.workers)):
                shutil.rmtree(out, ignore_errors=True)
                runs.append(run_preparation(label, workers, config, out, tmp, env))
                print(f"  {label}: {runs[-1].wall:.1f} s", flush=True)
            shutil.rmtree(out, ignore_errors=True)
            if i == len(sizes_mb) - 1:
                parse = parse_cpu_per_gb(src)
            if i == compare_index and not args.no_datatrove:
                for n in (1, args.workers):
                    work = tmp / f"datatrove-{n}"
                    datatrove[n] = run_datatrove(src, work, n)
                    print(f"  datatrove N={n}: {datatrove[n]['wall']:.1f} s", flush=True)
                    shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
            corpora.append(corpus)
            by_size.append(runs)
    for corpus, runs in zip(corpora, by_size, strict=True):
        print_size(corpus, runs)
    print_store(corpora[-1], by_size[-1])
    print_rss(corpora, by_size)
    print_cost_model(corpora, by_size, startup, parse)
    if datatrove:
        print_compare(corpora[compare_index], by_size[compare_index], datatrove)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (1 minute)")
    big = by_size[-1]
    print(f"\nRATIO throughput (wall) staged N={args.workers} / staged N=1 = {big[1].wall / big[2].wall:.2f}x, "
          f"staged N={args.workers} / unsplit = {big[0].wall / big[2].wall:.2f}x "
          f"on the {corpora[-1].bytes / 1e6:,.0f} MB corpus (target >= 1.7x on 2 cores)")
    if args.json:
        args.json.write_text(json.dumps({
            "cpus": os.cpu_count(), "workers": args.workers, "startup_cpu": startup, "parse_cpu_per_gb": parse,
            "sizes": [{"bytes": c.bytes, "docs": c.docs, "files": c.files, "runs": [_json_run(r) for r in runs]}
                      for c, runs in zip(corpora, by_size, strict=True)],
            "datatrove": {"bytes": corpora[compare_index].bytes, "docs": corpora[compare_index].docs,
                          "runs": datatrove}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
