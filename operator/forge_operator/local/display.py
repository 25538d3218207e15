"""What `forge run` shows: a live rich display with a progress bar per resource on a terminal,
plain log lines otherwise (CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from forge_operator.api import DATASET, KINDS, TRAINING_RUN
from forge_operator.api.dataset import DatasetPhase
from forge_operator.api.deployment import DeploymentPhase
from forge_operator.api.training import RunPhase

SHORT = {info.kind: info.short_names[0] for info in KINDS}
PENDING, RUNNING, FAILED = RunPhase.PENDING, RunPhase.RUNNING, RunPhase.FAILED
"""The phases every kind shares (the same words in DatasetPhase and DeploymentPhase)."""
DONE = {DatasetPhase.READY, RunPhase.SUCCEEDED, DeploymentPhase.AVAILABLE}
"""The phases in which a resource did what it was for."""
SETTLED = DONE | {FAILED}
PLAIN_EVERY = 10.0


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

    def note(self, kind: str, name: str, message: str) -> None:
        self.progress.console.print(f"{SHORT.get(kind, kind)}/{name}: {message}")

    def serving(self, name: str, endpoint: str, model: str) -> None:
        console = self.progress.console
        console.print(f"\n[bold green]fdep/{name} is serving[/] at [bold]{endpoint}[/] (model \"{model}\")")
        console.print(f"  curl {endpoint}/chat/completions -H 'Content-Type: application/json' \\\n"
                      f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
                      f"\"content\": \"What is 1 plus 2?\"}}]}}'", markup=False, highlight=False, soft_wrap=True)
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
