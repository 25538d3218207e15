"""Object store access for the operator: the workloads' store (one implementation, in
forge_trainer.store) plus what only the operator does: a client with short timeouts (connection.py),
reads a reconcile waits on only briefly, with backoff from a failing endpoint (reader.py), progress
(artifacts.py), and deletion per retention with an append-only report (deletion.py)."""

from forge_trainer.store import ObjectStore, StoreError, open_uri

__all__ = ["ObjectStore", "StoreError", "open_uri"]
