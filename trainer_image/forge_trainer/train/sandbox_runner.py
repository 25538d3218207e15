"""The child side of the verifier sandbox: run untrusted Python under limits and report one result.

Run only by `forge_trainer.train.sandbox` as `python -I sandbox_runner.py MEMORY_MB CPU_SECONDS
FSIZE_MB WORKDIR`, with a JSON job on stdin. Standard library only, and it imports nothing from
forge_trainer: the untrusted code shares this interpreter, so nothing of the trainer may be in it.

Order matters: resource limits first, then the audit hook, then the job is read and run. The
result goes to a private copy of the original stdout as one line `<nonce> <json>`; the untrusted
code's own stdout and stderr go to /dev/null, so printing cannot forge a result,
and exiting early (sys.exit, os._exit) leaves no result line and scores 0.
"""

from __future__ import annotations

import json
import os
import resource
import sys


def _set_limits(memory_mb: int, cpu_seconds: int, fsize_mb: int) -> None:
    mem = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    fsize = fsize_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


# Audit events that reach outside the sandbox: the network, other processes, native code.
_BLOCKED_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.sendto", "socket.sendmsg",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.addressof", "ctypes.call_function",
    "os.chmod", "os.chown", "os.symlink", "os.link", "os.putenv", "os.unsetenv",
})
# Filesystem changes are allowed only inside the working directory.
_PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.truncate", "os.mkdir", "shutil.rmtree"})


def _install_audit_hook(workdir: str) -> None:
    root = os.path.realpath(workdir)

    def inside(path: object) -> bool:
        if isinstance(path, int):  # an already-open descriptor
            return True
        try:
            real = os.path.realpath(os.fsdecode(path))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return real == root or real.startswith(root + os.sep)

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event in _BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event in _PATH_EVENTS and args and not inside(args[0]):
            raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
            if writes and path is not None and not inside(path):
                raise PermissionError("sandbox: writing outside the working directory is not allowed")

    sys.addaudithook(hook)


def _run_tests(job: dict[str, object]) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(str(job["code"]), "<completion>", "exec"), namespace)
    tests = job["tests"]
    if isinstance(tests, list):
        for i, test in enumerate(tests):
            exec(compile(str(test), f"<test {i}>", "exec"), namespace)
    else:
        exec(compile(str(tests), "<tests>", "exec"), namespace)
    return {"score": 1.0}


def _run_custom(job: dict[str, object]) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "forge_custom_verifier"}
    exec(compile(str(job["source"]), "<custom verifier>", "exec"), namespace)
    verify = namespace.get("verify")
    if not callable(verify):
        return {"score": 0.0, "error": "invalid", "detail": "the verifier defines no function verify()"}
    score = verify(job["prompt"], job["completion"], job["task"])
    if isinstance(score, bool) or not isinstance(score, int | float) or score != score:
        return {"score": 0.0, "error": "invalid", "detail": f"verify() returned {type(score).__name__}"}
    return {"score": min(1.0, max(0.0, float(score)))}


def main() -> None:
    memory_mb, cpu_seconds, fsize_mb = (int(a) for a in sys.argv[1:4])
    workdir = sys.argv[4]
    _set_limits(memory_mb, cpu_seconds, fsize_mb)
    os.chdir(workdir)
    job = json.loads(sys.stdin.read())
    nonce = str(job.pop("nonce"))
    result_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115  # lives as long as the process
    _install_audit_hook(workdir)
    testing = job.get("mode") == "tests"
    try:
        result = _run_tests(job) if testing else _run_custom(job)
    except MemoryError:
        result = {"score": 0.0, "error": "memory", "detail": "MemoryError"}
    except BaseException as exc:  # the code may raise anything, SystemExit included
        # generated code that raises simply fails its tests; a custom verifier that raises crashed
        reason = "failed" if testing else "crash"
        result = {"score": 0.0, "error": reason, "detail": f"{type(exc).__name__}: {exc}"[:300]}
    os.write(result_fd, f"{nonce} {json.dumps(result)}\n".encode())
    os._exit(0)  # skip interpreter teardown: the code under test may have left threads or finalizers


if __name__ == "__main__":
    main()
