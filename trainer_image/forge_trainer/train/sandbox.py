"""Run untrusted Python (generated code under test, a custom verifier) in a contained child.

The trainer holds the object-store credentials, so the sandbox does not rely on Python audit hooks:
`sandbox_runner` (the child side) puts the code in kernel namespaces and drops its privileges. The
layers, each applied when the kernel allows it (`isolation()` names them; the trainer logs them once):
- a user namespace (trainer not root) or a uid of its own per run (trainer root);
- a pid namespace with its own /proc: the trainer's processes and their environments are invisible
  and cannot be signalled, and the namespace's init kills every process left (a `setsid` grandchild
  included) before the result is read. Without a pid namespace the trainer makes itself
  non-dumpable, so a same-uid child cannot read its /proc/<pid>/environ or memory;
- a network namespace with only a down loopback: no route anywhere, for native code too;
- a mount namespace whose root holds only read-only binds of SYSTEM_PATHS and the Python
  installation, five devices (null, zero, full, random, urandom), its own /proc and, as the only
  writable place, a tmpfs of `disk_mb`: no home directory, no /tmp, no mounted secrets;
- no capabilities (none regained by exec), no new privileges, non-dumpable, an empty environment
  (never the store keys), rlimits on processes, address space, file size, open files and CPU;
- an audit hook as a second layer (sockets, processes, signals, ctypes, frames, writes outside).
The trainer kills the whole process group at the deadline plus GRACE_SECONDS, reads at most
OUTPUT_CAP bytes from the child, and judges by a result file that the init copies out after the
namespace is dead; the result carries a nonce the untrusted code never sees, so exiting early,
printing, or rebinding builtins/json cannot make failing code pass.

In `python_tests` mode each test unit runs with a copy of the builtins taken before the completion
ran. Not enforced there: a completion that returns an object equal to everything, patches a module
the tests import, or deliberately digs the nonce out of its own interpreter by a route the audit hook
does not see can still pass (the sandbox still contains it; write tests that check types). Without
namespaces only the uid (when root), rlimit, environment, non-dumpable and audit-hook layers remain:
the child may then read what the trainer's user can read, and a non-root trainer can only kill the
descendants /proc shows it. Any failure of the child scores 0 with a reason; nothing here raises
because of what the code did.

In a pod (uid 1000, all capabilities dropped, no privilege escalation) the namespaces need nothing
but the seccomp profile to allow five syscalls that RuntimeDefault gates on CAP_SYS_ADMIN: unshare,
mount, umount2, pivot_root and mount_setattr (a Localhost profile of RuntimeDefault plus those, or
Unconfined for the trainer container only), user.max_user_namespaces > 0 on the node and, on
AppArmor nodes, a container profile that allows mount, umount and pivot_root (the runtime's default
profile denies mount) and, where AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+),
`userns`. Each refusal only removes layers: the probe finds what works and the log says so. No
capability, no privileged mode, no hostPID, no procMount: where a fresh /proc cannot be mounted (a
container's masked /proc) the sandbox simply has none. The tmpfs box counts against the pod's
memory: `disk_mb` times the concurrent runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("sandbox_runner.py")
OUTPUT_CAP = 64 * 1024
"""Most bytes read from the child's pipe (its init writes at most 16 KiB of result)."""
GRACE_SECONDS = 5.0
"""Added to the time limit for the interpreter's start before the trainer kills the group itself."""
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/etc/ld.so.cache", "/etc/ld.so.conf",
                "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/passwd", "/etc/group", "/etc/nsswitch.conf",
                "/etc/localtime")
"""What the sandbox sees of the system (read-only); with the Python installation, that is all it sees:
no /home, /root, /tmp, /var, /run, no other /etc file, nothing mounted into the pod elsewhere."""
SANDBOX_UID_BASE = 61000
"""When the trainer is root, each concurrent run gets its own uid from here (within a pod's 65536)."""
_UID_SLOTS = 512
_SETUP_FAILED = 121  # sandbox_runner.SETUP_FAILED; the runner is a script, never imported


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one sandboxed run."""

    timeout_seconds: float = 5.0
    """Wall-clock limit; every process of the run is killed when it is reached."""
    memory_mb: int = 256
    """Address-space limit of each process of the run."""
    file_size_mb: int = 16
    """Largest file the run may write."""
    disk_mb: int = 32
    """Size of the run's only writable directory (a tmpfs where mount namespaces are allowed)."""
    max_processes: int = 16
    """Processes and threads the run may have at once (RLIMIT_NPROC)."""
    max_open_files: int = 64
    """Open file descriptors per process (RLIMIT_NOFILE)."""


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run produced: a score in [0, 1] and, when it did not pass, why."""

    score: float
    """1.0 for tests that all passed; the verify() result for a custom verifier; 0 on any failure."""
    error: str | None = None
    """None, or one of: failed (generated code raised or a test failed), crash (a custom verifier
    raised), timeout, memory, invalid (verify() returned no number), no_result (the child died
    without a result), sandbox (the sandbox could not be set up)."""
    detail: str = ""
    """A short human-readable explanation of the error."""


@dataclass(frozen=True)
class Isolation:
    """The isolation layers this trainer's sandbox applies (probed once per process)."""

    layers: tuple[str, ...]
    """Names of the applied layers: userns or own-uid, mountns, pidns, netns, ipcns, utsns, own-proc
    (or no-proc: no /proc at all), tmpfs-box, minimal-root."""
    missing: str = ""
    """Why a layer is not applied (empty when all are)."""

    @property
    def namespaces(self) -> bool:
        """The run enters its own namespaces."""
        return "pidns" in self.layers


