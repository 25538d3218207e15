"""The process group a training worker belongs to: one plain process, or a torchrun worker group
(gloo on CPU, nccl on GPU), and the few collectives the loop needs."""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from datetime import timedelta
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT_ENV = "FORGE_COLLECTIVE_TIMEOUT_SECONDS"


@dataclass(frozen=True)
class Runtime:
    """Where this worker sits in its group."""

    rank: int
    """Global rank (0 writes progress, metrics and exports)."""
    world_size: int
    """Workers in the group."""
    local_rank: int
    """Rank on this node (picks the GPU)."""
    device: torch.device
    """Device this worker computes on."""
    distributed: bool
    """A process group was initialised (torchrun)."""

    @property
    def is_main(self) -> bool:
        """This worker is rank 0."""
        return self.rank == 0


def init_runtime(force_cpu: bool = False) -> Runtime:
    """Join the torchrun worker group when launched by torchrun (WORLD_SIZE set), else run alone."""
    keep_freed_host_memory()
    use_cuda = torch.cuda.is_available() and not force_cpu
    if "WORLD_SIZE" not in os.environ or "MASTER_ADDR" not in os.environ:
        return Runtime(0, 1, 0, torch.device("cuda", 0) if use_cuda else torch.device("cpu"), False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    timeout = timedelta(seconds=float(os.environ.get(COLLECTIVE_TIMEOUT_ENV, "600")))
    if use_cuda:
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return Runtime(dist.get_rank(), dist.get_world_size(), local_rank, device, True)


_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "LD_PRELOAD")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_freed_host_memory() -> bool:
    """Have glibc's malloc keep freed blocks (up to TRIM_THRESHOLD_BYTES) for reuse and serve blocks
    below MMAP_THRESHOLD_BYTES from its heap rather than fresh mmaps. A training step frees and
    reallocates the same activation and gradient buffers every step; with the default, adaptive
    thresholds they are often handed back to the kernel and faulted in (zeroed) again: on the tiny CPU
    preset about 3000 page faults per step, several percent of the step time. Nothing is done where
    the allocator is configured already (MALLOC_*_ variables, LD_PRELOAD of another allocator) or
    the C library is not glibc. Returns whether the thresholds were set."""
    if any(os.environ.get(name) for name in _MALLOC_ENV):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False


def shutdown(runtime: Runtime) -> None:
    """Leave the process group."""
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(runtime: Runtime) -> None:
    """Wait for every worker."""
    if runtime.distributed:
        dist.barrier()


def all_reduce_sum(runtime: Runtime, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `values` over the group (a new tensor on the same device)."""
    out = values.detach().clone()
    if runtime.distributed:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def broadcast_object(runtime: Runtime, obj: Any) -> Any:
    """Rank 0's `obj` on every worker."""
    if not runtime.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(runtime: Runtime, obj: Any) -> list[Any]:
    """Every worker's `obj`, in rank order, on every worker."""
    if not runtime.distributed:
        return [obj]
    out: list[Any] = [None] * runtime.world_size
    dist.all_gather_object(out, obj)
    return out


class TerminateFlag:
    """Remembers a SIGTERM so a training loop can checkpoint at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        with contextlib.suppress(ValueError):  # not the main thread (in-process callers): no handler
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
