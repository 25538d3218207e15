"""Issue 20 item 9: which replica leads, by Kopf's peering rule over what the peering objects hold (what the
forge_leader gauge exports)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from forge_operator.status.leadership import derive_leading, leads_in

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _peer(priority: int, seen_ago: float = 5, lifetime: int = 60) -> dict[str, Any]:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat()}


def _peering(**peers: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "forge-forge-operator"}, "status": peers}


def test_the_highest_live_priority_leads_and_the_other_waits() -> None:
    peering = _peering(a=_peer(100), b=_peer(30000))
    assert leads_in(peering, "b", NOW)
    assert not leads_in(peering, "a", NOW)


def test_a_dead_peer_does_not_keep_the_lead() -> None:
    """A replica whose lastseen + lifetime has passed (killed without cleaning up) no longer counts."""
    peering = _peering(a=_peer(100), b=_peer(30000, seen_ago=61))
    assert leads_in(peering, "a", NOW)


def test_equal_priorities_pause_every_replica() -> None:
    peering = _peering(a=_peer(7), b=_peer(7))
    assert not leads_in(peering, "a", NOW) and not leads_in(peering, "b", NOW)


def test_a_replica_not_yet_recorded_does_not_lead() -> None:
    assert not leads_in(_peering(a=_peer(7)), "b", NOW)
    assert not leads_in(None, "a", NOW)  # no peering object
    assert not leads_in({"metadata": {}}, "a", NOW)  # nobody recorded yet
    assert leads_in(_peering(a=_peer(7)), "a", NOW)  # the only replica


def test_namespaced_peering_leads_only_where_it_leads_in_every_namespace() -> None:
    assert derive_leading([_peering(a=_peer(9), b=_peer(1)), _peering(a=_peer(9))], "a", NOW)
    assert not derive_leading([_peering(a=_peer(9)), _peering(a=_peer(9), b=_peer(10))], "a", NOW)
    assert not derive_leading([], "a", NOW)


def test_hand_edited_entries_are_skipped_not_a_crash() -> None:
    peering = _peering(a=_peer(9), x="garbage", y={"priority": "high"}, z={"priority": 1, "lastseen": "yesterday"})
    assert leads_in(peering, "a", NOW)
    assert not leads_in({"status": "garbage"}, "a", NOW)