class _UidPool:
    """Distinct uids for concurrent runs when the trainer is root (RLIMIT_NPROC counts per uid)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free = list(range(SANDBOX_UID_BASE, SANDBOX_UID_BASE + _UID_SLOTS))

    @contextlib.contextmanager
    def take(self) -> Iterator[int | None]:
        """A free uid for one run, or None when the trainer is not root (or all are taken)."""
        if os.geteuid() != 0:
            yield None
            return
        with self._lock:
            uid = self._free.pop() if self._free else None
        try:
            yield uid
        finally:
            if uid is not None:
                with self._lock:
                    self._free.append(uid)


_uids = _UidPool()


def _visible_paths() -> list[str]:
    """What the sandbox's root holds, read-only: SYSTEM_PATHS, the interpreter's prefixes, sys.path."""
    wanted = [*SYSTEM_PATHS, sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix,
              *(os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)), str(RUNNER.parent)]
    paths: list[str] = []
    for path in sorted(set(wanted), key=len):
        if not any(path == kept or path.startswith(kept.rstrip("/") + "/") for kept in paths):
            paths.append(path)
    return paths


def _config(limits: SandboxLimits, workdir: str, uid: int | None, isolation: Isolation | None) -> dict[str, Any]:
    return {"namespaces": isolation is None or isolation.namespaces, "uid": uid,
            "box": os.path.join(workdir, "box"), "root": os.path.join(workdir, "root"),
            "require": list(isolation.layers) if isolation else [], "binds": _visible_paths(),
            "timeout": limits.timeout_seconds, "memory_mb": limits.memory_mb, "fsize_mb": limits.file_size_mb,
            "disk_mb": limits.disk_mb, "cpu_seconds": max(1, math.ceil(limits.timeout_seconds) + 1),
            "nproc": limits.max_processes, "nofile": limits.max_open_files}


@contextlib.contextmanager
def _workdir(uid: int | None) -> Iterator[str]:
    """A private directory for one run; `box` in it is the child's working directory."""
    workdir = tempfile.mkdtemp(prefix="forge-sandbox-")
    try:
        os.chmod(workdir, 0o711)  # another uid may pass through to its box, not list or read
        os.mkdir(os.path.join(workdir, "root"), 0o755)  # where the sandbox's own root is mounted
        box = os.path.join(workdir, "box")
        os.mkdir(box, 0o700)
        if uid is not None:
            os.chown(box, uid, uid)
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


_probe_lock = threading.Lock()


@functools.cache
def _probe() -> Isolation:
    with _uids.take() as uid, _workdir(uid) as workdir:
        cfg = _config(SandboxLimits(timeout_seconds=10.0), workdir, uid, None)
        report, _, _ = _spawn([sys.executable, "-I", str(RUNNER), "--probe", json.dumps(cfg)], workdir, 30.0)
    layers = list(report.get("layers", [])) if isinstance(report, dict) else []
    why = str(report.get("why", "")) if isinstance(report, dict) else "the probe gave no report"
    if not layers and uid is not None:
        layers = ["own-uid"]
    return Isolation(tuple(layers), why)


def isolation() -> Isolation:
    """The layers the sandbox applies here, probed on first use and logged once."""
    with _probe_lock:
        first = _probe.cache_info().currsize == 0
        found = _probe()
    if first:
        if found.namespaces:
            log.info("verifier sandbox: %s%s", ", ".join(found.layers), f" ({found.missing})" * bool(found.missing))
        else:
            log.warning("verifier sandbox without namespaces (%s): only %s, rlimits, an empty environment "
                        "and the audit hook apply; the pod's seccomp profile must allow unshare, mount, "
                        "umount2, pivot_root and mount_setattr (see forge_trainer.train.sandbox)",
                        found.missing, ", ".join(found.layers) or "no other uid")
        if "minimal-root" not in found.layers:
            _make_trainer_undumpable()
    return found


