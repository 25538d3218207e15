"""Kubernetes resource quantities, parsed just enough to size a TorchX Resource."""

from __future__ import annotations

import re

_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
           "Ti": 2**40}


def parse_quantity(value: str, field: str) -> float:
    """A quantity such as "500m", "8", "64Gi" as a number (cores or bytes); the error names the field."""
    match = re.fullmatch(r"([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?", value.strip())
    if not match:
        raise ValueError(f"{field}: {value!r} is not a Kubernetes quantity (e.g. 500m, 8, 64Gi)")
    number, suffix = float(match.group(1)), match.group(2) or ""
    return number / 1000 if suffix == "m" else number * _SUFFIX[suffix]


def plan_shm_size(shm_size: str | None, memory: str | None, field: str, default: str = "16Gi") -> str:
    """The sizeLimit of a memory-backed /dev/shm. Its pages count against the pod's memory limit, so an
    explicit `shm_size` is capped at `memory` (as the kubelet caps the tmpfs); unset, it is half of
    `memory` at most `default`, or `default` when no memory limit is set. Errors name `<field>.<key>`."""
    limit = parse_quantity(memory, f"{field}.memory") if memory else None
    if shm_size is not None:
        size = parse_quantity(shm_size, f"{field}.shmSize")
        return memory if memory and limit is not None and size > limit else shm_size
    if limit is None or limit // 2 >= parse_quantity(default, "default"):
        return default
    mebibytes = max(1, int(limit // 2 // 2**20))
    return f"{mebibytes // 1024}Gi" if mebibytes % 1024 == 0 else f"{mebibytes}Mi"
