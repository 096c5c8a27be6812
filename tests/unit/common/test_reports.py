"""The router report: round trip, the size bound in the worst case, and malformed input."""

from __future__ import annotations

import dataclasses
import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewaypool.contract import MAX_BUCKETS
from gatewaypool.reports import (
    AGE_CLASSES,
    ALL_USED,
    CONFIGMAP_LIMIT,
    HORIZON_SECONDS,
    MAX_OPEN_ENTRIES,
    ReportError,
    RouterReport,
    SpoolSummary,
    age_class,
    build_report,
    dump_report,
    parse_report,
    report_budget,
    report_size_bound,
)

STARTED = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


BASE = RouterReport(
    map_version=7,
    buckets=4096,
    started_at=STARTED,
    reported_at=STARTED + timedelta(seconds=600),
    used={17: 9, 4095: 1},
    open_associations={2: 3},
)


def report(**changes: Any) -> RouterReport:
    return dataclasses.replace(BASE, **changes)


def worst_case(buckets: int) -> RouterReport:
    """Every bucket used, at random classes (incompressible), the longest numbers everywhere."""
    rng = random.Random(buckets)
    return RouterReport(
        map_version=2**63 - 1,
        buckets=buckets,
        started_at=STARTED,
        reported_at=STARTED + timedelta(days=3650, microseconds=999999),
        used={bucket: rng.randint(1, 15) for bucket in range(buckets)},
        open_associations={MAX_BUCKETS - 1 - i: 2**31 - 1 for i in range(MAX_OPEN_ENTRIES)},
        open_truncated=True,
        spool=SpoolSummary(
            instances=2**63 - 1,
            bytes=2**63 - 1,
            oldest_seconds=123456789012.125,
            refused=2**63 - 1,
            buckets=frozenset(b for b in range(buckets) if rng.random() < 0.5),
        ),
    )


def spools(buckets: int) -> st.SearchStrategy[SpoolSummary | None]:
    members = (
        st.frozensets(st.integers(0, buckets - 1), max_size=40) if buckets else st.just(frozenset())
    )
    return st.none() | st.builds(
        SpoolSummary,
        instances=st.integers(0, 2**63 - 1),
        bytes=st.integers(0, 2**63 - 1),
        oldest_seconds=st.integers(0, 10**6).map(lambda ms: ms / 1000),
        refused=st.integers(0, 2**63 - 1),
        buckets=members,
        all_buckets=st.booleans(),
    ).map(lambda s: dataclasses.replace(s, buckets=frozenset()) if s.all_buckets else s)


@settings(max_examples=150, deadline=None)
@given(
    buckets=st.integers(1, 300),
    version=st.none() | st.integers(0, 2**40),
    started=st.integers(0, 10**6),
    elapsed=st.floats(0, 10**5, allow_nan=False),
    data=st.data(),
)
def test_round_trip(
    buckets: int, version: int | None, started: int, elapsed: float, data: st.DataObject
) -> None:
    if version is None:
        buckets = 0
    used = (
        data.draw(st.dictionaries(st.integers(0, buckets - 1), st.integers(1, 15), max_size=40))
        if buckets
        else {}
    )
    opened = data.draw(
        st.dictionaries(st.integers(0, 1023), st.integers(1, 2**31 - 1), max_size=MAX_OPEN_ENTRIES)
    )
    begin = STARTED + timedelta(seconds=started)
    original = RouterReport(
        map_version=version,
        buckets=buckets,
        started_at=begin,
        reported_at=begin + timedelta(seconds=elapsed),
        used=used,
        all_used=data.draw(st.booleans()) and buckets > 0,
        open_associations=opened,
        open_truncated=data.draw(st.booleans()),
        spool=data.draw(spools(buckets)),
    )
    parsed = parse_report(dump_report(original))
    expected_used = {} if original.all_used else dict(original.used)
    assert dict(parsed.used) == expected_used
    assert parsed.all_used == original.all_used
    assert dict(parsed.open_associations) == dict(original.open_associations)
    assert (parsed.map_version, parsed.buckets) == (version, buckets)
    assert parsed.open_truncated == original.open_truncated
    assert parsed.spool == original.spool
    # Microseconds survive: the router's clock is read as written.
    assert parsed.started_at == original.started_at
    assert parsed.reported_at == original.reported_at


