"""`--prepare`: download exactly the wheels of scripts/gpu-check-wheels.txt for CPython 3.12 manylinux
x86_64 into .whl/ (which git ignores), check they fit the device tool's 64 MiB working-tree limit, and
print how to install them on the GPU machine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WHEEL_LIST = ROOT / "scripts" / "gpu-check-wheels.txt"
WHEEL_DIR = ROOT / ".whl"
LIMIT_BYTES = 64 << 20
"""What travels to the device machine (working tree + carried paths) is at most 64 MiB."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
INSTALL = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "
           "--target /tmp/site .whl/*.whl")


def requirements(path: Path = WHEEL_LIST) -> dict[str, str]:
    """name -> pinned version of every line `name==version` (comments and blank lines skipped).

    Raises ValueError naming the line that is not an exact pin."""
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", line)
        if match is None:
            raise ValueError(f"{path.name}:{number}: {line!r} is not an exact pin name==version")
        pins[normalise(match.group(1))] = match.group(2)
    return pins


def normalise(name: str) -> str:
    """A distribution name as wheel file names spell it (PEP 503 normalised, '-' as '_')."""
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_name(path: Path) -> tuple[str, str]:
    """(normalised name, version) of a wheel file."""
    name, version = path.name.split("-")[:2]
    return normalise(name), version


def tree_bytes() -> int | None:
    """Bytes of what the device tool sends besides carried paths: tracked and untracked, not ignored files
    (None where git cannot say)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                                capture_output=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((ROOT / n).stat().st_size for n in listed.split("\0") if n and (ROOT / n).is_file())


def prepare(dest: Path = WHEEL_DIR) -> int:
    """Download the listed wheels into `dest` (removing wheels no longer listed); print the total size and
    the install command. Returns the exit status."""
    pins = requirements()
    dest.mkdir(exist_ok=True)
    for stale in dest.glob("*.whl"):
        if pins.get(wheel_name(stale)[0]) != wheel_name(stale)[1]:
            stale.unlink()
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
           "--implementation", "cp", *platforms, "--dest", str(dest), *(f"{n}=={v}" for n, v in pins.items())]
    if subprocess.run(cmd).returncode != 0:
        print("gpu-check --prepare: pip could not download every wheel (see above)", file=sys.stderr)
        return 1
    wheels = {wheel_name(p): p for p in dest.glob("*.whl")}
    missing = [f"{n}=={v}" for n, v in pins.items() if (n, v) not in wheels]
    if missing:
        print(f"gpu-check --prepare: no wheel in {dest} for {', '.join(missing)}", file=sys.stderr)
        return 1
    total = sum(p.stat().st_size for p in wheels.values())
    tree = tree_bytes() or 0
    print(f"{len(wheels)} wheels in {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}: "
          f"{total / (1 << 20):.1f} MiB; with the working tree ({tree / (1 << 20):.1f} MiB) "
          f"{(total + tree) / (1 << 20):.1f} MiB of the device tool's {LIMIT_BYTES >> 20} MiB")
    if total + tree >= LIMIT_BYTES:
        print("gpu-check --prepare: the wheels and the working tree exceed the device tool's 64 MiB",
              file=sys.stderr)
        return 1
    print(f"on the GPU machine (device tool `run`, carry [\".whl\"]):\n  {INSTALL} && "
          "PYTHONPATH=/tmp/site scripts/gpu-check")
    return 0
