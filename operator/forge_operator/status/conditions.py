"""Standard conditions that keep lastTransitionTime when nothing changed, and what every kind's derive
shares: the start of a new status, a reference still waited for, the action a reconcile must take."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from forge_operator.api.common import Condition, ConditionStatus, ResourceStatus

READY = "Ready"
INVALID_SPEC = "InvalidSpec"
RESOLVED = "Resolved"
WAITING = "Waiting"
S = TypeVar("S", bound=ResourceStatus)


@dataclass(frozen=True)
class Waiting:
    """A reference is not ready yet: which condition to set False, and why (the status says so and the
    timer looks again every reconcile interval; waiting is a state, never an error)."""

    condition: str
    message: str


class Action(StrEnum):
    """What the reconcile must do after deriving the status."""

    NONE = "none"
    RESTART = "restart"
    """Delete the current job; the next reconcile creates the next attempt (counted as a restart)."""


def set_condition(conditions: list[Condition], type_: str, status: ConditionStatus, reason: str,
                  message: str, generation: int | None, now: str) -> list[Condition]:
    """`conditions` with the condition of `type_` set; its lastTransitionTime moves only when its
    status changes. Order is kept; a new type is appended."""
    out: list[Condition] = []
    found = False
    for cond in conditions:
        if cond.type == type_:
            found = True
            moved = cond.status != status
            out.append(Condition(type=type_, status=status, reason=reason, message=message,
                                 last_transition_time=now if moved else cond.last_transition_time,
                                 observed_generation=generation))
        else:
            out.append(cond)
    if not found:
        out.append(Condition(type=type_, status=status, reason=reason, message=message,
                             last_transition_time=now, observed_generation=generation))
    return out


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of `type_`, if present."""
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    """Whether the condition of `type_` is present and True."""
    cond = get_condition(conditions, type_)
    return cond is not None and cond.status is ConditionStatus.TRUE


def mark(status: ResourceStatus, type_: str, value: ConditionStatus, reason: str, message: str, now: str) -> None:
    """Set the condition of `type_` on `status`, for the generation the status observes."""
    status.conditions = set_condition(status.conditions, type_, value, str(reason), message,
                                      status.observed_generation, now)


def mark_ready(status: ResourceStatus, value: ConditionStatus, reason: str, message: str, now: str) -> None:
    """Set the Ready summary condition and status.message."""
    mark(status, READY, value, reason, message, now)
    status.message = message


def begin_status(prev: S, generation: int, spec_error: str | None, now: str) -> S:
    """A copy of `prev` observing `generation`, its InvalidSpec condition set (every derive starts here)."""
    status = prev.model_copy(deep=True)
    status.observed_generation = generation
    invalid = ConditionStatus.TRUE if spec_error else ConditionStatus.FALSE
    mark(status, INVALID_SPEC, invalid, INVALID_SPEC if spec_error else "Valid", spec_error or "", now)
    return status


def mark_references(status: ResourceStatus, resolved: list[str], waiting: Waiting | None, now: str) -> None:
    """Conditions of the references: each resolved one True, the one waited for False."""
    for type_ in resolved:
        mark(status, type_, ConditionStatus.TRUE, RESOLVED, "", now)
    if waiting is not None:
        mark(status, waiting.condition, ConditionStatus.FALSE, WAITING, waiting.message, now)
