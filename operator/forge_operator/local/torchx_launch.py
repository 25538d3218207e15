"""Run a training plan's TorchX AppDef — the one the operator renders for Kubernetes — with TorchX's
local scheduler (`local_cwd`), and observe it the way the operator observes a Job."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from torchx import specs

from forge_operator.local.processes import TOKEN_ENV, end_tree
from forge_operator.status.job import JobObservation

SCHEDULER = "local_cwd"


class LocalApp:
    """One AppDef running under TorchX's local scheduler; its replicas log under `log_dir`."""

    def __init__(self, app: specs.AppDef, token: str, log_dir: Path) -> None:
        from torchx.runner import get_runner

        self.token = token
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        # TorchX's local scheduler installs SIGINT/SIGTERM handlers that raise its own exception; the
        # runner keeps its own (Ctrl-C is a KeyboardInterrupt that ends every workload, then exits 130)
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        self._runner: Any = get_runner()
        # the local scheduler starts replicas with a copy of this process's environment: the token tags
        # the whole tree, and PATH leads to this installation's torchrun
        os.environ[TOKEN_ENV] = token
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        try:
            self.handle: str = self._runner.run(app, scheduler=SCHEDULER, cfg={"log_dir": str(log_dir)})
        finally:
            os.environ.pop(TOKEN_ENV, None)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def observe(self) -> JobObservation:
        """The app's state as a Job observation (running, complete, or failed with a reason)."""
        status = self._runner.status(self.handle)
        state = status.state if status is not None else specs.AppState.UNKNOWN
        if state == specs.AppState.SUCCEEDED:
            return JobObservation(succeeded=1, complete=True)
        if state in (specs.AppState.FAILED, specs.AppState.CANCELLED, specs.AppState.UNKNOWN):
            return JobObservation(failed=1, failed_final=True, message=f"torchx app {state.name.lower()}")
        return JobObservation(active=1)

    def stop(self) -> None:
        """End the app's whole process tree (SIGTERM first: the trainer checkpoints on it)."""
        try:
            self._runner.cancel(self.handle)
        finally:
            end_tree(self.token)
            self._runner.close()

    def close(self) -> None:
        """Release the runner once the app ended."""
        end_tree(self.token, grace=5)
        self._runner.close()

    def stderr_files(self) -> list[Path]:
        """The replicas' stderr logs."""
        return sorted(self.log_dir.rglob("stderr.log"))
