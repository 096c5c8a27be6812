"""Bucket assignment: balanced, minimal moves, deterministic."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewaypool.assignment import initial_owners, moved_buckets, rebalance


def spec_targets(owners: Sequence[int], gateway_count: int) -> list[int]:
    """Each gateway's share as the specification states it (written independently)."""
    counts = Counter(owner for owner in owners if owner < gateway_count)
    share, extra = divmod(len(owners), gateway_count)
    ranked = sorted(range(gateway_count), key=lambda g: (-counts[g], g))
    return [share + (1 if g in ranked[:extra] else 0) for g in range(gateway_count)]


def spec_minimum_moves(owners: Sequence[int], gateway_count: int) -> int:
    counts = Counter(owners)
    targets = spec_targets(owners, gateway_count)
    leaving = sum(n for owner, n in counts.items() if owner >= gateway_count)
    surplus = sum(max(0, counts[g] - targets[g]) for g in range(gateway_count))
    return leaving + surplus


def fewer_moves_exist(owners: Sequence[int], gateway_count: int, moves: int) -> bool:
    """Search every balanced assignment for one that moves fewer than `moves` buckets.

    Exhaustive depth-first search over all assignments whose counts are
    ``share`` or ``share + 1`` (``extra`` of them at ``share + 1``); it only
    cuts branches that already move ``moves`` buckets or more, which cannot
    lead to fewer.
    """
    buckets = len(owners)
    share, extra = divmod(buckets, gateway_count)
    counts = [0] * gateway_count

    def visit(bucket: int, moved: int, big: int) -> bool:
        if moved >= moves:
            return False
        if bucket == buckets:
            return True  # capacity limits force every count to share or share + 1
        owner = owners[bucket]
        order = sorted(range(gateway_count), key=lambda g: g != owner)  # keeping first
        for gateway in order:
            grows_big = counts[gateway] == share
            if counts[gateway] == share + 1 or (grows_big and big == extra):
                continue
            counts[gateway] += 1
            found = visit(bucket + 1, moved + (gateway != owner), big + grows_big)
            counts[gateway] -= 1
            if found:
                return True
        return False

    return visit(0, 0, 0)


def assert_balanced(owners: Sequence[int], gateway_count: int) -> None:
    counts = Counter(owners)
    assert set(counts) <= set(range(gateway_count))
    sizes = [counts[g] for g in range(gateway_count)]
    assert max(sizes) - min(sizes) <= 1, sizes


@st.composite
def owners_and_count(
    draw: st.DrawFn, *, max_buckets: int = 300, max_index: int = 12
) -> tuple[list[int], int]:
    """Any current owners (balanced or not, some gateways leaving) and a new count."""
    buckets = draw(st.integers(1, max_buckets))
    top = draw(st.integers(0, max_index))
    owners = draw(st.lists(st.integers(0, top), min_size=buckets, max_size=buckets))
    gateway_count = draw(st.integers(1, min(buckets, max_index + 2)))
    return owners, gateway_count


