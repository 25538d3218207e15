"""Start workload processes and end whole process trees.

Every process `forge run` starts carries a per-run token in its environment, inherited by everything
it starts in turn (torchrun's workers, a sandboxed verifier): ending a workload ends every process
that carries its token, so nothing is left behind, wherever it moved its process group.

Nothing outlives the process that started it either, even when that one is killed with SIGKILL and
runs no cleanup: a child from `start_process` gets a parent-death signal (SIGTERM), and the first token
also starts a watchdog (`forge_operator.local.orphan_watchdog`) that, once this process is gone, ends
every process carrying one of its tokens (TorchX's local scheduler starts torchrun with its own Popen,
out of reach of a parent-death signal; torchrun's workers carry the token too)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

TOKEN_ENV = "FORGE_LOCAL_TOKEN"
# every token of this process starts with it, so the watchdog finds them all by prefix
_OWNER = f"{uuid.uuid4().hex[:12]}-"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# (the pid that started it, the watchdog, the pipe's write end)
_watchdog: tuple[int, subprocess.Popen[bytes], int] | None = None
# loaded here, not in the forked child, where only async-signal-safe calls belong
_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if sys.platform == "linux" else None


def new_token() -> str:
    """A fresh token for one workload (the first one starts this process's orphan watchdog)."""
    _start_watchdog()
    return _OWNER + uuid.uuid4().hex


def _start_watchdog() -> None:
    global _OWNER, _watchdog
    if _watchdog is not None and _watchdog[0] == os.getpid():
        return
    if _watchdog is not None:  # a forked child: its own tokens and watchdog, or its death would end ours
        _OWNER = f"{uuid.uuid4().hex[:12]}-"
    # the watchdog sees EOF on stdin once the write end closes, i.e. once this process is gone however it
    # died; the write end is not inherited across exec, so no child keeps it open
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    try:
        proc = subprocess.Popen([sys.executable, "-m", "forge_operator.local.orphan_watchdog", _OWNER],
                                stdin=read_end, stdout=subprocess.DEVNULL, env=env, start_new_session=True)
    finally:
        os.close(read_end)
    _watchdog = (os.getpid(), proc, write_end)  # the write end stays open for this process's lifetime


def _die_with_parent(parent: int, sig: signal.Signals) -> Callable[[], None]:
    """A `preexec_fn`: the child gets `sig` when its parent dies (Linux), and ends itself at once if the
    parent already died before the request was in place (it would then never get the signal)."""

    def preexec() -> None:
        # an ignored SIGTERM stays ignored across exec: a shell's background job may have set it so
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if _LIBC is None:
            return
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


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
    """Start `argv` in its own session, stdout and stderr appended to `log_file`; it gets SIGTERM if
    this process dies (the thread that starts it must live as long as it: Linux ties the signal to it)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(argv, env=workload_env(token), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd,
                                preexec_fn=_die_with_parent(os.getpid(), signal.SIGTERM))


def tagged_pids(token: str, prefix: bool = False) -> list[int]:
    """Processes of this user whose environment carries `token` (or, with `prefix`, a token that starts
    with it) (Linux /proc; empty elsewhere)."""
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
        entries = environ.split(b"\0")
        if needle in entries or (prefix and any(e.startswith(needle) for e in entries)):
            pids.append(int(entry.name))
    return pids


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_tree(token: str, proc: subprocess.Popen[bytes] | None = None, grace: float = 15.0,
             prefix: bool = False) -> None:
    """SIGTERM every process carrying `token` (a token starting with it, with `prefix`) and `proc`'s
    process group, wait up to `grace` seconds for them to exit (a trainer writes a checkpoint on SIGTERM),
    then SIGKILL what is left."""
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
    _signal(tagged_pids(token, prefix), signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap it, or it stays a zombie that still carries the token
        if not _alive(tagged_pids(token, prefix)) and (proc is None or proc.returncode is not None):
            return
        time.sleep(0.2)
    if proc is not None and proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    _signal(tagged_pids(token, prefix), signal.SIGKILL)
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
