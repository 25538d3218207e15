"""What a kind contributes to the one reconcile (handlers/reconcile.py): a small adapter with one
method per step, each working on that kind's own resource, plan and observation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from forge_operator.api import KindInfo
from forge_operator.api.common import ResourceStatus
from forge_operator.resolve.lookup import Lookup
from forge_operator.status.conditions import Action, Waiting

R = TypeVar("R", bound=BaseModel)
S = TypeVar("S", bound=ResourceStatus)


@dataclass(frozen=True)
class Pass(Generic[R, S]):
    """What one reconcile knows once the body is parsed."""

    body: dict[str, Any]
    resource: R
    prev: S
    generation: int
    now: datetime

    @property
    def namespace(self) -> str:
        """The resource's namespace."""
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        """The resource's name."""
        return str(self.body["metadata"]["name"])


class Adapter(ABC, Generic[R, S]):
    """What a kind contributes to the reconcile: each step for its own resource. `resolve` and `plan` may
    raise InvalidSpecError (the spec cannot work: reported, never retried)."""

    info: KindInfo
    resource_model: type[R]
    status_model: type[S]
    settled: frozenset[str]
    """Phases after which nothing happens until the spec changes."""

    def __init__(self, observation: Callable[..., Any],
                 derive_status: Callable[[S, Any, datetime], tuple[S, Action]]) -> None:
        """`observation`: the kind's observation type (generation first; spec_error and waiting by keyword);
        `derive_status`: its derive_* function (status/)."""
        self.observation = observation
        self.derive_status = derive_status

    @abstractmethod
    def resolve(self, rc: Pass[R, S], lookup: Lookup) -> Any:
        """What the resource refers to, or the Waiting it is held by."""

    @abstractmethod
    def plan(self, rc: Pass[R, S], resolved: Any) -> Any:
        """The workload (pure)."""

    @abstractmethod
    def render(self, plan: Any) -> list[dict[str, Any]]:
        """The workload's manifests (pure)."""

    @abstractmethod
    def apply(self, rc: Pass[R, S], plan: Any, manifests: list[dict[str, Any]]) -> Any:
        """Bring the children in line with the manifests; what was done and seen."""

    @abstractmethod
    def observe(self, rc: Pass[R, S], resolved: Any, plan: Any, applied: Any) -> Any:
        """The observation derive reads (children, progress file)."""

    def derive(self, prev: S, observed: Any, now: datetime) -> tuple[S, Action]:
        """The new status and the action it asks for: the kind's pure derive_* function."""
        return self.derive_status(prev, observed, now)

    def early(self, generation: int, *, spec_error: str | None = None, waiting: Waiting | None = None) -> Any:
        """The observation of a reconcile that stopped before planning: an invalid spec, or a wait."""
        return self.observation(generation, spec_error=spec_error, waiting=waiting)

    def carry_out(self, rc: Pass[R, S], plan: Any, applied: Any, status: S, action: Action) -> None:
        """Do what derive asked for and post the Events it deserves (most kinds: nothing)."""
