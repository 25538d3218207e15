"""Run untrusted Python (generated code under test, a custom verifier) in a contained subprocess.

What is enforced, for every run:
- wall-clock time: the whole process group is killed at `timeout_seconds` (RLIMIT_CPU as a backstop);
- memory: RLIMIT_AS of `memory_mb` (an allocation beyond it raises MemoryError or kills the child);
- file size: RLIMIT_FSIZE of `file_size_mb`; no core dumps;
- a fresh empty working directory (deleted afterwards) and an empty environment: no credentials;
- `python -I`: no site-packages of the user, no PYTHON* variables;
- an audit hook (PEP 578, cannot be removed once added) installed before the code runs refuses:
  sockets, starting processes (subprocess, fork, exec, spawn), signals to other processes, ctypes
  (native calls could bypass the hook) and writes, renames or deletions outside the working directory;
- network: when the kernel allows it, the child also runs in its own network namespace with only a
  down loopback (`unshare -rn`, or `unshare -n` as root), so even native code has no route out.
  Where namespaces are not allowed (a pod without CAP_SYS_ADMIN or user namespaces), the audit hook
  is the only network guard. `network_isolation()` says which applies.

Not enforced: the code may read files the trainer's user can read (it cannot send them anywhere),
and code that deliberately hunts for the result channel's nonce in the runner's frames could forge a
pass. Any failure of the child (crash, timeout, memory, no result) scores 0 and is reported with a
reason; nothing here raises because of what the untrusted code did.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).with_name("sandbox_runner.py")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run."""

    timeout_seconds: float = 5.0
    """Wall-clock limit; the process group is killed when it is reached."""
    memory_mb: int = 256
    """Address-space limit of the child."""
    file_size_mb: int = 16
    """Largest file the child may write."""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run produced: a score in [0, 1] and, when it did not pass, why."""

    score: float
    """1.0 for tests that all passed; the verify() result for a custom verifier; 0 on any failure."""
    error: str | None = None
    """None, or one of: failed (generated code raised or a test failed), crash (a custom verifier
    raised), timeout, memory, invalid (verify() returned no number), no_result (the child died)."""
    detail: str = ""
    """A short human-readable explanation of the error."""


@functools.cache
def network_isolation() -> tuple[str, ...]:
    """The command prefix that puts the child in a network namespace of its own, or () if none works."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for prefix in ((unshare, "-rn"), (unshare, "-n")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            probe = subprocess.run([*prefix, sys.executable, "-I", "-c", "pass"],
                                   capture_output=True, timeout=10, check=False)
            if probe.returncode == 0:
                return prefix
    return ()


def _child_env(workdir: str) -> dict[str, str]:
    return {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _parse(stdout: bytes, nonce: str, returncode: int, timed_out: bool) -> SandboxResult:
    if timed_out:
        return SandboxResult(0.0, "timeout", "the time limit was reached")
    for line in stdout.decode(errors="replace").splitlines():
        head, _, body = line.partition(" ")
        if head != nonce:
            continue
        try:
            raw = json.loads(body)
            score = float(raw["score"])
        except (ValueError, KeyError, TypeError):
            return SandboxResult(0.0, "invalid", "unreadable result line")
        error = raw.get("error")
        return SandboxResult(min(1.0, max(0.0, score)) if error is None else 0.0,
                             str(error) if error is not None else None, str(raw.get("detail", "")))
    if returncode == -signal.SIGXCPU:
        return SandboxResult(0.0, "timeout", "the CPU-time limit was reached")
    if returncode == -signal.SIGKILL:
        return SandboxResult(0.0, "memory", "killed (out of memory)")
    return SandboxResult(0.0, "no_result", f"the child exited with status {returncode} before reporting")


def run_sandboxed(job: dict[str, Any], limits: SandboxLimits) -> SandboxResult:
    """Run one job (`mode` tests or custom, see sandbox_runner) in a contained child and read its result."""
    nonce = secrets.token_hex(16)
    payload = json.dumps({**job, "nonce": nonce}).encode()
    cpu_seconds = max(1, math.ceil(limits.timeout_seconds) + 1)
    workdir = tempfile.mkdtemp(prefix="forge-sandbox-")
    try:
        cmd = [*network_isolation(), sys.executable, "-I", str(RUNNER), str(limits.memory_mb),
               str(cpu_seconds), str(limits.file_size_mb), workdir]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, cwd=workdir, env=_child_env(workdir),
                                start_new_session=True)
        timed_out = False
        try:
            stdout, _ = proc.communicate(payload, timeout=limits.timeout_seconds)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            stdout, _ = proc.communicate()
        _kill_group(proc)  # whatever the child left behind in its group goes too
        return _parse(stdout, nonce, proc.returncode, timed_out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_python_tests(code: str, tests: str | list[str], limits: SandboxLimits) -> SandboxResult:
    """Run `code`, then `tests` (assert statements or a code string); score 1 when no test fails."""
    return run_sandboxed({"mode": "tests", "code": code, "tests": tests}, limits)


def run_custom_verifier(source: str, prompt: str, completion: str, task: dict[str, Any],
                        limits: SandboxLimits) -> SandboxResult:
    """Run `verify(prompt, completion, task)` from `source`; its float result, clamped to [0, 1], is the score."""
    return run_sandboxed({"mode": "custom", "source": source, "prompt": prompt, "completion": completion,
                          "task": task}, limits)
