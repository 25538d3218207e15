"""A TCP server that accepts connections and never answers: the object store that hangs."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class Blackhole:
    """Listens on loopback, accepts every connection, reads nothing and sends nothing."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self._server.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._server.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        """Stop listening and drop every held connection (a client blocked on one gets EOF)."""
        self._server.close()
        for conn in self.accepted:
            with contextlib.suppress(OSError):
                conn.close()


@contextlib.contextmanager
def blackhole() -> Iterator[Blackhole]:
    """A Blackhole for the duration of the block."""
    hole = Blackhole()
    try:
        yield hole
    finally:
        hole.close()
