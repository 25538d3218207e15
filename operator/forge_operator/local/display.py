"""What `forge run` shows: a live rich display with a progress bar per resource on a terminal,
plain log lines otherwise (CI, pipes). When an rl run succeeds, a few lines more: its sampled reward
and pass rate per step as sparklines, and its greedy pass rate on the eval tasks before and after."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from forge_operator.api import DATASET, KINDS, TRAINING_RUN
from forge_operator.api.dataset import DatasetPhase
from forge_operator.api.deployment import DeploymentPhase
from forge_operator.api.training import RunPhase
from forge_trainer.config.store import LOGS_DIR
from forge_trainer.store import StoreError, join_key, open_uri

SHORT = {info.kind: info.short_names[0] for info in KINDS}
PENDING, RUNNING, FAILED = RunPhase.PENDING, RunPhase.RUNNING, RunPhase.FAILED
"""The phases every kind shares (the same words in DatasetPhase and DeploymentPhase)."""
DONE = {DatasetPhase.READY, RunPhase.SUCCEEDED, DeploymentPhase.AVAILABLE}
"""The phases in which a resource did what it was for."""
SETTLED = DONE | {FAILED}
PLAIN_EVERY = 10.0
SPARKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 40


class Display(Protocol):
    """Where the runner reports what happens."""

    def add(self, kind: str, name: str) -> None: ...
    def update(self, kind: str, name: str, record: dict[str, Any]) -> None: ...
    def note(self, kind: str, name: str, message: str) -> None: ...
    def serving(self, name: str, endpoint: str, model: str) -> None: ...
    def close(self) -> None: ...


def detail(kind: str, record: dict[str, Any]) -> str:
    """One line of what matters for a resource right now."""
    st = record.get("status") or {}
    phase = st.get("phase") or PENDING
    if kind == DATASET.kind:
        counts = st.get("counts") or {}
        parts = [phase, f"{st.get('documentsDone') or 0} documents"]
        if st.get("stage") and phase == RUNNING:
            parts.append(str(st["stage"]))
        if counts.get("tokens"):
            parts.append(f"{counts.get('documentsKept', 0)} kept, {counts['tokens']} tokens")
        if st.get("digest"):
            parts.append(str(st["digest"])[:19])
        return "  ".join(parts)
    if kind == TRAINING_RUN.kind:
        parts = [phase]
        if st.get("progress"):
            parts.append(f"step {st['progress']}")
        if st.get("loss") is not None:
            parts.append(f"loss {st['loss']:.3f}")
        if st.get("meanReward") is not None:
            parts.append(f"reward {st['meanReward']:.2f}")
        if st.get("tokensPerSecond"):
            parts.append(f"{st['tokensPerSecond']:.0f} tok/s")
        return "  ".join(parts)
    return "  ".join(p for p in (phase, st.get("endpoint") or "") if p)


def sparkline(values: list[float], width: int = SPARK_WIDTH) -> str:
    """Values in [0, 1] as one line of block characters, averaged into at most `width` columns."""
    if not values:
        return ""
    cols = min(width, len(values))
    out = []
    for c in range(cols):
        chunk = values[c * len(values) // cols:(c + 1) * len(values) // cols] or values[-1:]
        level = min(max(sum(chunk) / len(chunk), 0.0), 1.0)
        out.append(SPARKS[round(level * (len(SPARKS) - 1))])
    return "".join(out)


def read_rl_steps(output_uri: str) -> list[dict[str, Any]]:
    """The step records of a run's step log, in step order ([] when it cannot be read)."""
    by_step: dict[int, dict[str, Any]] = {}
    try:
        store, prefix = open_uri(output_uri)
        for obj in store.list(join_key(prefix, LOGS_DIR) + "/"):
            for line in store.get_bytes(obj.key).splitlines():
                record = json.loads(line) if line.strip() else None
                if isinstance(record, dict) and isinstance(record.get("step"), int):
                    by_step[record["step"]] = record
    except (StoreError, OSError, ValueError):  # a curve is a nicety: no curve rather than a failed run
        return []
    return [by_step[k] for k in sorted(by_step)]


