"""Reading a workload's progress file."""

from __future__ import annotations

import json
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from forge_operator.store.connection import StoreTimeouts, open_store
from forge_operator.store.reader import StoreAnswered
from forge_trainer.config import StoreConfig
from forge_trainer.store import join_key

PROGRESS = "progress.json"
M = TypeVar("M", bound=BaseModel)


def read_progress(output_uri: str, store_config: StoreConfig, model: type[M],
                  timeouts: StoreTimeouts | None = None) -> M | None:
    """The workload's progress.json under `output_uri`, or None if it has not written one yet. A file that
    does not parse is StoreAnswered naming the URI; a store that fails is StoreError."""
    store, prefix = open_store(output_uri, store_config, timeouts)
    key = join_key(prefix, PROGRESS)
    if not store.exists(key):
        return None
    raw = store.get_bytes(key)
    try:
        return model.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise StoreAnswered(f"{store.uri(key)}: unreadable progress file: {exc}") from exc
