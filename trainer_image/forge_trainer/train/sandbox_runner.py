"""The child side of the verifier sandbox: contain one run of untrusted Python and report one result.

Run only by `forge_trainer.train.sandbox` as `python -I sandbox_runner.py JOB_FILE`. Standard library
only, and it imports nothing from forge_trainer: the untrusted code shares the worker's interpreter.

Three processes, each doing one thing:
- the launcher (the process the trainer started) reads and deletes the job file, enters new
  namespaces (user when not root, mount, pid, net, ipc, uts) and forks the init;
- the init, pid 1 of the new pid namespace and never running untrusted code, builds the sandbox's
  root (read-only binds of the system and Python directories, five devices, its own /proc, a
  size-capped tmpfs as the only writable directory; the host's tree is detached), forks the
  worker, kills it at the deadline, then kills whatever else is left in the namespace, reaps it
  all, and only then copies the worker's result file (capped) to its stdout, the trainer's pipe.
  The worker cannot write to that pipe: it never has it;
- the worker drops every privilege (another uid when started as root, else no capabilities; no new
  privileges; non-dumpable), sets rlimits (processes, address space, file size, open files, CPU),
  installs an audit hook (a second layer only) and runs the job. Its result is three lines (nonce,
  outcome, score) and a detail; the nonce lives only in a local of the driver, so code that exits
  early, replaces builtins or json, or writes a result file of its own cannot produce a pass.

Where the kernel refuses namespaces the init and worker still run, without those layers; the
trainer chose which layers to require from a probe (`--probe` prints what works) and a run that
cannot apply them fails with a setup error instead of running weaker than announced.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import stat
import sys
import time
from typing import Any, NoReturn

SETUP_FAILED = 121
"""Exit status of the worker when it could not enter the sandbox (it never ran the job)."""
RESULT_FILE = ".forge-result"
"""The worker's result, in its writable directory; the init reads it after everything is dead."""
RESULT_CAP = 16 * 1024
"""Bytes of the result file the init passes on (the pipe holds 64 KiB; the init must never block)."""

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 0x1, 0x2, 0x4, 0x8, 0x4000, 0x40000
_SYS_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MNT_DETACH, _MS_BIND = 442, -100, 0x8000, 2, 0x1000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_SECUREBITS = 1, 4, 24, 28
_PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 36, 38
# SECBIT_NOROOT, _NOROOT_LOCKED, _NO_SETUID_FIXUP, _NO_SETUID_FIXUP_LOCKED, _KEEP_CAPS_LOCKED: an exec
# as uid 0 of the user namespace gains no capabilities back.
_SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
           f"prctl({option})")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None,
                       ctypes.c_ulong(flags), data.encode() if data else None), f"mount {target}")


def _set_attrs(path: str, attr_set: int, attr_clr: int, recursive: bool) -> None:
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _check(_libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(_AT_FDCWD), path.encode(),
                         ctypes.c_uint(_AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))), f"mount_setattr {path}")


# --- the launcher -------------------------------------------------------------------------------

def _enter_namespaces(rootless: bool) -> None:
    """Unshare every namespace at once; without root, a user namespace where we are uid 0."""
    uid, gid = os.geteuid(), os.getegid()
    flags = _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC | _CLONE_NEWUTS
    _check(_libc.unshare(ctypes.c_int(flags | (_CLONE_NEWUSER if rootless else 0))), "unshare")
    if rootless:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"0 {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"0 {gid} 1")


