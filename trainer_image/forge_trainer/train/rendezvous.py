"""The rendezvous of a training run's torchrun agents.

`serve_store` is the run's own c10d rendezvous store: a `TCPStore` server in a pod of its own behind a
Service, so that no agent hosts it and no agent needs another pod's hostname. Losing any training pod
then costs a re-rendezvous of the others, never the store (torchrun agents join it with
`--rdzv-conf=...,is_host=false`).

`run_torchrun` is torchrun itself, except that SIGTERM makes an agent leave at once while it waits in
the rendezvous: torchrun installs its SIGTERM handler only when it starts workers, and before that the
signal keeps its default action, which the kernel ignores for a container's process 1 — a pod waiting
for peers sat out its whole termination grace period. Once workers run, torchrun's own handler takes
over (it forwards SIGTERM to the workers, which checkpoint)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from datetime import timedelta
from types import FrameType

from forge_trainer.errors import ConfigError, WorkloadError

log = logging.getLogger(__name__)

DEFAULT_PORT = 29400
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def serve_store(port: int = DEFAULT_PORT, *, host: str = "0.0.0.0", stop: threading.Event | None = None) -> None:
    """Serve a c10d `TCPStore` on `port` until SIGTERM/SIGINT (or until `stop` is set)."""
    from torch.distributed import TCPStore  # type: ignore[attr-defined]  # re-exported, not in __all__

    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: not a TCP port (1-65535)")
    stop = stop or threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        try:
            # wait_for_workers=False: agents come and go for the whole run; the timeout bounds a client's
            # wait on a key, which the rendezvous sets itself
            store = TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(minutes=10))
        except (RuntimeError, ValueError) as exc:
            raise WorkloadError(f"cannot listen on port {port}: {str(exc).splitlines()[0]}") from exc
        log.info("rendezvous store listening on port %d", store.port)
        stop.wait()
        log.info("rendezvous store on port %d stopped (%s)", store.port, received[0] if received else "asked to")
        del store
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_torchrun(args: list[str]) -> int:
    """Run torchrun with `args`; SIGTERM before its workers start ends it at once. Returns the exit status."""
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.run import main as torchrun_main

    def leave(signum: int, _frame: FrameType | None) -> None:
        # what torchrun's own handler raises once workers run: the agent shuts down without closing
        # the rendezvous, so the other agents go on without this one
        raise SignalException(f"received {signal.Signals(signum).name}", sigval=signal.Signals(signum))

    signal.signal(signal.SIGTERM, leave)
    try:
        torchrun_main(args)
    except SignalException as exc:
        print(f"forge-trainer torchrun: terminated by {exc.sigval.name}", file=sys.stderr)
        return 128 + int(exc.sigval)
    return 0
