"""Start workload processes and end whole process trees.

Every process `forge run` starts carries a per-run token in its environment, inherited by everything
it starts in turn (torchrun's workers, a sandboxed verifier): ending a workload ends every process
that carries its token, so nothing is left behind, wherever it moved its process group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

TOKEN_ENV = "FORGE_LOCAL_TOKEN"


def new_token() -> str:
    """A fresh token for one workload."""
    return uuid.uuid4().hex


def workload_env(token: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment, tagged with `token`, with this interpreter's bin directory first
    on PATH (so `torchrun` and `bash -c` find the same installation)."""
    env = dict(os.environ)
    env[TOKEN_ENV] = token
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def start_process(argv: list[str], token: str, log_file: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session, stdout and stderr appended to `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(argv, env=workload_env(token), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)


def tagged_pids(token: str) -> list[int]:
    """Processes of this user whose environment carries `token` (Linux /proc; empty elsewhere)."""
    needle = f"{TOKEN_ENV}={token}".encode()
    me = os.getpid()
    pids = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_tree(token: str, proc: subprocess.Popen[bytes] | None = None, grace: float = 15.0) -> None:
    """SIGTERM every process carrying `token` (and `proc`'s process group), wait up to `grace`
    seconds for them to exit (a trainer writes a checkpoint on SIGTERM), then SIGKILL what is left."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    _signal(tagged_pids(token), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap it, or it stays a zombie that still carries the token
        if not _alive(tagged_pids(token)) and (proc is None or proc.returncode is not None):
            return
        time.sleep(0.2)
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    _signal(tagged_pids(token), signal.SIGKILL)
    if proc is not None:
        proc.wait(timeout=10)


def _alive(pids: list[int]) -> list[int]:
    """The pids that are not zombies."""
    out = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] != "Z":
            out.append(pid)
    return out


def log_tail(log_file: Path, lines: int = 1) -> str:
    """The last non-empty lines of a log file ('' if none)."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])
