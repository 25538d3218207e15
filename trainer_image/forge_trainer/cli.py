"""`forge-trainer`: the workloads' entry point, the same in a pod and on one machine.

    forge-trainer prepare --config prepare.yaml   # ForgeDataset workload (PrepareConfig)
    forge-trainer prepare --config prepare.yaml --stage scan --worker 3 --workers 8   # one worker of one stage
    forge-trainer train   --config train.yaml     # ForgeTrainingRun workload (TrainConfig), under torchrun
    forge-trainer serve   --model URI [...]       # ForgeDeployment workload
    forge-trainer fetch   --uri URI --dest DIR    # download a model for another runtime (vLLM)
    forge-trainer rendezvous-store --port 29400   # a training run's c10d rendezvous store
    forge-trainer torchrun -- TORCHRUN-ARGS       # torchrun that leaves a rendezvous at once on SIGTERM

Bad configuration exits with status 2 and one line naming the field; a failed workload exits 1 with
one line giving the reason. Neither prints a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel

from forge_trainer.config import PrepareConfig, StoreConfig, TrainConfig
from forge_trainer.config_file import load_config
from forge_trainer.data.work import STAGES
from forge_trainer.errors import WorkloadError
from forge_trainer.store import StoreError

# Each command imports its workload when it runs: `serve` and `fetch` need not load the training
# stack (nor `train` the HTTP server), which keeps a pod's start-up short.


def _prepare(args: argparse.Namespace) -> None:
    config = load_config(args.config, PrepareConfig)
    if args.stage is None and args.workers == 1:
        from forge_trainer.data.prepare import run_prepare

        run_prepare(config)
        return
    from forge_trainer.data.stages import run_prepare_parallel, run_stage, run_worker

    if args.stage is None:
        run_prepare_parallel(config, args.workers)
    elif args.stage == "all":
        run_worker(config, args.worker, args.workers, poll_seconds=args.poll_seconds)
    else:
        run_stage(config, args.stage, args.worker, args.workers)


def _train(args: argparse.Namespace) -> None:
    from forge_trainer.train.entry import run_training

    run_training(load_config(args.config, TrainConfig), args.config)


def _serve(args: argparse.Namespace) -> None:
    from forge_trainer.serve.server import main as serve_main

    serve_main(args.serve_args)


def _fetch(args: argparse.Namespace) -> None:
    from forge_trainer.model.files import ModelFilesError
    from forge_trainer.serve.model_files import fetch_model_dir, verify_digest

    dest: Path = args.dest
    try:
        with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
            store = StoreConfig(endpoint=args.store_endpoint, secure=not args.store_insecure, region=args.store_region)
            path = fetch_model_dir(args.uri, Path(tmp), store)
            if not path.is_relative_to(tmp):  # a local directory is the model itself: copy it, never move it
                path = Path(shutil.copytree(path, Path(tmp) / "model"))
            verify_digest(args.uri, path, args.digest)
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(path, dest)
    except (StoreError, ModelFilesError) as exc:
        raise WorkloadError(str(exc)) from exc


def _rendezvous_store(args: argparse.Namespace) -> None:
    from forge_trainer.train.rendezvous import serve_store

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve_store(args.port, host=args.host)


def _torchrun(args: argparse.Namespace) -> None:
    from forge_trainer.train.rendezvous import run_torchrun

    code = run_torchrun(args.torchrun_args)
    if code:
        raise SystemExit(code)


def _schema(args: argparse.Namespace) -> None:
    models: dict[str, type[BaseModel]] = {"prepare": PrepareConfig, "train": TrainConfig}
    model = models[args.which]
    json.dump(model.model_json_schema(by_alias=True), sys.stdout, indent=2)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="forge-trainer", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="turn a raw corpus into clean, tokenized shards")
    p.add_argument("--config", type=Path, required=True, help="PrepareConfig as YAML or JSON")
    p.add_argument("--stage", choices=[*STAGES, "all"],
                   help="run one stage of a preparation split across --workers, or `all` of this worker's stages, "
                        "each once the stage before is committed (default: the whole preparation here)")
    p.add_argument("--worker", type=int, default=0, help="this worker's index, 0..workers-1 (with --stage)")
    p.add_argument("--workers", type=int, default=1, help="workers the preparation is split across (default 1)")
    p.add_argument("--poll-seconds", type=float, default=5.0,
                   help="with --stage all: how often to look whether the other workers committed (default 5)")
    p.set_defaults(func=_prepare)
    t = sub.add_parser("train", help="run one training stage (pretrain, sft, rl)")
    t.add_argument("--config", type=Path, required=True, help="TrainConfig as YAML or JSON")
    t.set_defaults(func=_train)
    # the server parses its own options (forge-trainer serve --help lists them)
    s = sub.add_parser("serve", help="serve a trained model over an OpenAI-compatible HTTP API", add_help=False)
    s.set_defaults(func=_serve)
    f = sub.add_parser("fetch", help="download a model directory from the store and verify its digest")
    f.add_argument("--uri", required=True, help="model directory URI (s3://... or a local path)")
    f.add_argument("--dest", type=Path, required=True, help="local directory to create")
    f.add_argument("--digest", help="expected digest (sha256:<hex>); a mismatch fails")
    f.add_argument("--store-endpoint", help="S3 endpoint host[:port] (default: $FORGE_S3_ENDPOINT)")
    f.add_argument("--store-insecure", action="store_true", help="talk plain HTTP to the S3 endpoint")
    f.add_argument("--store-region", help="S3 region, if the endpoint needs one")
    f.set_defaults(func=_fetch)
    r = sub.add_parser("rendezvous-store", help="serve a training run's c10d rendezvous store until SIGTERM")
    r.add_argument("--port", type=int, default=29400, help="TCP port to listen on (default 29400)")
    r.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every address)")
    r.set_defaults(func=_rendezvous_store)
    # everything after `--` is torchrun's own command line
    tr = sub.add_parser("torchrun", help="torchrun, leaving the rendezvous at once on SIGTERM")
    tr.add_argument("torchrun_args", nargs="*", metavar="-- TORCHRUN-ARGS")
    tr.set_defaults(func=_torchrun)
    c = sub.add_parser("schema", help="print the JSON schema of a workload config")
    c.add_argument("which", choices=["prepare", "train"])
    c.set_defaults(func=_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the process exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "serve":
        args.serve_args = [a for a in unknown if a != "--"]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        args.func(args)
    except WorkloadError as exc:
        print(f"forge-trainer {args.command}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"forge-trainer {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
