"""Loading an open-weights base sharded: peak host memory per worker vs the whole model, and load time vs
transformers' `from_pretrained`.

    .venv/bin/python benchmarks/bench_load_base.py            # 1.1B Llama (2.2 GB bf16 on disk, 4.4 GB fp32)
    .venv/bin/python benchmarks/bench_load_base.py --quick    # ~0.3B, for a busy machine

A random Llama checkpoint is written by transformers itself (`save_pretrained(max_shard_size=...)`, bf16,
sharded with an index). Then, each in a fresh process (multiprocessing spawn):
  - ours: 2 workers on gloo build the model on the meta device, shard it with FSDP2 and read only their
    rows of each tensor (`wrap_model(..., load=load_weights)`), in fp32 as training holds it;
  - reference: `AutoModelForCausalLM.from_pretrained(dtype=float32)` in one process.
Peak RSS is the kernel's VmHWM of each process (file pages read through safetensors' memory map count).
Prints each worker's peak and its ratio to the whole model's fp32 bytes (target <= 0.6 at 2 workers), the
peak with nothing loaded yet (torch and the process group), and the load times.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES: dict[str, dict[str, Any]] = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),  # TinyLlama's shape
    "quick": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                  num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048),
}


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def write_checkpoint(directory: Path, size: str) -> int:
    """A random Llama of `size` saved by transformers (bf16, shards of a fifth of it); returns its parameter
    count."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SIZES[size])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(directory, max_shard_size=f"{params * 2 // 5 // 10**6}MB")
    return int(params)


def _ours(rank: int, rendezvous: str, directory: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (imported before `idle` is read)

        from forge_trainer.model.hf_import import load_weights, read_config
        from forge_trainer.train.parallel import build_model, wrap_model
        from forge_trainer.train.runtime import Runtime

        idle = _status_mib("VmHWM")
        start = time.perf_counter()
        _, args = read_config(Path(directory))
        runtime = Runtime(rank, 2, rank, torch.device("cpu"), True)
        model = wrap_model(build_model(args), runtime, load=lambda m: load_weights(m, Path(directory)))
        dist.barrier()
        seconds = time.perf_counter() - start
        local = sum(p.to_local().numel() * p.element_size() for p in model.parameters())  # type: ignore[attr-defined]
        Path(f"{out}.{rank}").write_text(json.dumps({"idle_mib": idle, "peak_mib": _status_mib("VmHWM"),
                                                     "seconds": seconds, "local_mib": local / 2**20}))
    finally:
        dist.destroy_process_group()


def _reference(rank: int, directory: str, out: str) -> None:
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM

    idle = _status_mib("VmHWM")
    start = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    seconds = time.perf_counter() - start
    Path(out).write_text(json.dumps({"idle_mib": idle, "peak_mib": _status_mib("VmHWM"), "seconds": seconds}))


def main() -> None:
    """Write the checkpoint, load it both ways, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~0.3B model instead of ~1.1B")
    parser.add_argument("--dir", type=Path, help="reuse (or write) the checkpoint here")
    opts = parser.parse_args()
    size = "quick" if opts.quick else "1b"
    with tempfile.TemporaryDirectory(prefix="forge-bench-load-") as tmp:
        directory = opts.dir or Path(tmp) / "base"
        if not (directory / "config.json").exists():
            start = time.perf_counter()
            params = write_checkpoint(directory, size)
            print(f"wrote {params / 1e9:.2f}B parameters in {time.perf_counter() - start:.0f} s")
        on_disk = sum(p.stat().st_size for p in directory.glob("*.safetensors"))
        shards = len(list(directory.glob("*.safetensors")))
        params = on_disk // 2
        fp32_mib = params * 4 / 2**20
        print(f"checkpoint: {shards} safetensors files, {on_disk / 2**20:.0f} MiB bf16; whole model in fp32: "
              f"{fp32_mib:.0f} MiB")
        out = str(Path(tmp) / "ours.json")
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        mp.spawn(_ours, args=(str(Path(tmp) / "rdzv"), str(directory), out), nprocs=2, join=True)
        ref_out = str(Path(tmp) / "ref.json")
        mp.spawn(_reference, args=(str(directory), ref_out), nprocs=1, join=True)
        ref = json.loads(Path(ref_out).read_text())
        for rank in range(2):
            r = json.loads(Path(f"{out}.{rank}").read_text())
            print(f"ours rank {rank}: peak RSS {r['peak_mib']:.0f} MiB = {r['peak_mib'] / fp32_mib:.2f}x the whole "
                  f"fp32 model (target <= 0.6); before loading {r['idle_mib']:.0f} MiB; its shard "
                  f"{r['local_mib']:.0f} MiB; load {r['seconds']:.1f} s")
        r0 = json.loads(Path(f"{out}.0").read_text())
        print(f"from_pretrained (1 process, fp32): peak RSS {ref['peak_mib']:.0f} MiB = "
              f"{ref['peak_mib'] / fp32_mib:.2f}x; load {ref['seconds']:.1f} s")
        print(f"ratio ours/from_pretrained: peak RSS {r0['peak_mib'] / ref['peak_mib']:.2f}, "
              f"load time {r0['seconds'] / ref['seconds']:.2f}")


if __name__ == "__main__":
    main()
