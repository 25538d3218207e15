"""Object store access for the operator: the workloads' store (one implementation, in
forge_trainer.store) plus what only the operator does: read progress, delete per retention, audit."""

from forge_trainer.store import ObjectStore, StoreError, open_uri

__all__ = ["ObjectStore", "StoreError", "open_uri"]
