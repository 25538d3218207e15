"""`forge`: run the operator, generate CRDs, validate manifests.

    forge operator [--namespace NS ...]   run the operator against $KUBECONFIG (or in-cluster)
    forge crds [--check]                  regenerate crds/ from the API models (or check for drift)
    forge validate PATH...                check Forge manifests against the API models
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_CRDS = Path(__file__).resolve().parents[2] / "crds"
CHART_CRDS = Path(__file__).resolve().parents[2] / "helm" / "forge-operator" / "files" / "crds"


def _operator(args: argparse.Namespace) -> int:
    import kopf

    from forge_operator import handlers  # noqa: F401  (registers handlers)
    from forge_operator.kube.client import load_config

    load_config()
    namespaces = args.namespace or []
    kopf.configure(verbose=args.verbose)
    if args.standalone:
        kopf.run(standalone=True, namespaces=namespaces, clusterwide=not namespaces,
                 liveness_endpoint=args.liveness)
    else:
        kopf.run(namespaces=namespaces, clusterwide=not namespaces, liveness_endpoint=args.liveness,
                 peering_name=args.peering, priority=args.priority)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; return the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
