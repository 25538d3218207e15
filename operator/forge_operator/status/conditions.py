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
STORE_REACHABLE = "StoreReachable"
DELETION_BLOCKED = "DeletionBlocked"
PODS_READY = "PodsReady"
"""Whether the workload's pods run; False names the pod, its rank and node, and why (status/pods.py)."""
STALLED = "Stalled"
"""True while the workload makes no progress: a run's step does not advance, or pods do not start."""
S = TypeVar("S", bound=ResourceStatus)


@dataclass(frozen=True)
class Waiting:
    """A reference is not ready yet: which condition to set False, and why (the status says so and the
    timer looks again every reconcile interval; waiting is a state, never an error)."""

    condition: str
    message: str


@dataclass(frozen=True)
class StoreCheck:
    """How the object store answered this reconcile's read: reachable, or why not (`reason` one CamelCase
    word: NoAnswer, Unreachable, or the store's error code), at which endpoint, and the error (never
    credentials). While a store is down its reads back off, so `attempted` is False on the ticks that
    did not try."""

    reachable: bool
    endpoint: str
    reason: str = "Reachable"
    error: str = ""
    attempted: bool = True


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


def mark_store(status: ResourceStatus, check: StoreCheck | None, now: str) -> None:
    """The StoreReachable condition from this reconcile's store read (untouched when nothing was read).
    The message names the endpoint and the error and stays the same while the error does, so a dead
    store costs one status write, not one per tick."""
    if check is None:
        return
    if check.reachable:
        mark(status, STORE_REACHABLE, ConditionStatus.TRUE, "Reachable", f"object store {check.endpoint} answered", now)
    else:
        mark(status, STORE_REACHABLE, ConditionStatus.FALSE, check.reason,
             f"object store {check.endpoint}: {check.error}; progress is not read until it answers "
             "(retried with backoff)", now)


def store_down(check: StoreCheck | None) -> bool:
    """Whether this reconcile could not read the store (so a missing progress file means nothing)."""
    return check is not None and not check.reachable