@st.composite
def balanced_start(draw: st.DrawFn) -> tuple[list[int], int]:
    """A balanced assignment over N gateways, fresh or after some history."""
    buckets = draw(st.integers(1, 2000))
    gateway_count = draw(st.integers(1, min(buckets, 20)))
    if draw(st.booleans()):
        return initial_owners(buckets, gateway_count), gateway_count
    history, _ = draw(owners_and_count(max_buckets=buckets, max_index=20))
    history = (history * (buckets // len(history) + 1))[:buckets]
    return rebalance(history, gateway_count), gateway_count


# --- initial_owners ---------------------------------------------------------


def test_initial_owners_deal_round_robin() -> None:
    assert initial_owners(7, 3) == [0, 1, 2, 0, 1, 2, 0]


@given(buckets=st.integers(1, 5000), data=st.data())
def test_initial_owners_are_balanced_and_stable_under_rebalance(
    buckets: int, data: st.DataObject
) -> None:
    gateway_count = data.draw(st.integers(1, min(buckets, 64)))
    owners = initial_owners(buckets, gateway_count)
    assert_balanced(owners, gateway_count)
    assert rebalance(owners, gateway_count) == owners


@pytest.mark.parametrize(("buckets", "gateway_count"), [(0, 1), (4, 0), (4, 5), (4, -1)])
def test_initial_owners_refuse_impossible_counts(buckets: int, gateway_count: int) -> None:
    with pytest.raises(ValueError):
        initial_owners(buckets, gateway_count)


# --- rebalance: the properties ---------------------------------------------


@given(owners_and_count())
def test_rebalance_is_balanced(case: tuple[list[int], int]) -> None:
    owners, gateway_count = case
    new = rebalance(owners, gateway_count)
    assert len(new) == len(owners)
    assert_balanced(new, gateway_count)


@given(owners_and_count())
def test_rebalance_moves_the_specified_minimum(case: tuple[list[int], int]) -> None:
    owners, gateway_count = case
    new = rebalance(owners, gateway_count)
    assert len(moved_buckets(owners, new)) == spec_minimum_moves(owners, gateway_count)
    targets = spec_targets(owners, gateway_count)
    assert [new.count(g) for g in range(gateway_count)] == targets


@given(owners_and_count(max_buckets=12, max_index=5).filter(lambda case: case[1] <= 4))
def test_rebalance_matches_brute_force_optimum(case: tuple[list[int], int]) -> None:
    owners, gateway_count = case
    moves = len(moved_buckets(owners, rebalance(owners, gateway_count)))
    assert not fewer_moves_exist(owners, gateway_count, moves)


def test_brute_force_finds_a_better_assignment_when_there_is_one() -> None:
    # Guards the oracle: moving everything is never optimal here.
    assert fewer_moves_exist([0, 0, 1, 1], 2, 4)
    assert not fewer_moves_exist([0, 0, 1, 1], 2, 0)


@given(owners_and_count())
def test_rebalance_is_deterministic_and_pure(case: tuple[list[int], int]) -> None:
    owners, gateway_count = case
    original = list(owners)
    first = rebalance(owners, gateway_count)
    assert rebalance(tuple(owners), gateway_count) == first
    assert owners == original
    assert rebalance(first, gateway_count) == first  # nothing left to do


@given(owners_and_count())
def test_rebalance_chooses_moves_in_the_specified_order(case: tuple[list[int], int]) -> None:
    owners, gateway_count = case
    new = rebalance(owners, gateway_count)
    moved = moved_buckets(owners, new)
    # Handed out in ascending bucket order to ascending gateway indices.
    receivers = [new[bucket] for bucket in moved]
    assert receivers == sorted(receivers)
    # An over-full gateway keeps its lowest-numbered buckets.
    for gateway in range(gateway_count):
        had = [b for b, owner in enumerate(owners) if owner == gateway]
        kept = [b for b in had if new[b] == gateway]
        assert kept == had[: len(kept)]
        # A gateway that receives gave up nothing.
        if any(new[b] == gateway for b in moved):
            assert kept == had


@given(balanced_start(), st.integers(1, 8))
def test_scaling_up_moves_only_what_newcomers_need(
    start: tuple[list[int], int], added: int
) -> None:
    owners, count = start
    buckets = len(owners)
    new_count = min(count + added, buckets)
    added = new_count - count
    new = rebalance(owners, new_count)
    moved = moved_buckets(owners, new)
    assert len(moved) <= math.ceil(added * buckets / new_count)
    assert all(new[bucket] >= count for bucket in moved)  # survivors gain nothing


@given(balanced_start(), st.integers(1, 8))
def test_scaling_down_moves_only_the_leaving_gateways_buckets(
    start: tuple[list[int], int], removed: int
) -> None:
    owners, count = start
    new_count = max(count - removed, 1)
    new = rebalance(owners, new_count)
    assert moved_buckets(owners, new) == [b for b, owner in enumerate(owners) if owner >= new_count]


def test_three_to_four_gateways_moves_a_quarter_of_4096() -> None:
    owners = initial_owners(4096, 3)
    new = rebalance(owners, 4)
    moved = moved_buckets(owners, new)
    assert len(moved) == 1024
    assert {new[b] for b in moved} == {3}
    assert Counter(new) == {0: 1024, 1: 1024, 2: 1024, 3: 1024}


# --- rebalance: worked examples ---------------------------------------------


def test_over_full_gateways_give_up_their_highest_buckets_to_newcomers() -> None:
    # 12 buckets, 3 -> 4 gateways: each gives its top bucket, in bucket order.
    assert rebalance(initial_owners(12, 3), 4) == [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 3]


def test_leaving_gateways_buckets_go_to_the_lowest_index_first() -> None:
    # Gateway 2 leaves; its buckets 2 and 5 go to 0 and then 1.
    assert rebalance([0, 1, 2, 0, 1, 2], 2) == [0, 1, 0, 0, 1, 1]


def test_larger_shares_go_to_the_fullest_gateways_ties_to_lower_index() -> None:
    # 7 buckets over 2 gateways: shares 3 and 4. Gateway 1 holds 4 now, so it
    # keeps 4 and only gateway 2's bucket moves, to gateway 0.
    assert rebalance([0, 1, 1, 0, 1, 2, 1], 2) == [0, 1, 1, 0, 1, 0, 1]
    # Equal holdings: the larger share goes to the lower index.
    assert rebalance([0, 0, 0, 1, 1, 1, 2], 2) == [0, 0, 0, 1, 1, 1, 0]


def test_unbalanced_survivors_are_evened_out() -> None:
    assert rebalance([0, 0, 0, 0, 0, 0], 3) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    ("owners", "gateway_count"), [([0, 1], 0), ([0, 1], 3), ([], 1), ([0, -1], 2)]
)
def test_rebalance_refuses_impossible_requests(owners: list[int], gateway_count: int) -> None:
    with pytest.raises(ValueError):
        rebalance(owners, gateway_count)


# --- moved_buckets -----------------------------------------------------------


def test_moved_buckets_lists_changed_owners_in_order() -> None:
    assert moved_buckets([0, 1, 2, 0], [0, 2, 2, 1]) == [1, 3]
    assert moved_buckets([0, 1], [0, 1]) == []


def test_moved_buckets_refuses_different_sizes() -> None:
    with pytest.raises(ValueError, match="size"):
        moved_buckets([0, 1], [0])
