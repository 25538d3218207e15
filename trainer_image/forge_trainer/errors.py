"""The workload errors every layer may raise; `forge-trainer` (cli.py) only catches them.

A `WorkloadError` ends a workload with exit status 1 and its message as the one-line reason (also
written to progress.json); a `ConfigError` is bad configuration, exit status 2, naming the field.
"""

from __future__ import annotations


class WorkloadError(Exception):
    """A workload failed for a reason a person can act on; the message is that reason."""

    exit_code = 1


class ConfigError(WorkloadError):
    """The workload's configuration is invalid; the message names the file and field."""

    exit_code = 2
