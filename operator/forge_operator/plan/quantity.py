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
