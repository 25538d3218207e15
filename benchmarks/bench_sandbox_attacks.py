"""What each hostile verifier (issue 14 §1) costs the trainer once the sandbox contains it.

    .venv/bin/python benchmarks/bench_sandbox_attacks.py     # about 30 s

Runs every attack of tests/support/sandbox_attacks.py once (1.5 s limit) and prints, per attack, the
score and reason, the trainer's wall time and the peak growth of its resident memory, with the wall
time as a ratio to a well-behaved verifier measured in the same run; then eight stdout floods scored
in parallel (the issue measured 765 MB for one flood of 1 s before the fix). The sandbox's layers
are printed first.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    measure,
    network_connect,
    processes_with,
    run,
    run_in_trainer,
    run_tests,
    setsid_sleeper,
    shell_escape,
    token,
)

from forge_trainer.config import VerifierKind
from forge_trainer.train.sandbox import isolation
from forge_trainer.train.verifiers import RewardModel

BENIGN = "def verify(p, c, t):\n    return 1.0"


def row(name: str, score: float, reason: str | None, seconds: float, rss_mb: float | str, base: float,
        note: str = "") -> None:
    """One line of the table."""
    rss = f"{rss_mb:8.1f}" if isinstance(rss_mb, float) else f"{rss_mb:>8}"
    print(f"{name:<34} {score:5.1f}  {reason or '-':<10} {seconds:7.2f} {seconds / base:7.1f}x {rss}  {note}")


def main() -> None:
    """Run every attack once and print the table."""
    print("layers:", ", ".join(isolation().layers), f"({isolation().missing})" * bool(isolation().missing))
    run(BENIGN)  # the first run pays for imports and page cache
    base = run(BENIGN)
    print(f"{'attack':<34} {'score':>5}  {'reason':<10} {'wall s':>7} {'/benign':>8} {'rss MB':>8}  note")
    row("benign verifier (reference)", base.outcome.score, base.outcome.reason, base.seconds, base.rss_growth_mb,
        base.seconds)

    def show(name: str, m: Measured, note: str = "") -> None:
        row(name, m.outcome.score, m.outcome.reason, m.seconds, m.rss_growth_mb, base.seconds, note)

    with tempfile.TemporaryDirectory() as tmp:
        listener = Listener()
        target = Path(tmp) / "pwned"
        show("fork_exec /bin/sh (write, connect)", run(shell_escape(target, listener.port)),
             f"outside file {'WRITTEN' if target.exists() else 'absent'}")
        show("network connect", run(network_connect(listener.port)))
        received = listener.close()
        print(f"{'':<34} listener received {len(received)} connections")
        (Path(tmp) / "victim").write_text("v")
        (Path(tmp) / "keep").write_text("k")
        show("dir_fd create/remove/rename", run(dir_fd_writes(Path(tmp))),
             "outside dir " + ("untouched" if sorted(os.listdir(tmp)) == ["keep", "victim"] else "CHANGED"))
    marker = token()
    show("setsid sleep holding the pipes", run(setsid_sleeper(marker)), f"{len(processes_with(marker))} left")
    marker = token()
    m = run(fork_bomb(marker))
    show("fork bomb", m, f"{m.outcome.detail.split(': ')[-1]}, {len(processes_with(marker))} left")
    show("memory bomb", run(MEMORY_BOMB))
    m = run(DISK_FILL)
    show("disk fill", m, m.outcome.detail.split(": ")[-1])
    show("stdout flood", run(STDOUT_FLOOD))
    model = RewardModel(VerifierKind.CUSTOM, LIMITS, custom_source=STDOUT_FLOOD, workers=8)
    m = measure(lambda: model.score(["q"] * 8, ["a"] * 8, [{}] * 8))
    show("8 stdout floods in parallel", m)
    secret = {"FORGE_S3_SECRET_KEY": "bench-" + token()}
    for name, source in (("read /proc/*/environ", ENVIRON_READ), ("pidfd_send_signal(trainer)", PIDFD_KILL)):
        out = run_in_trainer(source, {"trainer_pid": os.getpid()}, secret)
        result = out.result or {"score": float("nan"), "error": "trainer died"}
        row(name, result["score"], result["error"], out.seconds, "n/a", base.seconds,
            f"trainer process exit {out.returncode}")
    for hack, code in sorted(REWARD_HACKS.items()):
        show(f"python_tests: {hack}", run_tests(code, ["assert int(f()) == 1"]))


if __name__ == "__main__":
    main()
