"""`forge`: run the operator, generate CRDs, validate manifests.

    forge operator [--namespace NS ...]   run the operator against $KUBECONFIG (or in-cluster)
    forge crds [--check]                  regenerate crds/ from the API models (or check for drift)
    forge validate PATH...                check Forge manifests against the API models
    forge render PATH... [-n NS]          print every Kubernetes object the operator would apply for them
    forge run PATH... [--store s3://B]    run the manifests' workloads on this machine (no cluster)
    forge get [-o wide]                   the resources `forge run` ran, like `kubectl get forge`
    forge describe [KIND/]NAME            one resource's phase, counts and conditions
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_CRDS = Path(__file__).resolve().parents[2] / "crds"
CHART_CRDS = Path(__file__).resolve().parents[2] / "helm" / "forge-operator" / "files" / "crds"


def _operator(args: argparse.Namespace) -> int:
    # Kopf imports the `kubernetes` client library whenever it is installed, only for typing shims the
    # operator never uses: ~45 MB of generated models per replica. The operator talks to the API through
    # Kopf's aiohttp session and kube/client.py, so keep the library out of this process.
    for unused in ("kubernetes", "kubernetes_asyncio", "pykube"):
        sys.modules.setdefault(unused, None)  # type: ignore[arg-type]
    import kopf

    from forge_operator import handlers  # noqa: F401  (registers handlers)
    from forge_operator.kube.client import KubeError, load_config
    from forge_operator.settings import OperatorSettings

    try:
        load_config()
    except KubeError as exc:
        print(f"forge operator: {exc}", file=sys.stderr)
        return 2
    namespaces = args.namespace or []
    kopf.configure(verbose=args.verbose)
    settings = OperatorSettings.from_env()
    if not settings.has_store_peer:
        logging.getLogger("forge_operator").warning(
            "no store peer is configured (chart values networkPolicy.store.*): every workload's NetworkPolicy "
            "denies egress to the object store, so workloads cannot reach it")
    memo = kopf.Memo(watch_namespaces=namespaces)  # which KopfPeerings say who leads (handlers/replica.py)
    if args.standalone:
        kopf.run(standalone=True, namespaces=namespaces, clusterwide=not namespaces,
                 liveness_endpoint=args.liveness, memo=memo)
    else:
        kopf.run(namespaces=namespaces, clusterwide=not namespaces, liveness_endpoint=args.liveness,
                 peering_name=args.peering, priority=args.priority, memo=memo)
    return 0


def _crds(args: argparse.Namespace) -> int:
    from forge_operator import crdgen

    # the default run also keeps the Helm chart's copies (helm/forge-operator/files/crds/) in step
    outs = [Path(args.out)] + ([CHART_CRDS] if Path(args.out) == REPO_CRDS and CHART_CRDS.parent.is_dir() else [])
    if args.check:
        stale = [p for out in outs for p in crdgen.drift(out)]
        if stale:
            print("CRDs differ from the API models; run `forge crds`:\n  " +
                  "\n  ".join(str(p) for p in stale), file=sys.stderr)
            return 1
        print(", ".join(map(str, outs)) + ": up to date")
        return 0
    for out in outs:
        changed = crdgen.write(out)
        print(f"{out}: {len(changed)} file(s) written" if changed else f"{out}: up to date")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from forge_operator.manifests import ManifestError, load_manifests

    try:
        loaded = load_manifests([Path(p) for p in args.paths])
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return 1
    for m in loaded:
        print(f"ok  {m.path}: {m.kind} {m.name}")
    return 0


def _render(args: argparse.Namespace) -> int:
    import yaml
    from pydantic import ValidationError

    from forge_operator.manifests import ManifestError, load_manifests
    from forge_operator.preview import render_manifests
    from forge_operator.settings import OperatorSettings

    try:
        settings = OperatorSettings.from_env()
    except ValidationError as exc:
        print(f"forge render: the operator settings (FORGE_* environment) are invalid:\n{exc}", file=sys.stderr)
        return 2
    try:
        loaded = load_manifests([Path(p) for p in args.paths])
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return 1
    objects, problems = render_manifests(loaded, args.namespace, settings)
    if objects:
        sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False))
    if not settings.has_store_peer:
        print("forge render: no store peer is configured (FORGE_STORE_PEER_CIDRS, FORGE_STORE_PEER_NAMESPACE_LABELS, "
              "FORGE_STORE_PEER_POD_LABELS): the NetworkPolicies grant no egress to the object store",
              file=sys.stderr)
    for problem in problems:
        print(f"forge render: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _run(args: argparse.Namespace) -> int:
    from forge_operator.local.command import run_local
    from forge_operator.local.runner import RunOptions

    if args.store and not args.store.startswith("s3://"):
        print(f"forge run: --store {args.store!r}: use s3://bucket (credentials in FORGE_S3_ACCESS_KEY, "
              "FORGE_S3_SECRET_KEY, endpoint in FORGE_S3_ENDPOINT); leave it out for the local directory",
              file=sys.stderr)
        return 2
    options = RunOptions(root=Path(args.state_dir), namespace=args.namespace, store=args.store or None,
                         serve=not args.no_serve, host=args.host, port=args.port)
    return run_local([Path(p) for p in args.paths], options, plain=True if args.plain else None)


def _get(args: argparse.Namespace) -> int:
    from forge_operator.local.listing import render_get
    from forge_operator.local.state import saved_records

    records = saved_records(Path(args.state_dir))
    if not records:
        print(f"No resources found in {args.state_dir}/ (run `forge run PATH` first).", file=sys.stderr)
        return 1
    print(render_get(records, wide=args.output == "wide"))
    return 0


def _describe(args: argparse.Namespace) -> int:
    from forge_operator.local.listing import find_record, render_describe
    from forge_operator.local.state import saved_records

    found = find_record(saved_records(Path(args.state_dir)), args.name)
    if not found:
        print(f"forge describe: {args.name} not found in {args.state_dir}/", file=sys.stderr)
        return 1
    print("\n\n".join(render_describe(r) for r in found))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="forge", description="Forge: a private model foundry on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)
    op = sub.add_parser("operator", help="run the operator against $KUBECONFIG or in-cluster")
    op.add_argument("--namespace", "-n", action="append", help="watch only this namespace (repeatable)")
    op.add_argument("--standalone", action="store_true", help="no peering / leader election")
    op.add_argument("--peering", default="forge-operator", help="Kopf peering object for leader election")
    op.add_argument("--priority", type=int, default=0, help="peering priority (highest active replica leads)")
    op.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint URL")
    op.add_argument("--verbose", action="store_true")
    op.set_defaults(func=_operator)
    crds = sub.add_parser("crds", help="generate crds/ from the API models")
    crds.add_argument("--out", default=str(REPO_CRDS), help="output directory (default: the repo's crds/)")
    crds.add_argument("--check", action="store_true", help="fail if the files differ from the models")
    crds.set_defaults(func=_crds)
    val = sub.add_parser("validate", help="check Forge manifests against the API models")
    val.add_argument("paths", nargs="+", help="YAML files or directories")
    val.set_defaults(func=_validate)
    ren = sub.add_parser("render", help="print every Kubernetes object the operator would apply for the manifests "
                                        "(references taken as Ready, placeholder digests; settings from FORGE_*)")
    ren.add_argument("paths", nargs="+", help="YAML files or directories")
    ren.add_argument("--namespace", "-n", default="default",
                     help="namespace of the resources that do not name one (default: default)")
    ren.set_defaults(func=_render)
    run = sub.add_parser("run", help="run the manifests' workloads on this machine, in reference order")
    run.add_argument("paths", nargs="+", help="YAML files or directories (e.g. examples/quickstart/)")
    run.add_argument("--store", default="", help="s3://bucket for artifacts in MinIO/S3 (default: the state dir)")
    run.add_argument("--state-dir", default=".forge", help="status and local artifacts (default: .forge)")
    run.add_argument("--namespace", "-n", default="default", help="namespace the resources belong to")
    run.add_argument("--host", default="127.0.0.1", help="address the deployment listens on")
    run.add_argument("--port", type=int, default=8000, help="port of the deployment (0: any free port)")
    run.add_argument("--no-serve", action="store_true", help="stop after training: do not start deployments")
    run.add_argument("--plain", action="store_true", help="log lines instead of the live display")
    run.set_defaults(func=_run)
    get = sub.add_parser("get", help="list what `forge run` ran, like `kubectl get forge`")
    get.add_argument("--state-dir", default=".forge", help="where `forge run` keeps status (default: .forge)")
    get.add_argument("--output", "-o", choices=["wide"], help="wide: more columns")
    get.set_defaults(func=_get)
    desc = sub.add_parser("describe", help="one resource's phase, counts and conditions")
    desc.add_argument("name", help="NAME or KIND/NAME (e.g. ftr/base)")
    desc.add_argument("--state-dir", default=".forge", help="where `forge run` keeps status (default: .forge)")
    desc.set_defaults(func=_describe)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
