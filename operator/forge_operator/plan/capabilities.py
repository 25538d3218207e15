"""What the Kubernetes API server can do for Forge, by its version: the features Forge uses that an older
server lacks, and what each absence means for users. Forge is fully supported from Kubernetes 1.25; from
1.20 it runs with the degradations named here. Pure: the operator reads `/version` at start-up and asks here.

A version is what the server reports; a feature that is off by default in it (an alpha feature gate) counts
as missing, because that is what a cluster gets unless its administrator turned the gate on."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FULLY_SUPPORTED = (1, 25)
"""The oldest Kubernetes version on which nothing is missing."""
OLDEST = (1, 20)
"""The oldest Kubernetes version the chart installs on (helm/forge-operator/Chart.yaml kubeVersion)."""


HPA_V2 = "hpa-autoscaling-v2"
"""HorizontalPodAutoscaler in autoscaling/v2 (a server without it serves autoscaling/v2beta2)."""


@dataclass(frozen=True)
class Capability:
    """A Kubernetes feature Forge uses, from which version it is on by default, and what users see without."""

    name: str
    """Short id: the `capability` label of forge_server_capability_missing."""
    since: tuple[int, int]
    """(major, minor) of the first Kubernetes version that has it on by default."""
    feature: str
    """The feature in Kubernetes' own words."""
    without: str
    """What a user sees on a server that lacks it."""


CAPABILITIES = (
    Capability(
        "crd-validation-rules", (1, 25),
        "CRD validation rules (x-kubernetes-validations, CEL; on by default from 1.25)",
        "the API server accepts Forge resources that break a cross-field rule (e.g. minNodes > maxNodes); the "
        "operator still checks every spec and sets InvalidSpec instead of running it"),
    Capability(
        "job-suspend", (1, 22),
        "Job spec.suspend (on by default from 1.22)",
        "suspending a training run (spec.suspend, a spent GPU budget) deletes its Job instead of pausing it; "
        "resuming starts a new attempt from the latest checkpoint"),
    Capability(
        "indexed-jobs", (1, 22),
        "Indexed Jobs (completionMode: Indexed; on by default from 1.22)",
        "training pods carry no completion index; runs still train (their pods meet at the run's rendezvous "
        "store, not by pod name)"),
    Capability(
        HPA_V2, (1, 23),
        "HorizontalPodAutoscaler autoscaling/v2 (from 1.23)",
        "a ForgeDeployment's autoscaler (spec.autoscaling) is created in autoscaling/v2beta2, the same CPU target"),
)

_VERSION = re.compile(r"^v?(\d+)\.(\d+)")
_DIGITS = re.compile(r"^(\d+)")


def parse_server_version(info: Mapping[str, Any]) -> tuple[int, int] | None:
    """(major, minor) from the API server's `/version` answer (gitVersion such as `v1.20.15-eks-1`, else
    major and minor such as `1` and `20+`); None when it names no version."""
    match = _VERSION.match(str(info.get("gitVersion") or ""))
    if match:
        return int(match.group(1)), int(match.group(2))
    major, minor = (_DIGITS.match(str(info.get(key) or "")) for key in ("major", "minor"))
    if major and minor:
        return int(major.group(1)), int(minor.group(1))
    return None


def missing_capabilities(version: tuple[int, int]) -> list[Capability]:
    """The capabilities a server of `version` lacks, in CAPABILITIES order."""
    return [c for c in CAPABILITIES if version < c.since]


def describe_missing(version: tuple[int, int], missing: list[Capability]) -> str:
    """One message naming every missing capability and what it means for users (the start-up Event; under
    1 kB, what an Event's message may hold)."""
    head = (f"Kubernetes {version[0]}.{version[1]} is older than {FULLY_SUPPORTED[0]}.{FULLY_SUPPORTED[1]}, "
            f"from which Forge is fully supported; missing:")
    return " ".join([head, *(f"[{c.name}] {c.feature}: {c.without}." for c in missing)])
