"""No child outlives `forge run`, even a `forge run` killed with SIGKILL (which runs no cleanup)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from forge_operator.local.processes import TOKEN_ENV

# A stand-in for `forge run` that starts its children the way the runner does: a server holding a port
# through the real start_process (as `forge-trainer serve` is), a child of that one that left the session
# (as a sandboxed verifier does), and a process started with a plain Popen and the token in its environment
# (as TorchX's local scheduler starts torchrun, with no parent-death signal of ours).
FORGE_RUN = r"""
import json, socket, subprocess, sys, time
from pathlib import Path
from forge_operator.local.processes import new_token, start_process, workload_env

log_dir = Path(sys.argv[1])
server = ("import socket, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
          "open(%r, 'w').write(str(s.getsockname()[1])); time.sleep(300)" % str(log_dir / "port"))
spawner = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'],"
           " start_new_session=True); time.sleep(300)")
serve_token, verifier_token, torchx_token = new_token(), new_token(), new_token()
start_process([sys.executable, "-c", server], serve_token, log_dir / "serve.log")
start_process([sys.executable, "-c", spawner], verifier_token, log_dir / "verifier.log")
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], env=workload_env(torchx_token),
                 start_new_session=True)
print(json.dumps([serve_token, verifier_token, torchx_token]), flush=True)
time.sleep(300)
"""


def _tagged(tokens: list[str]) -> list[int]:
    """Live (not zombie) processes whose environment carries one of `tokens`."""
    wanted = {f"{TOKEN_ENV}={t}" for t in tokens}
    pids = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.status() != psutil.STATUS_ZOMBIE and wanted & {f"{k}={v}" for k, v in proc.environ().items()}:
                pids.append(proc.pid)
    return pids


def _is_zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def forge_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """The stand-in started, its children up; every process it left is killed afterwards, whatever happened."""
    parent = subprocess.Popen([sys.executable, "-c", FORGE_RUN, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    tokens: list[str] = []
    try:
        assert parent.stdout is not None
        tokens = json.loads(parent.stdout.readline())
        assert _wait_for(lambda: len(_tagged(tokens)) == 4 and (tmp_path / "port").is_file(), 30), \
            "the stand-in's four children did not start"
        yield parent, tokens
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        for pid in _tagged(tokens):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=10)


def test_no_child_outlives_a_forge_run_killed_with_sigkill(
        forge_run: tuple[subprocess.Popen[str], list[str]], tmp_path: Path) -> None:
    parent, tokens = forge_run
    port = int((tmp_path / "port").read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=10)
    assert _wait_for(lambda: not _tagged(tokens), 10), f"still running after forge run died: {_tagged(tokens)}"
    with socket.socket() as s:  # the server's port is free again for the next `forge run`
        s.bind(("127.0.0.1", port))


def test_start_process_child_gets_sigterm_when_its_parent_dies(tmp_path: Path) -> None:
    # without the watchdog (it only acts once the whole parent process is gone): the parent-death signal alone
    script = ("import sys, time; from pathlib import Path; from forge_operator.local import processes;"
              "p = processes.start_process([sys.executable, '-c', 'import time; time.sleep(300)'], 'no-watchdog',"
              " Path(sys.argv[1]) / 'log'); print(p.pid, flush=True); time.sleep(300)")
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait(timeout=10)
        assert _wait_for(lambda: not psutil.pid_exists(child) or _is_zombie(child), 5), "the child outlived its parent"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        for pid in _tagged(["no-watchdog"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        parent.wait(timeout=10)
