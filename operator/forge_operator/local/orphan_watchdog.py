"""The orphan watchdog of one `forge run` process: `python -m forge_operator.local.orphan_watchdog OWNER`.

Its stdin is the read end of a pipe whose write end only the `forge run` process holds. When that
process is gone, however it died (SIGKILL included), the read sees EOF and the watchdog ends every
process whose workload token starts with OWNER: SIGTERM first (a trainer checkpoints on it), SIGKILL
for what is left after the grace period. It then exits; after a clean `forge run` there is nothing to end."""

from __future__ import annotations

import signal
import sys

from forge_operator.local.processes import end_tree

GRACE_S = 10.0


def main(argv: list[str]) -> int:
    """Wait for the owner to be gone, then end every process tagged with its token prefix."""
    if len(argv) != 1 or not argv[0]:
        print("usage: python -m forge_operator.local.orphan_watchdog OWNER_TOKEN_PREFIX", file=sys.stderr)
        return 2
    # Ctrl-C in the terminal is forge run's to handle; the watchdog must outlive it to clean up
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while sys.stdin.buffer.read(65536):
        pass
    end_tree(argv[0], grace=GRACE_S, prefix=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
