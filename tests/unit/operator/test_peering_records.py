"""Which replica works, by kopf's peering records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gatewaypool_operator.peering import Peering, outranked

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ME = Peering(name="gatewaypool", identity="me", priority=50)


def record(priority: int, seconds_ago: float, lifetime: int = 60) -> dict[str, object]:
    return {
        "priority": priority,
        "lifetime": lifetime,
        "lastseen": (NOW - timedelta(seconds=seconds_ago)).isoformat(),
    }


def test_alone_is_active() -> None:
    assert not outranked({}, me=ME, now=NOW)
    assert not outranked({"me": record(50, 0)}, me=ME, now=NOW)


def test_a_live_peer_with_a_higher_priority_wins() -> None:
    assert outranked({"me": record(50, 0), "other": record(70, 5)}, me=ME, now=NOW)


def test_lower_or_equal_priority_peers_do_not_outrank() -> None:
    status = {"a": record(49, 0), "b": record(50, 0)}
    assert not outranked(status, me=ME, now=NOW)


def test_a_dead_peer_does_not_count() -> None:
    assert not outranked({"other": record(90, 61, lifetime=60)}, me=ME, now=NOW)
    assert outranked({"other": record(90, 59, lifetime=60)}, me=ME, now=NOW)


def test_garbage_records_are_ignored() -> None:
    status = {"x": "not a record", "y": {"priority": "high"}, "z": {"lastseen": "never"}}
    assert not outranked(status, me=ME, now=NOW)
