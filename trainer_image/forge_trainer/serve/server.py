"""`forge-trainer serve`: the builtin runtime of a ForgeDeployment.

    forge-trainer serve --model URI --model-name NAME [--model-digest sha256:...] [--adapter URI]
                        [--host 0.0.0.0] [--port 8000] [--max-batch-size 8] [--max-prefill-tokens N]
                        [--store-endpoint HOST:PORT] [--store-insecure]

S3 credentials come from FORGE_S3_ACCESS_KEY / FORGE_S3_SECRET_KEY (and the endpoint from
FORGE_S3_ENDPOINT unless --store-endpoint is given).

The server answers /healthz at once and loads the model in the background; /readyz turns 200 once
the model is loaded and verified. A model that cannot be fetched, loaded or verified stops the
process with status 1 and one line naming the URI.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import threading
from pathlib import Path

import torch
import uvicorn

from forge_trainer.config import StoreConfig
from forge_trainer.errors import WorkloadError
from forge_trainer.serve.app import ServingState, build_app
from forge_trainer.serve.loading import LoadError, load_model
from forge_trainer.serve.metrics import ServeMetrics

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> argparse.ArgumentParser:
    """The serve command's options."""
    p = argparse.ArgumentParser(prog="forge-trainer serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory: s3://bucket/prefix or a local path")
    p.add_argument("--model-name", required=True, help="the name clients pass as `model`")
    p.add_argument("--model-digest", help="expected digest of the model directory (sha256:<hex>)")
    p.add_argument("--adapter", help="LoRA adapter directory (PEFT format) merged into the model at load")
    p.add_argument("--adapter-digest", help="expected digest of the adapter directory (sha256:<hex>)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--max-batch-size", type=int, default=8, help="most sequences decoded together")
    p.add_argument("--max-prefill-tokens", type=int,
                   help="most prompt tokens prefilled in one forward pass (default: 128 on CPU, 8192 on GPU)")
    p.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=sorted(_DTYPES), help="weights dtype (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--torch-threads", type=int,
                   help="CPU threads of torch's operators (default on CPU: the cores available less one)")
    p.add_argument("--store-endpoint", help="S3 endpoint host[:port] (default: $FORGE_S3_ENDPOINT)")
    p.add_argument("--store-insecure", action="store_true", help="talk plain HTTP to the S3 endpoint")
    p.add_argument("--store-region", help="S3 region, if the endpoint needs one")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="where files fetched from the object store go (default: a temporary directory)")
    return p


def available_cpus(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPUs this process may use: the cores it may run on, capped by its cgroup's CPU quota (a pod's CPU
    limit), which the core count does not show."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, math.ceil(int(quota) / int(period))))


def default_cpu_threads() -> int:
    """Torch threads when generating on the CPU: every available CPU but one, which the HTTP event loop
    needs. With a spinning OpenMP team on every CPU, the event loop thread gets descheduled while it
    holds the GIL and generation stalls behind it (measured: 15x slower on 2 cores)."""
    return max(1, available_cpus() - 1)


def main(argv: list[str]) -> None:
    """Run the server until it is stopped; raises WorkloadError if the model cannot be served."""
    if argv[:1] == ["--"]:  # `forge-trainer serve -- --model ...`: the separator reaches us
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if args.max_batch_size < 1:
        raise WorkloadError(f"--max-batch-size must be at least 1, got {args.max_batch_size}")
    if args.max_prefill_tokens is not None and args.max_prefill_tokens < 1:
        raise WorkloadError(f"--max-prefill-tokens must be at least 1, got {args.max_prefill_tokens}")
    logging.basicConfig(level=os.environ.get("FORGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_cpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    threads = args.torch_threads or (default_cpu_threads() if on_cpu else None)
    if threads:
        torch.set_num_threads(threads)
    store = StoreConfig(endpoint=args.store_endpoint, secure=not args.store_insecure, region=args.store_region)
    metrics = ServeMetrics()
    state = ServingState(model_name=args.model_name)
    server = uvicorn.Server(uvicorn.Config(build_app(state, metrics), host=args.host, port=args.port,
                                           lifespan="off", access_log=False, log_config=None))
    failure: list[str] = []

    def load() -> None:
        try:
            with tempfile.TemporaryDirectory(prefix="forge-serve-") as tmp:
                loaded = load_model(args.model, cache_dir=args.cache_dir or Path(tmp), digest=args.model_digest,
                                    adapter_uri=args.adapter, adapter_digest=args.adapter_digest,
                                    device=args.device, dtype=_DTYPES.get(args.dtype or ""), store=store)
            state.serve(loaded, args.max_batch_size, metrics, max_prefill_tokens=args.max_prefill_tokens)
            log.info("serving %s as %r on %s:%d", args.model, args.model_name, args.host, args.port)
        except LoadError as exc:
            failure.append(str(exc))
            server.should_exit = True

    threading.Thread(target=load, name="forge-model-loader", daemon=True).start()
    server.run()
    if state.engine is not None:
        state.engine.stop()
    if failure:
        raise WorkloadError(failure[0])