@pytest.mark.parametrize("buckets", [1, 4096, 65536])
def test_the_worst_case_stays_within_the_stated_bound(buckets: int) -> None:
    text = dump_report(worst_case(buckets))
    assert len(text) <= report_size_bound(buckets)
    parsed = parse_report(text)
    assert dict(parsed.used) == dict(worst_case(buckets).used)
    assert parsed.spool == worst_case(buckets).spool


def test_eighteen_worst_case_reports_fit_one_configmap_at_every_bucket_count() -> None:
    text = dump_report(worst_case(MAX_BUCKETS))
    keys = [f"{'r' * 240}-{i:012d}" for i in range(18)]  # 253-character pod names
    total = sum(len(key) + len(text) for key in keys)
    assert total < CONFIGMAP_LIMIT
    assert report_size_bound(MAX_BUCKETS) * 18 + 18 * 253 < 1_015_000
    assert report_size_bound(MAX_BUCKETS) < 56_000
    assert report_size_bound(4096) < 4_600


def test_a_budget_makes_a_report_conservative_instead_of_too_large() -> None:
    budget = report_budget(100)  # the CRD's most routers
    assert 100 * (budget + 253) <= CONFIGMAP_LIMIT
    text = dump_report(worst_case(MAX_BUCKETS), budget=budget)
    assert len(text) <= budget
    parsed = parse_report(text)
    assert parsed.all_used
    assert parsed.quiet_seconds(5) == 0.0
    assert parsed.spool is not None and parsed.spool.all_buckets
    assert parsed.spool.instances == 2**63 - 1  # the numbers are never given up
    assert parsed.quiet_seconds(5) == 0.0
    # A small report is sent exactly under the same budget.
    assert not parse_report(dump_report(report(), budget=budget)).all_used


def test_the_budget_gives_up_used_before_the_spools_buckets() -> None:
    spool = SpoolSummary(instances=1, bytes=10, buckets=frozenset(range(0, 4096, 3)))
    rng = random.Random(7)
    big = report(used={b: rng.randint(1, 15) for b in range(4096)}, spool=spool)
    exact = dump_report(big)
    fitting = len(exact) - 100
    parsed = parse_report(dump_report(big, budget=fitting))
    assert parsed.all_used
    assert parsed.spool == spool


def test_ages_round_down_to_a_class_never_up() -> None:
    for age in [0, 0.5, 1, 29.9, 30, 44, 45, 1799, 1800, 3599.9]:
        cls = age_class(age)
        assert 1 <= cls <= 15
        assert AGE_CLASSES[cls - 1] <= age
    assert age_class(HORIZON_SECONDS) == 0
    assert age_class(10**9) == 0


def test_quiet_seconds_counts_only_since_the_router_started() -> None:
    fresh = report(reported_at=STARTED + timedelta(seconds=12), used={})
    assert fresh.quiet_seconds(3) == 12.0  # never used, but it only knows 12 s
    old = report(reported_at=STARTED + timedelta(days=1), used={3: age_class(31)})
    assert old.quiet_seconds(3) == 30.0
    assert old.quiet_seconds(4) == HORIZON_SECONDS


def test_build_report_keeps_the_highest_open_gateways() -> None:
    built = build_report(
        map_version=3,
        buckets=64,
        started_at=STARTED,
        reported_at=STARTED + timedelta(seconds=100),
        ages={1: 0.2, 2: 45.5, 3: 5000.0, 4: -1.0},
        open_associations={g: 1 for g in range(40)} | {40: 0},
    )
    assert dict(built.used) == {1: 1, 2: age_class(45), 4: 1}
    assert built.open_truncated
    assert sorted(built.open_associations) == list(range(8, 40))
    assert built.highest_open_gateway() == 39


