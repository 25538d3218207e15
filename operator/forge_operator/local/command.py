"""The `forge run` command: load and order the manifests (nothing runs if any is malformed), run
them, serve the deployment until Ctrl-C, and end every process it started on the way out."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

from forge_operator.api.deployment import ForgeDeployment
from forge_operator.local.display import make_display
from forge_operator.local.order import order_manifests
from forge_operator.local.runner import LocalRunner, RunFailed, RunOptions
from forge_operator.manifests import ManifestError, load_manifests


def _sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_local(paths: list[Path], options: RunOptions, plain: bool | None = None) -> int:
    """Run the manifests under `paths` on this machine; the exit status (130 after Ctrl-C)."""
    try:
        ordered = order_manifests(load_manifests(paths))
    except ManifestError as exc:
        print(f"forge run: nothing was run; fix the manifests first:\n{exc}", file=sys.stderr)
        return 2
    if not ordered:
        print(f"forge run: no Forge resources in {', '.join(map(str, paths))}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _sigterm)
    display = make_display(plain)
    runner = LocalRunner(options, display)
    deployments = [m for m in ordered if isinstance(m.resource, ForgeDeployment)]
    code = 0
    try:
        runner.run(ordered)
        if runner.server is not None and deployments:
            runner.serve_forever(deployments[-1])
    except RunFailed as exc:
        display.close()
        print(f"forge run: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        display.close()
        print("forge run: interrupted; every workload was stopped. Run the same command again to resume.",
              file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the cleanup short
        runner.stop()
        for m in deployments:
            runner.mark_stopped(m)
        display.close()
        signal.signal(signal.SIGTERM, previous)
    if code == 0:
        print(f"forge run: done; status in {options.root}/ (forge get, forge describe NAME)")
    return code
