"""The base model a run starts from (`initModel`: a Hugging Face model directory, local or in the object
store), read the same way by continued pretraining, SFT and RL: each worker fills only its own shard of
a model built on the meta device (`hf_import.load_weights`), and the main worker records the
directory's digest for the run's lineage.

A local directory is read in place; a model in the object store is downloaded once per node (by its
local rank 0, into a directory the node's workers share, removed once they have all read it), so eight
workers of a node do not keep eight copies of the base on its disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from forge_trainer.config import TrainConfig
from forge_trainer.errors import ConfigError, WorkloadError
from forge_trainer.model.args import ModelArgs
from forge_trainer.model.files import model_dir_digest
from forge_trainer.model.hf_import import (
    HFImportError,
    fetch_model_dir,
    load_weights,
    model_files,
    read_config,
    read_tensor,
)
from forge_trainer.model.transformer import Transformer
from forge_trainer.store import StoreError, split_uri
from forge_trainer.train.runtime import Runtime, barrier


def _none(_: str) -> bool:
    return False


@dataclass(frozen=True)
class BaseModel:
    """A base model directory this node can read, while `open_base_model` holds it open."""

    uri: str
    """`initModel` as the config names it."""
    directory: Path
    """The local directory (the node's copy of a model in the store)."""
    args: ModelArgs
    """The model config.json describes."""
    digest: str | None
    """`sha256:<hex>` over the files read of the directory (`model.files`); computed by the main worker
    only (None on the others)."""

    def load(self, model: Transformer, fresh: Callable[[str], bool] = _none) -> None:
        """Fill `model` (materialised, sharded or not) with the base's weights, each worker its own rows;
        `fresh` names parameters the base does not have (adapters)."""
        with self._errors():
            load_weights(model, self.directory, fresh)

    def read_weight(self, name: str, shape: torch.Size, intermediate: int) -> Tensor:
        """The whole float32 tensor of our parameter `name` (one tensor in memory: QLoRA quantizes it)."""
        with self._errors():
            return read_tensor(self.directory, name, shape, intermediate)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """A directory that does not fit is the spec's fault; a file that cannot be read is the store's."""
        try:
            yield
        except HFImportError as exc:
            raise ConfigError(f"initModel {self.uri}: {exc}") from exc
        except OSError as exc:
            raise WorkloadError(f"initModel {self.uri}: {exc}") from exc


@contextlib.contextmanager
def open_base_model(config: TrainConfig, runtime: Runtime) -> Iterator[BaseModel | None]:
    """The base `initModel` names, readable on this node for the duration of the block (None when the run
    has no base). Collective: every worker enters and leaves it, and loads inside it."""
    if not config.init_model:
        yield None
        return
    uri = config.init_model
    remote = split_uri(uri)[0] != "file"
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", str(os.getpid()) if not runtime.distributed else "")
    shared = Path(tempfile.gettempdir()) / f"forge-base-{hashlib.sha256(f'{run_id} {uri}'.encode()).hexdigest()[:16]}"
    try:
        try:
            if remote and runtime.local_rank == 0:
                shutil.rmtree(shared, ignore_errors=True)  # a copy a killed worker group left half-written
                fetch_model_dir(uri, shared, config.store)
            barrier(runtime)  # the node's copy is complete
            local = shared if remote else fetch_model_dir(uri, shared, config.store)
            _, args = read_config(local)
            # one streamed pass over the files, by one worker: the run's lineage names its exact base
            digest = model_dir_digest(local, model_files(local)) if runtime.is_main else None
        except (StoreError, OSError) as exc:
            raise WorkloadError(f"initModel {uri}: {exc}") from exc
        except HFImportError as exc:
            raise ConfigError(f"initModel {uri}: {exc}") from exc
        yield BaseModel(uri, local, args, digest)
        barrier(runtime)  # every worker of the node has read its rows
    finally:
        if remote and runtime.local_rank == 0:
            shutil.rmtree(shared, ignore_errors=True)