def _make_trainer_undumpable() -> None:
    """Without a pid namespace a same-uid child could read our /proc/<pid>/environ and memory."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:  # DUMPABLE
        log.warning("verifier sandbox: could not make the trainer non-dumpable (errno %d)", ctypes.get_errno())


def _read_capped(stream: IO[bytes] | None, cap: int) -> bytes:
    """What is in the pipe now, up to `cap` bytes; never waits for a writer that is still alive."""
    if stream is None:
        return b""
    fd = stream.fileno()
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    size = 0
    while size < cap:
        try:
            chunk = os.read(fd, min(65536, cap - size))
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _spawn(cmd: list[str], workdir: str, deadline: float) -> tuple[Any, bool, int]:
    """Start the launcher, kill its whole group at `deadline`, and read its report (capped).

    Returns (the parsed report or None, whether the trainer had to kill it, its exit status)."""
    with open(os.path.join(workdir, "launcher.log"), "wb") as errors:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors,
                                cwd=workdir, env={"PATH": os.defpath, "LANG": "C.UTF-8"}, start_new_session=True)
    killed = False
    try:
        proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        killed = True
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # the init is in this group; its death ends the namespace
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    raw = _read_capped(proc.stdout, OUTPUT_CAP)
    if proc.stdout is not None:
        proc.stdout.close()
    try:
        report = json.loads(raw) if raw else None
    except ValueError:
        report = None
    return report, killed, proc.returncode if proc.returncode is not None else -signal.SIGKILL


def _kill_uid(uid: int) -> None:
    """Without a pid namespace: kill every process of the run's uid (kill(-1) as that uid)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run([sys.executable, "-I", "-S", "-c", "import os, signal; os.kill(-1, signal.SIGKILL)"],
                       user=uid, group=uid, extra_groups=[], env={}, timeout=10, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _log_tail(workdir: str) -> str:
    """The last line the launcher wrote to its stderr (for a run that gave no report)."""
    try:
        with open(os.path.join(workdir, "launcher.log"), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 300))
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


_OUTCOMES = {"failed", "crash", "memory", "invalid"}


def _judge(report: Any, nonce: str) -> SandboxResult:
    """The result of a finished run, from the init's report (written after the namespace died)."""
    if not isinstance(report, dict):
        return SandboxResult(0.0, "no_result", "the sandbox gave no report")
    if "setup_error" in report:
        return SandboxResult(0.0, "sandbox", f"the sandbox could not be set up: {report['setup_error']}"[:300])
    if report.get("timed_out"):
        return SandboxResult(0.0, "timeout", "the time limit was reached")
    lines = str(report.get("result") or "").split("\n", 3)
    if len(lines) == 4 and secrets.compare_digest(lines[0].encode(), nonce.encode()):
        outcome, score_text, detail = lines[1], lines[2], lines[3][:300]
        if outcome in _OUTCOMES:
            return SandboxResult(0.0, outcome, detail)
        try:
            score = float(score_text)
        except ValueError:
            score = math.nan
        if outcome == "ok" and math.isfinite(score):
            return SandboxResult(min(1.0, max(0.0, score)))
        return SandboxResult(0.0, "invalid", "unreadable result")
    sig, code = report.get("signal"), report.get("exit")
    if sig == signal.SIGXCPU:
        return SandboxResult(0.0, "timeout", "the CPU-time limit was reached")
    if sig == signal.SIGKILL:
        return SandboxResult(0.0, "memory", "killed (out of memory)")
    if code == _SETUP_FAILED:
        return SandboxResult(0.0, "sandbox", "the worker could not enter the sandbox")
    how = f"signal {sig}" if sig is not None else f"status {code}"
    return SandboxResult(0.0, "no_result", f"the child ended ({how}) without a valid result")


def run_sandboxed(job: dict[str, Any], limits: SandboxLimits) -> SandboxResult:
    """Run one job (`mode` tests or custom, see sandbox_runner) in a contained child and judge its result."""
    iso = isolation()
    nonce = secrets.token_hex(16)
    with _uids.take() as uid, _workdir(uid) as workdir:
        job_file = os.path.join(workdir, "job.json")
        fd = os.open(job_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"config": _config(limits, workdir, uid, iso),
                       "job": {**job, "nonce": nonce}}, f)
        report, killed, status = _spawn([sys.executable, "-I", str(RUNNER), job_file], workdir,
                                        limits.timeout_seconds + GRACE_SECONDS)
        if uid is not None and not iso.namespaces:
            _kill_uid(uid)
        if killed:
            return SandboxResult(0.0, "timeout", "the time limit was reached (killed by the trainer)")
        if report is None:
            return SandboxResult(0.0, "no_result", f"the sandbox ended with status {status}: {_log_tail(workdir)}"[:300])
        return _judge(report, nonce)


def run_python_tests(code: str, tests: str | list[str], limits: SandboxLimits) -> SandboxResult:
    """Run `code`, then `tests` (assert statements or a code string); score 1 when no test fails."""
    return run_sandboxed({"mode": "tests", "code": code, "tests": tests}, limits)


def run_custom_verifier(source: str, prompt: str, completion: str, task: dict[str, Any],
                        limits: SandboxLimits) -> SandboxResult:
    """Run `verify(prompt, completion, task)` from `source`; its float result, clamped to [0, 1], is the score."""
    return run_sandboxed({"mode": "custom", "source": source, "prompt": prompt, "completion": completion,
                          "task": task}, limits)