def test_used_puts_bucket_two_k_in_the_high_half_of_byte_k() -> None:
    import base64
    import zlib

    text = dump_report(report(buckets=4, used={0: 1, 3: 15}))
    packed = zlib.decompress(base64.b64decode(json.loads(text)["used"]))
    assert packed == bytes([0x10, 0x0F])


def test_spool_buckets_put_bucket_eight_k_in_the_high_bit_of_byte_k() -> None:
    import base64
    import zlib

    text = dump_report(report(buckets=12, used={}, spool=SpoolSummary(buckets=frozenset({0, 9}))))
    packed = zlib.decompress(base64.b64decode(json.loads(text)["spool"]["buckets"]))
    assert packed == bytes([0x80, 0x40])


def test_a_report_without_spool_has_none_and_a_spooled_bucket_is_never_quiet() -> None:
    old = good()
    assert "spool" not in old  # reports written before the spool read as before
    assert parse_report(json.dumps(old)).spool is None
    quiet = report(reported_at=STARTED + timedelta(days=1), used={})
    assert quiet.quiet_seconds(3) == HORIZON_SECONDS
    assert not quiet.spooled(3)
    held = report(
        reported_at=STARTED + timedelta(days=1),
        used={},
        spool=SpoolSummary(instances=2, bytes=100, oldest_seconds=7.5, buckets=frozenset({3})),
    )
    assert held.spooled(3) and not held.spooled(4)
    assert held.quiet_seconds(3) == 0.0
    assert held.quiet_seconds(4) == HORIZON_SECONDS
    every = report(spool=SpoolSummary(all_buckets=True))
    assert every.quiet_seconds(4095) == 0.0
    text = dump_report(held)
    assert json.loads(text)["spool"] == {
        "instances": 2,
        "bytes": 100,
        "oldestSeconds": 7.5,
        "refused": 0,
        "buckets": json.loads(text)["spool"]["buckets"],
    }
    assert parse_report(text).spool == held.spool
    empty = json.loads(dump_report(report(spool=SpoolSummary())))["spool"]
    assert empty["buckets"] == ""


def good_spool() -> dict[str, object]:
    text = dump_report(report(spool=SpoolSummary(instances=1, bytes=5, buckets=frozenset({17}))))
    result: dict[str, object] = json.loads(text)["spool"]
    return result


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"instances": -1}, "spool.instances"),
        ({"instances": 1.5}, "spool.instances"),
        ({"bytes": True}, "spool.bytes"),
        ({"refused": "3"}, "spool.refused"),
        ({"oldestSeconds": -0.5}, "spool.oldestSeconds"),
        ({"oldestSeconds": "1"}, "spool.oldestSeconds"),
        ({"oldestSeconds": None}, "spool.oldestSeconds"),
        ({"buckets": 5}, "spool.buckets"),
        ({"buckets": "not base64!"}, "spool.buckets"),
        ({"buckets": "aGVsbG8="}, "spool.buckets"),
        ({"colour": "blue"}, "spool.colour"),
    ],
)
def test_malformed_spool_fields_are_named(change: dict[str, object], path: str) -> None:
    data = good() | {"spool": good_spool() | change}
    with pytest.raises(ReportError) as caught:
        parse_report(json.dumps(data))
    assert caught.value.path == path


@pytest.mark.parametrize("missing", ["instances", "bytes", "oldestSeconds", "refused", "buckets"])
def test_required_spool_fields(missing: str) -> None:
    spool = good_spool()
    del spool[missing]
    with pytest.raises(ReportError, match=f"^spool.{missing}: required key is missing"):
        parse_report(json.dumps(good() | {"spool": spool}))


def test_spool_buckets_beyond_the_map_are_refused() -> None:
    import base64
    import zlib

    with pytest.raises(ReportError, match=r"^spool: "):
        parse_report(json.dumps(good() | {"spool": [1]}))
    data = good() | {"buckets": 12, "used": ""}
    data["spool"] = good_spool() | {
        "buckets": base64.b64encode(zlib.compress(bytes([0x00, 0x01]))).decode()
    }
    with pytest.raises(ReportError, match=r"^spool.buckets: bucket 15 is beyond 12 buckets"):
        parse_report(json.dumps(data))
    with pytest.raises(ReportError, match=r"^spool.buckets: bucket 4096"):
        report(spool=SpoolSummary(buckets=frozenset({4096})))


