"""`scripts/gpu-check`: measure on one CUDA GPU what only a GPU can show, in under 8 minutes.

    scripts/gpu-check                 every part on the GPU; report to $OUT, else ./gpu-check/
    scripts/gpu-check --dry-run       every part end to end on the CPU with tiny sizes (the test suite runs it)
    scripts/gpu-check --only serve    the env part and the named parts (comma-separated)
    scripts/gpu-check --prepare       download the extra wheels into .whl/ (see docs/gpu-check.md)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks.gpu_check.plan import PARTS
from benchmarks.gpu_check.report import errors_in
from benchmarks.gpu_check.runner import REPORT_JSON, REPORT_TEXT, run_check
from benchmarks.gpu_check.wheels import prepare


def main(argv: list[str] | None = None) -> int:
    """Run the check (or --prepare); the exit status is 1 when anything failed (a part or one of its
    measurements) or a part ran out of time."""
    parser = argparse.ArgumentParser(prog="scripts/gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="run every part on the CPU with tiny sizes")
    parser.add_argument("--prepare", action="store_true", help="download the extra wheels into .whl/")
    parser.add_argument("--only", help=f"comma-separated parts among {', '.join(p.name for p in PARTS)}")
    parser.add_argument("--out", type=Path, help="report directory (default: $OUT, else ./gpu-check)")
    a = parser.parse_args(argv)
    if a.prepare:
        return prepare()
    only = [n.strip() for n in a.only.split(",") if n.strip()] if a.only else None
    unknown = sorted(set(only or []) - {p.name for p in PARTS})
    if unknown:
        parser.error(f"--only: no part named {', '.join(unknown)} (parts: {', '.join(p.name for p in PARTS)})")
    out = a.out or Path(os.environ.get("OUT") or "gpu-check")
    report = run_check(out, a.dry_run, only)
    print((out / REPORT_TEXT).read_text())
    print(f"report: {out / REPORT_JSON}")
    return 1 if errors_in(report["parts"]) else 0


if __name__ == "__main__":
    sys.exit(main())