def main() -> NoReturn:
    """Launcher: read the job, enter the namespaces, fork the init and exit with its status."""
    probe = sys.argv[1] == "--probe"
    if probe:
        cfg: dict[str, Any] = json.loads(sys.argv[2])
        job: dict[str, Any] = {"mode": "probe", "nonce": ""}
    else:
        with open(sys.argv[1]) as f:
            payload = json.load(f)
        os.unlink(sys.argv[1])  # the worker may share our uid: it must not find the nonce on disk
        cfg, job = payload["config"], payload["job"]
    layers: list[str] = []
    if cfg["namespaces"]:
        rootless = os.geteuid() != 0
        try:
            _enter_namespaces(rootless)
            layers += ["userns"] * rootless + ["mountns", "pidns", "netns", "ipcns", "utsns"]
        except OSError as exc:
            _report({"setup_error": f"namespaces: {exc}"} if not probe else {"layers": [], "why": str(exc)})
            os._exit(0)
    _prctl(_PR_SET_DUMPABLE, 0)  # after the id maps (they need it): a same-uid worker must not read our memory
    pid = os.fork()
    if pid == 0:
        _init(cfg, job, layers, probe)
    _, status = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _report(message: dict[str, Any]) -> None:
    data = json.dumps(message).encode()
    while data:
        data = data[os.write(1, data):]


# --- the init -----------------------------------------------------------------------------------

_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_DEVICES = ("null", "zero", "full", "random", "urandom")


def _bind(source: str, root: str, flags: int) -> None:
    """Mount `source` at the same path under `root`, read-only with `flags` (whole subtree)."""
    target = root + source
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass
    _mount(source, target, None, _MS_BIND | _MS_REC)
    _set_attrs(target, _MOUNT_ATTR_RDONLY | flags, 0, recursive=True)


