"""One part of the check in a process of its own (the runner starts it and kills it at its budget):

    python -m benchmarks.gpu_check.part NAME --context context.json --result result.json

The part's `run(ctx)` records each measurement as it finishes (`ctx.record`, or `ctx.attempt`, which
turns a failure of one variant into an error entry and goes on), so a part stopped at its budget still
reports what it measured. The result file holds {"status", "result", and "reason" or "error"}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.gpu_check.plan import Sizes, sizes_for

T = TypeVar("T")


class Skip(Exception):
    """A part or variant cannot run here (a package or the GPU is missing); the message says why."""


OUR_PACKAGES = ("forge_trainer", "forge_operator", "benchmarks")


def missing_package(exc: BaseException) -> str | None:
    """The third-party package whose absence `exc` reports (a skip), or None (a failure: ours is broken)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    return None if top in OUR_PACKAGES else top


def describe(exc: BaseException) -> str:
    """One line naming the exception and its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


def write_json(path: Path, obj: Any) -> None:
    """Write `obj` as JSON atomically (a reader never sees half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


@dataclass
class Context:
    """What a part knows: its sizes, device, deadline and what the env part measured."""

    name: str
    dry_run: bool
    sizes: Sizes
    deadline: float
    """time.monotonic() at which the runner stops this part."""
    env: dict[str, Any]
    """The env part's result (device, measured matmul peak), empty if it failed."""
    result_path: Path
    workdir: Path
    """A scratch directory of this part."""
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> Any:
        """The torch device measured on: the first GPU, or the CPU in a dry run."""
        import torch  # here, not at the top: the runner imports this module and must start without torch

        if self.dry_run:
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise Skip("no CUDA device (run with --dry-run to check the code paths on a CPU)")
        return torch.device("cuda", 0)

    def time_left(self) -> float:
        """Seconds of this part's budget left."""
        return self.deadline - time.monotonic()

    def record(self, key: str, value: Any) -> None:
        """Add one measurement to the result, written at once."""
        self.result[key] = value
        write_json(self.result_path, {"status": "running", "result": self.result})

    def attempt(self, key: str, fn: Callable[[], T], min_left_s: float = 0.0) -> T | None:
        """Record `fn()` under `key`, or why it was skipped or failed; the part goes on either way."""
        if self.time_left() < min_left_s:
            self.record(key, {"skipped": f"{self.time_left():.0f} s of the part's budget left, "
                                         f"{min_left_s:.0f} s needed"})
            return None
        try:
            value = fn()
        except Skip as exc:
            self.record(key, {"skipped": str(exc)})
            return None
        except Exception as exc:
            if (package := missing_package(exc)) is not None:
                self.record(key, {"skipped": f"package {package} is not installed"})
                return None
            self.record(key, {"error": describe(exc), "traceback": traceback.format_exc(limit=-6)})
            return None
        self.record(key, value)
        return value


def main() -> int:
    """Run one part; its outcome goes to --result (the exit status is 0 unless the runner must look)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--context", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    a = parser.parse_args()
    raw = json.loads(a.context.read_text())
    ctx = Context(name=a.name, dry_run=raw["dry_run"], sizes=sizes_for(raw["dry_run"]),
                  deadline=time.monotonic() + raw["budget_s"], env=raw.get("env", {}), result_path=a.result,
                  workdir=Path(raw["workdir"]))
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    write_json(a.result, {"status": "running", "result": {}})
    try:
        module = importlib.import_module(f"benchmarks.gpu_check.parts.{a.name}")
        module.run(ctx)
    except Skip as exc:
        write_json(a.result, {"status": "skipped", "reason": str(exc), "result": ctx.result})
        return 0
    except Exception as exc:
        if (package := missing_package(exc)) is not None:
            write_json(a.result, {"status": "skipped", "reason": f"package {package} is not installed",
                                  "result": ctx.result})
            return 0
        write_json(a.result, {"status": "error", "error": describe(exc), "traceback": traceback.format_exc(limit=-8),
                              "result": ctx.result})
        traceback.print_exc()
        return 1
    write_json(a.result, {"status": "ok", "result": ctx.result})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
