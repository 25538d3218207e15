"""A hostile custom verifier (or hostile generated code) is contained: it scores 0, is counted as a
verifier error, and the trainer process carries on."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge_trainer.config import ConfigMapKeyRef, RewardConfig, VerifierKind
from forge_trainer.train.sandbox import SandboxLimits, isolation
from forge_trainer.train.verifiers import CUSTOM_VERIFIER_ENV, RewardModel, python_tests, regex

LIMITS = SandboxLimits(timeout_seconds=2.0, memory_mb=256)

GOOD = '''
def verify(prompt, completion, task):
    return 1.0 if completion.strip() == task["answer"] else 0.25
'''


def custom_model(source: str, limits: SandboxLimits = LIMITS) -> RewardModel:
    return RewardModel(VerifierKind.CUSTOM, limits, custom_source=source)


def score_one(source: str, completion: str = "4", limits: SandboxLimits = LIMITS) -> tuple[float, str | None, int]:
    model = custom_model(source, limits)
    outcomes, stats = model.score(["2+2?"], [completion], [{"prompt": "2+2?", "answer": "4"}])
    return outcomes[0].score, outcomes[0].reason, stats.errors


def test_a_well_behaved_custom_verifier_scores() -> None:
    assert score_one(GOOD, "4") == (1.0, None, 0)
    assert score_one(GOOD, "5") == (0.25, None, 0)


def test_custom_verifier_is_read_from_the_mounted_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "verifier.py"
    path.write_text(GOOD)
    monkeypatch.setenv(CUSTOM_VERIFIER_ENV, str(path))
    reward = RewardConfig(verifier=VerifierKind.CUSTOM, custom_source=ConfigMapKeyRef(name="v"))
    outcomes, _ = RewardModel.from_config(reward).score(["q"], ["4"], [{"answer": "4"}])
    assert outcomes[0].score == 1.0


def test_scores_outside_0_1_are_clamped_and_non_numbers_rejected() -> None:
    assert score_one("def verify(p, c, t):\n    return 7")[0] == 1.0
    assert score_one("def verify(p, c, t):\n    return -3")[0] == 0.0
    score, reason, errors = score_one("def verify(p, c, t):\n    return 'yes'")
    assert (score, reason, errors) == (0.0, "invalid", 1)
    assert score_one("x = 1  # no verify()")[1] == "invalid"


def test_infinite_loop_times_out() -> None:
    start = time.monotonic()
    score, reason, errors = score_one("def verify(p, c, t):\n    while True:\n        pass")
    assert (score, reason, errors) == (0.0, "timeout", 1)
    assert time.monotonic() - start < 10


def test_sleeping_forever_times_out() -> None:
    score, reason, _ = score_one("import time\ndef verify(p, c, t):\n    time.sleep(3600)")
    assert (score, reason) == (0.0, "timeout")


def test_huge_allocation_hits_the_memory_limit() -> None:
    score, reason, errors = score_one("def verify(p, c, t):\n    x = bytearray(8 * 1024**3)\n    return 1.0")
    assert (score, reason, errors) == (0.0, "memory", 1)


def test_growing_allocation_hits_the_memory_limit() -> None:
    src = "def verify(p, c, t):\n    xs = []\n    while True:\n        xs.append(bytearray(10**6))"
    assert score_one(src)[:2] == (0.0, "memory")


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on loopback that records whatever reaches it."""
    received: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                received.append(conn.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield srv.getsockname()[1], received
    stop.set()
    thread.join()
    srv.close()


def test_network_access_is_refused(listener: tuple[int, list[bytes]]) -> None:
    port, received = listener
    src = (f"import socket\ndef verify(p, c, t):\n    s = socket.create_connection(('127.0.0.1', {port}), "
           f"timeout=1)\n    s.sendall(b'leak ' + c.encode())\n    return 1.0")
    score, reason, errors = score_one(src)
    assert (score, reason, errors) == (0.0, "crash", 1)
    time.sleep(0.3)
    assert received == []


def test_network_access_through_a_subprocess_is_refused(listener: tuple[int, list[bytes]]) -> None:
    port, received = listener
    src = (f"import subprocess, sys\ndef verify(p, c, t):\n    subprocess.run([sys.executable, '-c', "
           f"\"import socket; socket.create_connection(('127.0.0.1', {port})).sendall(b'leak')\"])\n"
           f"    return 1.0")
    assert score_one(src)[:2] == (0.0, "crash")
    time.sleep(0.3)
    assert received == []


def test_the_sandbox_applies_namespaces_where_the_kernel_allows() -> None:
    """Which layers apply is probed and named; on this machine (root or user namespaces) all of them."""
    found = isolation()
    if not found.namespaces:
        pytest.skip(f"this kernel refuses namespaces ({found.missing}); the audit hook is the only network guard")
    for layer in ("pidns", "netns", "mountns", "tmpfs-box", "minimal-root", "own-proc"):
        assert layer in found.layers
    assert "own-uid" in found.layers or "userns" in found.layers


def test_a_crashing_verifier_is_counted_and_training_goes_on() -> None:
    model = custom_model("def verify(p, c, t):\n    raise RuntimeError('boom')")
    outcomes, stats = model.score(["a", "b", "c"], ["1", "2", "3"], [{}, {}, {}])
    assert [o.score for o in outcomes] == [0.0, 0.0, 0.0]
    assert stats.errors == 3 and stats.reasons["crash"] == 3 and model.totals.errors == 3


def test_a_verifier_that_kills_its_interpreter_is_counted() -> None:
    src = "import os, signal\ndef verify(p, c, t):\n    os.abort()"
    score, reason, errors = score_one(src)
    assert score == 0.0 and errors == 1 and reason is not None


def test_a_verifier_with_a_syntax_error_is_counted() -> None:
    assert score_one("def verify(p, c, t)\n    return 1")[:2] == (0.0, "crash")


def test_writing_outside_the_working_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    src = f"def verify(p, c, t):\n    open({str(target)!r}, 'w').write('x')\n    return 1.0"
    assert score_one(src)[:2] == (0.0, "crash")
    assert not target.exists()


def test_the_environment_holds_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGE_S3_SECRET_KEY", "hunter2")
    src = "import os\ndef verify(p, c, t):\n    return 1.0 if 'FORGE_S3_SECRET_KEY' in os.environ else 0.5"
    assert score_one(src)[0] == 0.5


def test_hostile_generated_code_is_contained_too() -> None:
    tests = {"tests": ["assert f() == 1"]}
    loop = python_tests("def f():\n    while True: pass", tests, LIMITS)
    assert (loop.score, loop.reason) == (0.0, "timeout")
    big = python_tests("x = ' ' * (8 * 1024**3)\ndef f(): return 1", tests, LIMITS)
    assert (big.score, big.reason) == (0.0, "memory")


def test_a_catastrophically_backtracking_pattern_is_stopped_and_counted() -> None:
    start = time.monotonic()
    outcome = regex("a" * 40 + "!", {"pattern": r"(a|aa)+$"})  # exponential in a backtracking engine
    assert time.monotonic() - start < 10
    assert outcome.score == 0.0 and outcome.is_error
    assert "took longer than" in outcome.detail
