"""Stages of processes run in order, a few at a time: a ForgeDataset prepared by several workers under
`forge run` (the processes `plan.dataset.prepare_stage_args` lists)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from forge_operator.local.processes import start_process


class StagedProcesses:
    """Runs `stages` (each a list of argument vectors) one after another, at most `slots` processes at once;
    a stage starts when every process of the one before exited 0. `poll` is `Popen.poll` for the whole."""

    def __init__(self, stages: list[list[list[str]]], slots: int, token: str, log_file: Path) -> None:
        self.pending = [list(stage) for stage in stages]
        self.slots = max(1, slots)
        self.token, self.log_file = token, log_file
        self.running: list[subprocess.Popen[bytes]] = []
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """None while processes run or wait to; 0 once every stage finished; the exit status of the first
        process that failed (nothing more is started; the caller ends the others)."""
        if self.returncode is not None:
            return self.returncode
        still = []
        for proc in self.running:
            code = proc.poll()
            if code is None:
                still.append(proc)
            elif code != 0:
                self.returncode = code
                return code
        self.running = still
        while self.pending and not self.pending[0] and not self.running:
            self.pending.pop(0)  # a stage is done when all its processes were started and have exited
        if not self.pending:
            self.returncode = 0
            return 0
        stage = self.pending[0]
        while stage and len(self.running) < self.slots:
            self.running.append(start_process(stage.pop(0), self.token, self.log_file))
        return None