def good() -> dict[str, object]:
    result: dict[str, object] = json.loads(dump_report(report()))
    return result


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"mapVersion": -1}, "mapVersion"),
        ({"mapVersion": True}, "mapVersion"),
        ({"mapVersion": "7"}, "mapVersion"),
        ({"buckets": 65537}, "buckets"),
        ({"buckets": 0}, "buckets"),  # a version needs a map's bucket count
        ({"startedAt": "yesterday"}, "startedAt"),
        ({"reportedAt": "2026-03-01T11:00:00Z"}, "reportedAt"),  # before it started
        ({"used": 5}, "used"),
        ({"used": "not base64!"}, "used"),
        ({"used": "aGVsbG8="}, "used"),  # base64, not zlib
        ({"open": []}, "open"),
        ({"open": {"x": 1}}, "open"),
        ({"open": {"007": 1}}, "open"),
        ({"open": {"3": 0}}, 'open["3"]'),
        ({"open": {str(i): 1 for i in range(33)}}, "open"),
        ({"openTruncated": "yes"}, "openTruncated"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_malformed_fields_are_named(change: dict[str, object], path: str) -> None:
    data = good() | change
    with pytest.raises(ReportError) as caught:
        parse_report(json.dumps(data))
    assert caught.value.path == path
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize("missing", ["mapVersion", "buckets", "startedAt", "reportedAt", "used"])
def test_required_fields(missing: str) -> None:
    data = good()
    del data[missing]
    with pytest.raises(ReportError, match=f"^{missing}: required key is missing"):
        parse_report(json.dumps(data))


def test_used_of_the_wrong_size_or_beyond_the_buckets_is_refused() -> None:
    text = dump_report(report(buckets=4096, used={4095: 3}))
    data = json.loads(text) | {"buckets": 64}
    with pytest.raises(ReportError, match=r"^used: "):
        parse_report(json.dumps(data))
    odd = json.loads(dump_report(report(buckets=4, used={0: 1})))
    import base64
    import zlib

    odd["buckets"] = 3
    odd["used"] = base64.b64encode(zlib.compress(bytes([0x10, 0x01]))).decode()
    with pytest.raises(ReportError, match="beyond 3 buckets"):
        parse_report(json.dumps(odd))


def test_a_decompression_bomb_is_not_inflated() -> None:
    import base64
    import zlib

    bomb = base64.b64encode(zlib.compress(bytes(20_000_000))).decode()
    data = good() | {"used": bomb}
    with pytest.raises(ReportError, match=r"^used: holds 2049\+ bytes"):
        parse_report(json.dumps(data))


@pytest.mark.parametrize(
    "text", ["", "[]", "{", '{"mapVersion": 1, "mapVersion": 2}', "x" * 50_000]
)
def test_garbage_is_a_report_error(text: str) -> None:
    with pytest.raises(ReportError):
        parse_report(text)


def test_the_all_used_marker_and_empty_used() -> None:
    data = good() | {"used": ALL_USED}
    assert parse_report(json.dumps(data)).all_used
    data = good() | {"used": ""}
    assert dict(parse_report(json.dumps(data)).used) == {}
    with pytest.raises(ReportError, match="is not an RFC 3339 time"):
        parse_report(json.dumps(good() | {"reportedAt": None}))


def test_the_checker_can_fail() -> None:
    """The validator refuses what the constructor is given wrong, too."""
    with pytest.raises(ReportError, match=r"^used: bucket 4096"):
        report(used={4096: 1})
    with pytest.raises(ReportError, match=r"^used: age class 16"):
        report(used={1: 16})
    with pytest.raises(ReportError, match=r"^startedAt: "):
        report(started_at=datetime(2026, 1, 1))  # naive
