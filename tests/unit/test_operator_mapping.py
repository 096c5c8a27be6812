"""The operator's bucket map: balanced, fewest moves, no spurious versions, tolerant reads."""

from __future__ import annotations

import dataclasses
import json
import math
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewaypool.assignment import initial_owners, moved_buckets, rebalance
from gatewaypool.bucketmap import BucketMap, Gateway, dump_map
from gatewaypool_operator.mapping import (
    desired_gateways,
    next_map,
    parse_published,
    publish,
    read_published,
)
from gatewaypool_operator.spec import PoolSpec, parse_spec

NAME = "ct-triage"
NAMESPACE = "radiology"


def pool_spec(*, port: int = 104, ae_title: str = "GATEWAY") -> PoolSpec:
    return parse_spec(
        {"replicas": 3, "gateway": {"image": "gw:1", "port": port, "aeTitle": ae_title}},
        default_router_image="op:1",
    )


def gateways(count: int, **attributes: object) -> tuple[Gateway, ...]:
    return desired_gateways(
        name=NAME,
        namespace=NAMESPACE,
        spec=pool_spec(**attributes),  # type: ignore[arg-type]
        count=count,
    )


def first_map(count: int, buckets: int) -> BucketMap:
    result = next_map(None, gateways=gateways(count), buckets=buckets)
    assert result is not None
    return result


def assert_balanced(owners: Sequence[int], count: int) -> None:
    counts = Counter(owners)
    assert set(counts) == set(range(count)), "every gateway owns a bucket, no other index"
    assert max(counts.values()) - min(counts.values()) <= 1


# --- gateways -------------------------------------------------------------------


def test_desired_gateways_are_the_statefulset_pods() -> None:
    result = gateways(3, port=4242, ae_title="ORTHANC")
    assert result == (
        Gateway(
            name="ct-triage-gw-0",
            host="ct-triage-gw-0.ct-triage-gw.radiology.svc.cluster.local",
            port=4242,
            ae_title="ORTHANC",
        ),
        Gateway(
            name="ct-triage-gw-1",
            host="ct-triage-gw-1.ct-triage-gw.radiology.svc.cluster.local",
            port=4242,
            ae_title="ORTHANC",
        ),
        Gateway(
            name="ct-triage-gw-2",
            host="ct-triage-gw-2.ct-triage-gw.radiology.svc.cluster.local",
            port=4242,
            ae_title="ORTHANC",
        ),
    )
    assert gateways(0) == ()
    with pytest.raises(ValueError, match="count"):
        gateways(-1)


@given(count=st.integers(1, 300))
def test_gateway_names_and_hosts_are_unique_dns_names(count: int) -> None:
    result = gateways(count)
    assert len({gateway.name for gateway in result}) == count
    assert len({gateway.host for gateway in result}) == count
    for ordinal, gateway in enumerate(result):
        assert gateway.host == f"{gateway.name}.ct-triage-gw.radiology.svc.cluster.local"
        assert gateway.name == f"ct-triage-gw-{ordinal}"


# --- first map ------------------------------------------------------------------


def test_first_map_is_balanced_round_robin_version_1() -> None:
    result = first_map(3, 4096)
    assert result.version == 1
    assert result.buckets == 4096
    assert result.gateways == gateways(3)
    assert list(result.owners) == initial_owners(4096, 3)
    assert dict(result.moving) == {}
    assert result.bucket_counts() == {
        "ct-triage-gw-0": 1366,
        "ct-triage-gw-1": 1365,
        "ct-triage-gw-2": 1365,
    }


def test_no_gateways_no_map() -> None:
    """No map lists zero gateways: the published one stays (or there is none)."""
    assert next_map(None, gateways=(), buckets=16) is None
    assert next_map(first_map(2, 16), gateways=(), buckets=16) is None


def test_more_gateways_than_buckets_is_an_error() -> None:
    with pytest.raises(ValueError, match="5 gateways for 4 buckets"):
        next_map(None, gateways=gateways(5), buckets=4)
    with pytest.raises(ValueError):
        next_map(first_map(2, 4), gateways=gateways(5), buckets=4)


