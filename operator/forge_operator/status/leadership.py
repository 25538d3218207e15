"""Which operator replica leads: Kopf's peering rule applied to what its peering objects say.

Every replica records itself in the peering object (ClusterKopfPeering, or a KopfPeering per watched
namespace) as `status.<identity> = {priority, lifetime, lastseen}`, and Kopf pauses a replica while a live
peer (lastseen + lifetime still ahead) has a higher priority, and every replica while two share the highest.
So a replica leads when it is recorded and no other live peer's priority is equal or higher; with several
peering objects, when it leads in each of them (Kopf pauses on a conflict in any). Pure, for the
`forge_leader` gauge."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any


def _peer(info: Any) -> tuple[int, datetime | None] | None:
    """(priority, deadline) of one peering entry; None for an entry that is not one (hand-edited)."""
    if not isinstance(info, Mapping):
        return None
    try:
        priority = int(info.get("priority", 0))
        lifetime = int(info.get("lifetime", 60))
    except (TypeError, ValueError):
        return None
    seen = info.get("lastseen")
    if seen is None:
        return priority, None
    try:
        lastseen = datetime.fromisoformat(str(seen))
    except ValueError:
        return None
    if lastseen.tzinfo is None:
        lastseen = lastseen.replace(tzinfo=UTC)
    return priority, lastseen + timedelta(seconds=lifetime)


def leads_in(peering: Mapping[str, Any] | None, identity: str, now: datetime) -> bool:
    """Whether the replica `identity` leads in one peering object (None: the object does not exist)."""
    peers = (peering or {}).get("status")
    if not isinstance(peers, Mapping):
        return False
    mine = _peer(peers.get(identity))
    if mine is None:
        return False  # not recorded (yet): Kopf has not joined this peering
    for other, info in peers.items():
        if other == identity:
            continue
        peer = _peer(info)
        if peer is None:
            continue
        priority, deadline = peer
        if (deadline is None or deadline > now) and priority >= mine[0]:
            return False
    return True


def derive_leading(peerings: Iterable[Mapping[str, Any] | None], identity: str, now: datetime) -> bool:
    """Whether the replica `identity` leads in every one of its peering objects (and there is at least one)."""
    found = list(peerings)
    return bool(found) and all(leads_in(p, identity, now) for p in found)
