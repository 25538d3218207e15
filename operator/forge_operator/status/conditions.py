"""Standard conditions that keep lastTransitionTime when nothing changed."""

from __future__ import annotations

from forge_operator.api.common import Condition, ConditionStatus

READY = "Ready"
INVALID_SPEC = "InvalidSpec"


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
