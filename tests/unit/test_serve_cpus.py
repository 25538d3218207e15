"""On the CPU the server leaves one of the CPUs its pod may use to the HTTP event loop."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forge_trainer.serve.server import available_cpus


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("100000 100000\n", 1),
    ("150000 100000\n", 2),  # a limit of 1.5 CPUs still runs two threads part of the time
    ("max 100000\n", None),
    (None, None),
])
def test_cpu_limit_of_the_cgroup_caps_the_cores(tmp_path: Path, cpu_max: str | None, expected: int | None) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    cores = len(os.sched_getaffinity(0))
    assert available_cpus(path) == (cores if expected is None else min(cores, expected))
