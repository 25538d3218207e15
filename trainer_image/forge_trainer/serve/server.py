"""`forge-trainer serve`: the builtin runtime of a ForgeDeployment.

    forge-trainer serve --model URI --model-name NAME [--model-digest sha256:...] [--adapter URI]
                        [--host 0.0.0.0] [--port 8000] [--max-batch-size 8] [--max-prefill-tokens N]
                        [--store-endpoint HOST:PORT] [--store-insecure]
                        [--api-key KEY] [--metrics-api-key KEY] [--max-body-bytes N] [--max-waiting N]

S3 credentials come from FORGE_S3_ACCESS_KEY / FORGE_S3_SECRET_KEY (and the endpoint from
FORGE_S3_ENDPOINT unless --store-endpoint is given). They are needed only while the model is fetched
and are removed from the process environment as soon as it is loaded (no child, no later
`os.environ` read sees them); the initial environment block of the process (/proc/<pid>/environ)
cannot be changed from inside, so a pod serves from a directory its init container filled and
the server never gets the credentials at all.

The API key comes from --api-key or FORGE_API_KEY (preferred: a command line is visible to every
process on the node). With a key, every request but /healthz and /readyz needs
`Authorization: Bearer <key>`; /metrics needs --metrics-api-key (FORGE_METRICS_API_KEY) when that is
set, and is open otherwise (give it the same key to protect it with the API key).

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
from forge_trainer.serve.app import DEFAULT_MAX_BODY_BYTES, ServeLimits, ServingState, build_app
from forge_trainer.serve.loading import LoadError, load_model
from forge_trainer.serve.metrics import ServeMetrics
from forge_trainer.store import ACCESS_KEY_ENV, SECRET_KEY_ENV

log = logging.getLogger(__name__)

API_KEY_ENV = "FORGE_API_KEY"
METRICS_API_KEY_ENV = "FORGE_METRICS_API_KEY"

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
    p.add_argument("--api-key", help=f"Bearer key clients must send (default: ${API_KEY_ENV}; unset: no key)")
    p.add_argument("--metrics-api-key",
                   help=f"Bearer key /metrics asks for (default: ${METRICS_API_KEY_ENV}; unset: /metrics is open)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body; a longer one gets 413 (default: %(default)s)")
    p.add_argument("--max-waiting", type=int,
                   help="most sequences waiting for a place in the batch; more get 429 (default: 4 x batch size)")
    return p


def _key(given: str | None, env: str, option: str) -> str | None:
    """An API key from its option or environment variable, which is then removed from the environment;
    a key that is set but empty is an error, not an open server."""
    from_env = os.environ.pop(env, None)  # no child process inherits it
    value = from_env if given is None else given
    if value is not None and not value.strip():
        raise WorkloadError(f"{option} / {env} is set but empty; unset it to serve without a key")
    return value.strip() if value is not None else None


def limits_from_args(args: argparse.Namespace) -> ServeLimits:
    """The serving limits and keys the options ask for; raises WorkloadError naming a bad option."""
    if args.max_body_bytes < 1:
        raise WorkloadError(f"--max-body-bytes must be at least 1, got {args.max_body_bytes}")
    if args.max_waiting is not None and args.max_waiting < 0:
        raise WorkloadError(f"--max-waiting must be at least 0, got {args.max_waiting}")
    return ServeLimits(max_body_bytes=args.max_body_bytes, max_waiting=args.max_waiting,
                       api_key=_key(args.api_key, API_KEY_ENV, "--api-key"),
                       metrics_api_key=_key(args.metrics_api_key, METRICS_API_KEY_ENV, "--metrics-api-key"))


def forget_store_credentials() -> None:
    """Drop the store credentials from the environment once nothing needs to fetch any more."""
    for name in (ACCESS_KEY_ENV, SECRET_KEY_ENV):
        os.environ.pop(name, None)


def load_and_serve(args: argparse.Namespace, state: ServingState, metrics: ServeMetrics, store: StoreConfig) -> None:
    """Fetch and load the model the options name, forget the store credentials, start the engine;
    raises LoadError."""
    try:
        with tempfile.TemporaryDirectory(prefix="forge-serve-") as tmp:
            loaded = load_model(args.model, cache_dir=args.cache_dir or Path(tmp), digest=args.model_digest,
                                adapter_uri=args.adapter, adapter_digest=args.adapter_digest,
                                device=args.device, dtype=_DTYPES.get(args.dtype or ""), store=store)
    finally:
        forget_store_credentials()
    state.serve(loaded, args.max_batch_size, metrics, max_prefill_tokens=args.max_prefill_tokens)


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
    limits = limits_from_args(args)
    logging.basicConfig(level=os.environ.get("FORGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    on_cpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu"
    threads = args.torch_threads or (default_cpu_threads() if on_cpu else None)
    if threads:
        torch.set_num_threads(threads)
    store = StoreConfig(endpoint=args.store_endpoint, secure=not args.store_insecure, region=args.store_region)
    metrics = ServeMetrics()
    state = ServingState(model_name=args.model_name)
    server = uvicorn.Server(uvicorn.Config(build_app(state, metrics, limits), host=args.host, port=args.port,
                                           lifespan="off", access_log=False, log_config=None))
    failure: list[str] = []

    def load() -> None:
        try:
            load_and_serve(args, state, metrics, store)
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
