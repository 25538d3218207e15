"""Starting the CLIs as a user's terminal would, whatever started the test run."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """Run in a child before exec (`preexec_fn`): Ctrl-C (SIGINT) back to its default action.

    A shell ignores SIGINT in the background jobs it starts without job control (`cmd &` in a script,
    nohup under one), and an ignored signal stays ignored across exec; Python then installs no
    KeyboardInterrupt handler, so a test that stops a CLI with Ctrl-C would wait for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