# --- changes -----------------------------------------------------------------------

COUNTS = st.integers(1, 40)
BUCKETS = st.sampled_from([1, 2, 7, 64, 100, 257, 1000, 4096])


@settings(max_examples=150, deadline=None)
@given(buckets=BUCKETS, old=COUNTS, new=COUNTS)
def test_scaling_moves_exactly_what_rebalance_implies(buckets: int, old: int, new: int) -> None:
    old, new = min(old, buckets), min(new, buckets)
    current = first_map(old, buckets)
    result = next_map(current, gateways=gateways(new), buckets=buckets)
    if old == new:
        assert result is None
        return
    assert result is not None
    assert result.version == current.version + 1
    assert result.gateways == gateways(new)
    assert dict(result.moving) == {}
    assert_balanced(result.owners, new)
    assert list(result.owners) == rebalance(current.owners, new)
    moves = len(moved_buckets(current.owners, result.owners))
    if new > old:
        k = new - old
        assert moves <= math.ceil(k * buckets / new)
        # only newcomers gain: no survivor receives a bucket
        for before, after in zip(current.owners, result.owners, strict=True):
            assert before == after or after >= old
    else:
        # only the leaving gateways' buckets move, and only those
        leaving = sum(1 for owner in current.owners if owner >= new)
        assert moves == leaving


@settings(max_examples=60, deadline=None)
@given(
    buckets=st.sampled_from([16, 100, 1024]),
    counts=st.lists(st.integers(0, 16), min_size=1, max_size=8),
)
def test_a_history_of_changes_stays_balanced_idempotent_and_increasing(
    buckets: int, counts: list[int]
) -> None:
    current: BucketMap | None = None
    versions: list[int] = []
    for count in counts:
        wanted = gateways(count)
        result = next_map(current, gateways=wanted, buckets=buckets)
        if result is None:
            assert count == 0 or (current is not None and current.gateways == wanted)
            continue
        assert_balanced(result.owners, count)
        assert next_map(result, gateways=wanted, buckets=buckets) is None  # idempotent
        # what an operator restart sees: the published text, read back
        reread = parse_published(publish(result))
        assert reread == result
        assert next_map(reread, gateways=wanted, buckets=buckets) is None
        versions.append(result.version)
        current = result
    assert versions == sorted(set(versions)), "versions strictly increase"
    if versions:
        assert versions[0] == 1


@settings(max_examples=40, deadline=None)
@given(buckets=BUCKETS, count=COUNTS, new=COUNTS)
def test_next_map_is_deterministic(buckets: int, count: int, new: int) -> None:
    current = first_map(min(count, buckets), buckets)
    wanted = gateways(min(new, buckets))
    assert next_map(current, gateways=wanted, buckets=buckets) == next_map(
        current, gateways=wanted, buckets=buckets
    )


def test_scaling_3_to_4_moves_a_quarter() -> None:
    result = next_map(first_map(3, 4096), gateways=gateways(4), buckets=4096)
    assert result is not None
    assert len(moved_buckets(initial_owners(4096, 3), result.owners)) == 1024


@pytest.mark.parametrize(("port", "ae_title"), [(4242, "GATEWAY"), (104, "ORTHANC")])
def test_changed_gateway_attributes_keep_owners_and_bump_the_version(
    port: int, ae_title: str
) -> None:
    current = first_map(3, 64)
    wanted = gateways(3, port=port, ae_title=ae_title)
    result = next_map(current, gateways=wanted, buckets=64)
    assert result is not None
    assert result.version == 2
    assert result.owners == current.owners
    assert result.gateways == wanted
    assert next_map(result, gateways=wanted, buckets=64) is None


def test_a_published_handover_is_dropped_for_now_keeping_owners() -> None:
    current = dataclasses.replace(first_map(2, 8), moving={0: 1}, version=5)
    result = next_map(current, gateways=gateways(2), buckets=8)
    assert result is not None
    assert (result.version, result.owners, dict(result.moving)) == (6, current.owners, {})


