"""Hostile verifiers and completions (issue 14 §1): every attack scores 0, is counted as a verifier
error where the verifier is at fault, leaves nothing behind, and costs the trainer bounded time and
memory. Each test prints what the attack cost (run with -s to see the figures)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge_trainer.train.sandbox import isolation
from tests.support.sandbox_attacks import (
    DISK_FILL,
    ENVIRON_READ,
    LIMITS,
    MEMORY_BOMB,
    PIDFD_KILL,
    REWARD_HACKS,
    STDOUT_FLOOD,
    Listener,
    Measured,
    dir_fd_writes,
    fork_bomb,
    network_connect,
    processes_with,
    run,
    run_in_trainer,
    run_tests,
    run_unprivileged,
    setsid_sleeper,
    shell_escape,
    token,
)

WALL_BOUND = LIMITS.timeout_seconds + 6.0
"""Seconds an attack may cost the trainer: the limit plus a generous start-up on a loaded machine."""
RSS_BOUND_MB = 64.0
"""Growth of the trainer's resident memory an attack may cause (the stdout flood once cost 765 MB)."""

pytestmark = pytest.mark.skipif(not isolation().namespaces,
                                reason="these attacks need the namespace layers this kernel refuses")


def check(name: str, m: Measured, reason: str | None) -> None:
    """Score 0, the expected reason (counted as an error unless it is a plain miss), bounded cost."""
    print(f"{name}: score={m.outcome.score} reason={m.outcome.reason} wall={m.seconds:.2f}s "
          f"rss_growth={m.rss_growth_mb:.1f}MB detail={m.outcome.detail[:80]!r}")
    assert m.outcome.score == 0.0
    if reason is not None:
        assert m.outcome.reason == reason
    assert m.stats.errors == (1 if m.outcome.reason not in (None, "failed") else 0)
    assert m.seconds < WALL_BOUND
    assert m.rss_growth_mb < RSS_BOUND_MB


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def test_a_shell_started_below_the_audit_hook_can_neither_write_outside_nor_connect(
        tmp_path: Path, listener: Listener) -> None:
    target = tmp_path / "pwned"
    m = run(shell_escape(target, listener.port))
    check("fork_exec /bin/sh", m, None)
    assert not target.exists()
    assert listener.close() == []


def test_a_setsid_grandchild_holding_the_pipes_dies_with_the_run() -> None:
    marker = token()
    m = run(setsid_sleeper(marker))
    check("setsid sleep", m, "timeout")
    assert processes_with(marker) == []


def test_a_fork_bomb_is_capped_and_nothing_survives() -> None:
    marker = token()
    m = run(fork_bomb(marker))
    check("fork bomb", m, "crash")
    started = int(re.search(r"started (\d+) processes", m.outcome.detail).group(1))  # type: ignore[union-attr]
    assert started < LIMITS.max_processes
    assert processes_with(marker) == []


def test_a_memory_bomb_hits_the_address_space_limit() -> None:
    check("memory bomb", run(MEMORY_BOMB), "memory")


def test_filling_the_disk_stops_at_the_box_size() -> None:
    m = run(DISK_FILL)
    check("disk fill", m, "crash")
    written = int(re.search(r"wrote (\d+) MB", m.outcome.detail).group(1))  # type: ignore[union-attr]
    assert written <= LIMITS.disk_mb


def test_flooding_stdout_costs_the_trainer_no_memory() -> None:
    check("stdout flood", run(STDOUT_FLOOD), "timeout")


def test_a_socket_to_the_host_is_refused(listener: Listener) -> None:
    check("network connect", run(network_connect(listener.port)), "crash")
    assert listener.close() == []


def test_writes_through_a_directory_descriptor_do_not_reach_outside(tmp_path: Path) -> None:
    (tmp_path / "victim").write_text("v")
    (tmp_path / "keep").write_text("k")
    check("dir_fd writes", run(dir_fd_writes(tmp_path)), "crash")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "victim"]


def test_no_process_environment_with_the_store_keys_is_readable() -> None:
    """The trainer (a separate process here, started with a fake key) and pid 1 are out of sight."""
    secret = {"FORGE_S3_SECRET_KEY": "hunter2-" + token()}
    out = run_in_trainer(ENVIRON_READ, {"trainer_pid": os.getpid()}, secret)
    print(f"environ read: {out}")
    assert out.returncode == 0 and out.result is not None
    assert out.result["score"] == 0.0 and out.result["error"] is None
    assert out.seconds < WALL_BOUND + 5  # the trainer's own start-up on top


def test_a_pidfd_signal_cannot_reach_the_trainer() -> None:
    out = run_in_trainer(PIDFD_KILL, {"trainer_pid": os.getpid()}, {})
    print(f"pidfd_send_signal: {out}")
    assert out.returncode == 0, "the trainer was killed"
    assert out.result is not None and out.result["score"] == 0.0


@pytest.mark.parametrize("hack", sorted(REWARD_HACKS))
def test_generated_code_cannot_fake_a_pass(hack: str) -> None:
    m = run_tests(REWARD_HACKS[hack], ["assert int(f()) == 1"])
    check(f"python_tests: {hack}", m, None)
    assert m.outcome.reason in ("failed", "no_result")


def test_the_same_tests_pass_for_a_correct_completion() -> None:
    """The reward hacks above fail because of the sandbox, not because nothing can pass."""
    m = run_tests("from typing import TypeVar\nT = TypeVar('T')\ndef f():\n    return '1'", ["assert int(f()) == 1"])
    assert (m.outcome.score, m.outcome.reason) == (1.0, None)


def _stdlib_python_for_nobody() -> str | None:
    for python in ("/usr/bin/python3", "/usr/local/bin/python3"):
        probe = subprocess.run([python, "-I", "-c", "import sys; assert sys.version_info >= (3, 11)"], user=65534,
                               group=65534, extra_groups=[], capture_output=True, check=False, cwd="/") \
            if os.path.exists(python) else None
        if probe is not None and probe.returncode == 0:
            return python
    return None


def test_a_non_root_trainer_gets_the_same_containment(tmp_path: Path) -> None:
    """As in a pod (uid 1000, no capabilities): the user-namespace path. A same-uid child without it
    could read the trainer's environment and signal it; here neither works, nor does writing out."""
    if os.geteuid() != 0:
        pytest.skip("the suite already runs as non-root")
    python = _stdlib_python_for_nobody()
    if python is None:
        pytest.skip("no Python >= 3.11 that uid 65534 may run")
    target = tmp_path / "pwned"
    tmp_path.chmod(0o777)
    marker = token()
    attacks = {"environ": ENVIRON_READ, "pidfd": PIDFD_KILL, "shell": shell_escape(target, 9),
               "bomb": fork_bomb(marker)}
    start = time.monotonic()
    out = run_unprivileged(python, attacks, {"FORGE_S3_SECRET_KEY": "hunter2-" + token()})
    print(f"non-root trainer: {out} in {time.monotonic() - start:.2f}s")
    assert out is not None and out["returncode"] == 0, "the trainer was killed or failed"
    assert "userns" in out["layers"] and "pidns" in out["layers"]
    results = out["results"]
    assert [results[name]["score"] for name in attacks] == [0.0] * len(attacks)
    assert results["bomb"]["error"] == "crash"
    started = int(re.search(r"started (\d+) processes", results["bomb"]["detail"]).group(1))  # type: ignore[union-attr]
    assert started < LIMITS.max_processes
    assert not target.exists()
    assert processes_with(marker) == []