def _mount_view(cfg: dict[str, Any], layers: list[str]) -> None:
    """The worker's filesystem: a new root holding only read-only binds of the system and Python
    directories, five devices, its own /proc and a size-capped tmpfs as the one writable place."""
    root, box = cfg["root"], cfg["box"]
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)  # nothing we mount leaks back to the host
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    for source in cfg["binds"]:
        if os.path.islink(source) and os.path.dirname(source) == "/":  # /bin -> usr/bin on merged-usr systems
            os.symlink(os.readlink(source), root + source)
        elif os.path.exists(source) and not (root + "/").startswith(source.rstrip("/") + "/"):
            _bind(source, root, _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV)
    for device in _DEVICES:
        _bind(f"/dev/{device}", root, _MOUNT_ATTR_NOSUID)
    os.makedirs(root + "/proc")
    try:
        _mount("proc", root + "/proc", "proc", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        layers.append("own-proc")
    except OSError:  # a container's masked /proc forbids a fresh proc mount in a user namespace
        layers.append("no-proc")
    os.makedirs(root + box)
    options = f"size={cfg['disk_mb']}m,nr_inodes=4096,mode=0700"
    if cfg.get("uid") is not None:
        options += f",uid={cfg['uid']},gid={cfg['uid']}"
    _mount("tmpfs", root + box, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
    layers.append("tmpfs-box")
    number = _PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise OSError(f"pivot_root: unknown syscall number on {os.uname().machine}")
    os.chdir(root)
    _check(_libc.syscall(ctypes.c_long(number), b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", ctypes.c_int(_MNT_DETACH)), "umount old root")  # the host's tree is gone
    os.chdir("/")
    _set_attrs("/", _MOUNT_ATTR_RDONLY, 0, recursive=False)
    layers.append("minimal-root")


def _init(cfg: dict[str, Any], job: dict[str, Any], layers: list[str], probe: bool) -> NoReturn:
    """pid 1 of the sandbox: set up the view, run the worker under a deadline, clean up, report."""
    why = ""
    try:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # the trainer killing the launcher ends us too
        _prctl(_PR_SET_DUMPABLE, 0)  # the worker may share our uid: no ptrace, no /proc/1/mem
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)  # a same-uid worker may signal us; only SIGKILL from outside counts
        if "mountns" in layers and (probe or "minimal-root" in cfg["require"]):
            view: list[str] = []
            try:
                _mount_view(cfg, view)
            except OSError as exc:
                if not probe:
                    raise
                why = f"filesystem view: {exc}"  # the runs go without it; the trainer says so
            else:
                layers += view
        else:
            _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphans come to us, so we can kill them
        if cfg.get("uid") is not None:
            layers.append("own-uid")
        missing = [layer for layer in cfg["require"] if layer not in layers]
        if missing:
            raise OSError(f"could not apply {', '.join(missing)}")
    except OSError as exc:
        _report({"layers": layers, "why": str(exc)} if probe else {"setup_error": str(exc), "layers": layers})
        os._exit(0)
    if probe and why:
        _report({"layers": layers, "why": why})
        os._exit(0)
    started = time.monotonic()
    worker = os.fork()
    if worker == 0:
        _worker(cfg, job, probe)
    timed_out = not _wait_for(worker, cfg["timeout"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(worker, signal.SIGKILL)
    _, status = os.waitpid(worker, 0)
    _kill_the_rest(cfg, worker)
    report: dict[str, Any] = {"layers": layers, "timed_out": timed_out,
                              "worker_seconds": round(time.monotonic() - started, 3)}
    if os.WIFSIGNALED(status):
        report["signal"] = os.WTERMSIG(status)
    else:
        report["exit"] = os.WEXITSTATUS(status)
    report["result"] = _read_result(os.path.join(cfg["box"], RESULT_FILE))
    _report(report)
    os._exit(0)


def _wait_for(pid: int, timeout: float) -> bool:
    """Block until `pid` exits (True) or `timeout` seconds pass (False); the child is not reaped."""
    deadline = time.monotonic() + timeout
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        fd = -1
    try:
        while (left := deadline - time.monotonic()) > 0:
            if fd >= 0:
                if select.select([fd], [], [], left)[0]:
                    return True
            else:  # kernels before 5.3: poll
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    return True
                time.sleep(min(0.01, left))
        return False
    finally:
        if fd >= 0:
            os.close(fd)


def _kill_the_rest(cfg: dict[str, Any], worker: int) -> None:
    """Kill every process the worker left behind (a setsid grandchild included), and reap them."""
    if os.getpid() == 1:  # our own pid namespace: everything in it but us, until nothing is left
        while True:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                return
    elif cfg.get("uid") is not None:  # the run's own uid: a helper with that uid kills all of its processes
        killer = os.fork()
        if killer == 0:
            with contextlib.suppress(BaseException):
                os.setgroups([])
                os.setgid(cfg["uid"])
                os.setuid(cfg["uid"])
                os.kill(-1, signal.SIGKILL)
            os._exit(0)
        os.waitpid(killer, 0)
    else:  # same uid as the trainer, no pid namespace: our descendants, as far as /proc shows them
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker, signal.SIGKILL)
        for _ in range(20):
            children = _descendants(os.getpid())
            if not children:
                break
            for pid in children:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            _reap()
    _reap()


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 10_000:
        parent = todo.pop()
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{parent}/task"):
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(p) for p in f.read().split()]
                found += kids
                todo += kids
    return found


def _reap() -> None:
    while True:
        try:
            if os.waitpid(-1, 0)[0] == 0:
                return
        except ChildProcessError:
            return


def _read_result(path: str) -> str | None:
    """The result file's first RESULT_CAP bytes, if it is a regular file (not a link, FIFO or device)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, RESULT_CAP).decode(errors="replace")
    finally:
        os.close(fd)


# --- the worker ---------------------------------------------------------------------------------

def _drop_privileges(uid: int | None) -> None:
    """No capabilities, now or after any exec; another uid when we started as root."""
    with contextlib.suppress(OSError):  # the bounding set: no exec can give a capability back
        for cap in range(64):
            _prctl(_PR_CAPBSET_DROP, cap)
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # root to another uid: every capability is cleared
    elif os.geteuid() == 0:  # uid 0 of our user namespace: drop what it holds and keep it dropped
        _prctl(_PR_SET_SECUREBITS, _SECUREBITS)
        data = (_CapData * 2)()
        _check(_libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), data), "capset")
    _prctl(_PR_SET_NO_NEW_PRIVS, 1)
    _prctl(_PR_SET_DUMPABLE, 0)  # our children cannot read our memory (where the nonce lives)


def _set_limits(cfg: dict[str, Any]) -> None:
    for kind, value in ((resource.RLIMIT_NPROC, cfg["nproc"]), (resource.RLIMIT_NOFILE, cfg["nofile"]),
                        (resource.RLIMIT_CPU, cfg["cpu_seconds"]), (resource.RLIMIT_CORE, 0),
                        (resource.RLIMIT_FSIZE, cfg["fsize_mb"] * 1024 * 1024),
                        (resource.RLIMIT_AS, cfg["memory_mb"] * 1024 * 1024)):
        resource.setrlimit(kind, (value, value))


def _worker(cfg: dict[str, Any], job: dict[str, Any], probe: bool) -> NoReturn:
    nonce = str(job.pop("nonce"))
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):  # printing goes nowhere: no flood reaches the trainer, no line forges a result
            os.dup2(devnull, fd)
        os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[0])  # the trainer's pipe included
        sys.stdout = sys.stderr = open(os.devnull, "w")  # noqa: SIM115  # lives as long as the process
        os.chdir(cfg["box"])
        os.environ.clear()
        os.environ.update({"PATH": os.defpath, "HOME": cfg["box"], "TMPDIR": cfg["box"], "LANG": "C.UTF-8"})
        _drop_privileges(cfg.get("uid"))
        _set_limits(cfg)
        _install_audit_hook(cfg["box"], frames=job.get("mode") == "tests",
                            path_checks="minimal-root" not in cfg["require"])
    except BaseException:  # nothing of the job ran; the trainer counts a setup failure
        os._exit(SETUP_FAILED)
    if probe:
        os._exit(0)
    _drive(job, nonce, os.path.join(cfg["box"], RESULT_FILE))


# Audit events that reach outside the sandbox: the network, other processes, native code, our memory.
_BLOCKED_EVENTS = frozenset({
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.sendto", "socket.sendmsg",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.addressof", "ctypes.call_function", "ctypes.string_at",
    "ctypes.wstring_at", "ctypes.cdata",
    "os.symlink", "os.link",
    "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys._current_frames",
    "sys._current_exceptions", "sys.settrace", "sys.setprofile",
})
# Filesystem changes; outside the box they are refused (a second layer under a read-only view).
_PATH_EVENTS = frozenset({"os.chmod", "os.chown", "os.remove", "os.rmdir", "os.rename", "os.truncate", "os.mkdir", "shutil.rmtree"})
_RESULT_ROOM = 4096
_FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})


class _FrameHidden(ValueError):
    """sys._getframe refused: a ValueError, so the standard library's fallbacks (typing, namedtuple) work."""


def _install_audit_hook(box: str, frames: bool, path_checks: bool) -> None:
    """A second layer: refuse what the kernel layers also stop, with a clear error in the detail."""
    root = os.path.realpath(box)
    realpath, fsdecode, isabs, isdir = os.path.realpath, os.fsdecode, os.path.isabs, os.path.isdir

    def inside(path: object) -> bool:
        if isinstance(path, int):  # a descriptor: only those of the box can be had, see below
            return True
        try:
            name = fsdecode(path)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        if not isabs(name) and ".." in name.split("/"):
            return False  # relative to a dir_fd we cannot see: refuse any way up
        real = realpath(name)
        return real == root or real.startswith(root + "/")

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event in _BLOCKED_EVENTS:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if frames and event == "sys._getframe":
            raise _FrameHidden("sandbox: frames are hidden")
        if frames and event == "object.__getattr__" and len(args) > 1 and args[1] in _FRAME_ATTRIBUTES:
            raise PermissionError(f"sandbox: {args[1]} is not allowed")
        if event == "open" and args and isinstance(args[0], str | bytes) and fsdecode(args[0]).endswith("/mem"):
            raise PermissionError("sandbox: process memory is not readable")
        if not path_checks:
            return
        if event in _PATH_EVENTS and args and not inside(args[0]):
            raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")
        if event == "os.rename" and len(args) > 1 and not inside(args[1]):
            raise PermissionError("sandbox: os.rename outside the working directory is not allowed")
        if event == "os.chdir" and args and not inside(args[0]):
            raise PermissionError("sandbox: os.chdir outside the working directory is not allowed")
        if event == "open" and len(args) >= 3 and args[0] is not None and not isinstance(args[0], int):
            path, mode, flags = args[0], args[1], args[2]
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
            # no descriptor of a directory outside the box: a dir_fd can only point inside it
            if (writes or isdir(fsdecode(path))) and not inside(path):
                raise PermissionError("sandbox: writing outside the working directory is not allowed")

    sys.addaudithook(hook)


def _drive(job: dict[str, Any], nonce: str, result_path: str) -> NoReturn:
    """Run the job and write the result. Everything used after the untrusted code ran is bound here,
    before it runs, so rebinding builtins, json or os cannot change what is written."""
    run, compile_, pwrite, truncate, exit_ = exec, compile, os.pwrite, os.ftruncate, os._exit
    type_, float_, int_, float_repr, str_ = type, float, int, float.__repr__, str
    base_exc, memory_error, min_, max_ = BaseException, MemoryError, min, max
    try:  # the result's pages are taken now: code that fills the box cannot keep it from being written
        fd = os.open(result_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.write(fd, bytes(_RESULT_ROOM))
    except OSError:
        exit_(SETUP_FAILED)
    testing = job.get("mode") == "tests"
    outcome, score, detail = "ok", 0.0, ""
    try:
        if testing:
            tests = job["tests"]
            completion = compile_(str(job["code"]), "<completion>", "exec")  # everything compiled first
            units = [compile_(str(t), f"<test {i}>", "exec") for i, t in enumerate(tests)] if isinstance(
                tests, list) else [compile_(str(tests), "<tests>", "exec")]
            pristine = dict(builtins.__dict__)  # the tests see these, whatever the completion rebinds in builtins
            namespace: dict[str, Any] = {"__name__": "__main__"}
            run(completion, namespace)
            for unit in units:
                namespace["__builtins__"] = dict(pristine)
                run(unit, namespace)
            score = 1.0
        else:
            namespace = {"__name__": "forge_custom_verifier"}
            run(compile_(str(job["source"]), "<custom verifier>", "exec"), namespace)
            verify = namespace.get("verify")
            if not callable(verify):
                outcome, detail = "invalid", "the verifier defines no function verify()"
            else:
                value = verify(job["prompt"], job["completion"], job["task"])
                kind = type_(value)
                if (kind is not float_ and kind is not int_) or value != value:
                    outcome, detail = "invalid", f"verify() returned {kind.__name__}"
                else:
                    score = min_(1.0, max_(0.0, float_(value)))
    except memory_error:
        outcome, score, detail = "memory", 0.0, "MemoryError"
    except base_exc as exc:  # the code may raise anything, SystemExit included
        # generated code that raises simply fails its tests; a custom verifier that raises crashed
        outcome, score = ("failed" if testing else "crash"), 0.0
        try:
            detail = str_(f"{type_(exc).__name__}: {exc}")[:300]
        except base_exc:  # an exception whose str() raises
            detail = type_(exc).__name__
    line = (nonce + "\n" + outcome + "\n" + float_repr(score) + "\n" + detail).encode(errors="replace")
    try:
        pwrite(fd, line[:_RESULT_ROOM], 0)
        truncate(fd, min_(len(line), _RESULT_ROOM))
    except base_exc:  # the code broke the box (a FIFO, a full disk): no result, score 0
        exit_(SETUP_FAILED + 1)
    exit_(0)  # skip interpreter teardown: the code under test may have left threads or finalizers


if __name__ == "__main__":
    main()