def test_a_map_with_another_bucket_count_is_replaced_by_a_fresh_newer_one() -> None:
    current = dataclasses.replace(first_map(2, 8), version=9)
    result = next_map(current, gateways=gateways(2), buckets=16)
    assert result is not None
    assert (result.version, result.buckets) == (10, 16)
    assert list(result.owners) == initial_owners(16, 2)


def test_gateways_are_matched_by_name_not_position() -> None:
    """A hand-reordered map keeps every bucket on its gateway: nothing needs to move."""
    ordered = first_map(3, 12)
    reordered = BucketMap(
        version=4,
        buckets=12,
        gateways=tuple(reversed(ordered.gateways)),
        owners=tuple(2 - owner for owner in ordered.owners),
    )
    result = next_map(reordered, gateways=gateways(3), buckets=12)
    assert result is not None  # the gateway order differs: a new version in canonical order
    assert result.version == 5
    assert result.owners == ordered.owners


def test_unknown_gateways_in_the_published_map_are_leaving() -> None:
    stranger = Gateway(name="someone", host="someone.example", port=104, ae_title="X")
    current = BucketMap(
        version=2, buckets=4, gateways=(*gateways(1), stranger), owners=(0, 1, 0, 1)
    )
    result = next_map(current, gateways=gateways(2), buckets=4)
    assert result is not None
    assert result.gateways == gateways(2)
    # gateway 0 keeps its own buckets; the stranger's go to the newcomer
    assert (result.version, result.owners) == (3, (0, 1, 0, 1))


# --- version floor -------------------------------------------------------------------


def test_version_floor_makes_a_republished_map_newer_than_any_router_holds() -> None:
    result = next_map(None, gateways=gateways(2), buckets=8, version_floor=7)
    assert result is not None
    assert result.version == 8


def test_a_current_map_older_than_the_floor_is_republished() -> None:
    current = dataclasses.replace(first_map(2, 8), version=3)
    result = next_map(current, gateways=gateways(2), buckets=8, version_floor=5)
    assert result is not None
    assert (result.version, result.owners) == (6, current.owners)
    assert next_map(result, gateways=gateways(2), buckets=8, version_floor=5) is None


def test_a_current_map_at_the_floor_is_left_alone() -> None:
    current = dataclasses.replace(first_map(2, 8), version=5)
    assert next_map(current, gateways=gateways(2), buckets=8, version_floor=5) is None


# --- published form -------------------------------------------------------------------


def test_publish_is_the_canonical_map_json() -> None:
    current = first_map(3, 64)
    assert publish(current) == {"map.json": dump_map(current)}
    assert parse_published(publish(current)) == current


@pytest.mark.parametrize("data", [None, {}, {"other": "x"}])
def test_nothing_published(data: dict[str, str] | None) -> None:
    published = read_published(data)
    assert (published.bucket_map, published.problem) == (None, None)
    assert parse_published(data) is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "line 1"),
        ("[]", "mapping"),
        ('{"version": 1}', "required key is missing"),
        ("", "mapping"),
    ],
)
def test_an_unusable_map_reads_as_none_with_the_reason(text: str, reason: str) -> None:
    published = read_published({"map.json": text})
    assert published.bucket_map is None
    assert published.problem is not None
    assert published.problem.startswith("map.json: ")
    assert reason in published.problem
    assert parse_published({"map.json": text}) is None


def test_a_map_with_an_invalid_owner_is_refused() -> None:
    wire = first_map(2, 4).to_dict()
    wire["owners"][3] = 7
    published = read_published({"map.json": json.dumps(wire)})
    assert published.bucket_map is None
    assert published.problem is not None
    assert "owners[3]" in published.problem


def test_a_non_text_value_is_refused_not_crashed_on() -> None:
    published = read_published({"map.json": 3})  # type: ignore[dict-item]
    assert published.bucket_map is None
    assert published.problem is not None


def test_operator_restart_publishes_nothing() -> None:
    """Read the ConfigMap back as a restarted operator would: no new version."""
    data = publish(first_map(5, 4096))
    current = parse_published(data)
    assert next_map(current, gateways=gateways(5), buckets=4096) is None