def rl_summary(record: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> list[str]:
    """For a succeeded rl run: its sampled reward and pass rate per step as sparklines, and the greedy pass
    rate on its eval tasks before the first step and after the last ([] for any other resource)."""
    st = record.get("status") or {}
    if st.get("phase") != RunPhase.SUCCEEDED or st.get("meanReward") is None:
        return []
    if steps is None:
        steps = read_rl_steps(str(st.get("outputUri") or ""))
    lines, shown = [], []
    for key, label in (("mean_reward", "reward (sampled)   "), ("success_rate", "pass rate (sampled)")):
        values = [float(s[key]) for s in steps if isinstance(s.get(key), int | float)]
        if values and values not in shown:  # a pass/fail verifier's reward is its pass rate: one line
            shown.append(values)
            lines.append(f"  {label} {sparkline(values)}  {values[0]:.2f} -> {values[-1]:.2f} over {len(values)} steps")
    initial, final = st.get("initialEvalMetrics") or {}, st.get("evalMetrics") or {}
    if "pass_rate" in final:
        tasks = final.get("tasks")
        told = f"{int(tasks)} eval tasks" if isinstance(tasks, int | float) else "eval tasks"
        interval = (f", 95% CI {final['pass_rate_low']:.2f}-{final['pass_rate_high']:.2f}"
                    if "pass_rate_low" in final and "pass_rate_high" in final else "")
        if "pass_rate" in initial:
            change = final["pass_rate"] - initial["pass_rate"]
            lines.append(f"  pass rate (greedy, {told}): {initial['pass_rate']:.2f} before -> "
                         f"{final['pass_rate']:.2f} after ({change:+.2f}{interval})")
        else:
            lines.append(f"  pass rate (greedy, {told}): {final['pass_rate']:.2f}{interval}")
    return lines


def _fraction(kind: str, record: dict[str, Any]) -> tuple[float, float | None]:
    st = record.get("status") or {}
    if kind == TRAINING_RUN.kind:
        return float(st.get("step") or 0), float(st["totalSteps"]) if st.get("totalSteps") else None
    done = st.get("phase") in DONE
    return (1.0, 1.0) if done else (0.0, None)


def _failed(record: dict[str, Any]) -> bool:
    return (record.get("status") or {}).get("phase") == FAILED


class LiveDisplay:
    """A rich progress bar per resource."""

    def __init__(self, console: Console | None = None) -> None:
        self.progress = Progress(TextColumn("{task.description:<22}"), BarColumn(bar_width=28),
                                 TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
                                 console=console or Console(), transient=False)
        self.tasks: dict[tuple[str, str], TaskID] = {}
        self.settled: set[tuple[str, str]] = set()
        self.progress.start()

    def add(self, kind: str, name: str) -> None:
        self.tasks[(kind, name)] = self.progress.add_task(f"{SHORT.get(kind, kind)}/{name}", total=None,
                                                          detail=PENDING, start=False)

    def update(self, kind: str, name: str, record: dict[str, Any]) -> None:
        task = self.tasks[(kind, name)]
        done, total = _fraction(kind, record)
        phase = (record.get("status") or {}).get("phase")
        if phase and phase != PENDING:
            self.progress.start_task(task)
        text = detail(kind, record)
        self.progress.update(task, completed=done, total=total,
                             detail=f"[red]{text}[/red]" if _failed(record) else text)
        if phase in SETTLED:
            self.progress.stop_task(task)
        if phase in SETTLED and (kind, name) not in self.settled:
            self.settled.add((kind, name))
            for line in rl_summary(record) if kind == TRAINING_RUN.kind else []:
                self.progress.console.print(line, markup=False, highlight=False)

    def note(self, kind: str, name: str, message: str) -> None:
        self.progress.console.print(f"{SHORT.get(kind, kind)}/{name}: {message}")

    def serving(self, name: str, endpoint: str, model: str) -> None:
        console = self.progress.console
        console.print(f"\n[bold green]fdep/{name} is serving[/] at [bold]{endpoint}[/] (model \"{model}\")")
        console.print(f"  curl {endpoint}/chat/completions -H 'Content-Type: application/json' \\\n"
                      f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
                      f"\"content\": \"Which is larger, 3 or 8?\"}}]}}'", markup=False, highlight=False, soft_wrap=True)
        console.print("Ctrl-C stops it (`forge get` in another terminal shows every resource).")

    def close(self) -> None:
        self.progress.stop()


class PlainDisplay:
    """One line per change of phase, and a progress line every few seconds while running."""

    def __init__(self) -> None:
        self.last: dict[tuple[str, str], tuple[str, float]] = {}

    def _print(self, text: str) -> None:
        print(text, flush=True)

    def add(self, kind: str, name: str) -> None:
        self.last[(kind, name)] = ("", 0.0)

    def update(self, kind: str, name: str, record: dict[str, Any]) -> None:
        phase = (record.get("status") or {}).get("phase") or PENDING
        prev_phase, at = self.last.get((kind, name), ("", 0.0))
        now = time.monotonic()
        if phase != prev_phase or now - at >= PLAIN_EVERY:
            self.last[(kind, name)] = (phase, now)
            self._print(f"{SHORT.get(kind, kind)}/{name}: {detail(kind, record)}")
            message = (record.get("status") or {}).get("message")
            if phase in SETTLED - {DeploymentPhase.AVAILABLE} and phase != prev_phase and message:
                self._print(f"  {message}")
            if kind == TRAINING_RUN.kind and phase != prev_phase:
                for line in rl_summary(record):
                    self._print(line)

    def note(self, kind: str, name: str, message: str) -> None:
        self._print(f"{SHORT.get(kind, kind)}/{name}: {message}")

    def serving(self, name: str, endpoint: str, model: str) -> None:
        self._print(f"fdep/{name} is serving at {endpoint} (model \"{model}\"); Ctrl-C stops it")

    def close(self) -> None:
        sys.stdout.flush()


def make_display(plain: bool | None = None) -> Display:
    """The live display on a terminal, plain lines otherwise (or as asked)."""
    if plain is None:
        plain = not sys.stdout.isatty()
    return PlainDisplay() if plain else LiveDisplay()
