"""Bucket usage: last use per bucket and open upstream associations per gateway, in one
process and merged over a replica's workers.

A replica's report over its workers says a bucket used in any worker is
used: the operator moves a bucket once it is quiet on every replica; a
replica that reported a bucket quiet because the worker that used it was not
asked, did not answer or died, would let a study be split.
"""

from __future__ import annotations

import dataclasses
import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from gatewaypool.bucketmap import Gateway, balanced_map
from gatewaypool.reports import age_class
from gatewaypool_router.bucketusage import (
    BucketUsage,
    ReplicaBucketUsage,
    merge_ages,
    merge_open,
)
from gatewaypool_router.config import ObjectRef
from gatewaypool_router.kubesource import RouterReporter
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.metrics import RouterMetrics
from gatewaypool_router.studiesinflight import merge_in_flight


def test_ages_cover_buckets_used_since_start_only() -> None:
    usage = BucketUsage()
    usage.routed(5, 64)
    usage.routed(9, 64)
    ages = usage.ages(range(64))
    assert set(ages) == {5, 9}
    assert all(0 <= age < 5 for age in ages.values())
    [(bucket, age)] = usage.ages([5, 6]).items()
    assert bucket == 5
    assert usage.ages([5], now=1e12)[5] > age


def test_a_new_bucket_count_starts_over() -> None:
    usage = BucketUsage()
    usage.routed(5, 64)
    usage.routed(100, 4096)
    assert set(usage.ages(range(4096))) == {100}


def test_open_associations_count_up_and_down_across_threads() -> None:
    usage = BucketUsage()
    key = "ct-gw-0"

    def churn() -> None:
        for _ in range(1000):
            usage.opened(key)
            usage.closed(key)

    threads = [threading.Thread(target=churn) for _ in range(4)]
    usage.opened(key)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert usage.open_associations() == {key: 1}
    usage.closed(key)
    assert usage.open_associations() == {}


def test_most_recent_use_over_workers_wins() -> None:
    replies: list[dict[int, float] | None] = [{1: 12.0, 2: 40.0}, {1: 3.0, 3: 9.0}]
    assert merge_ages([1, 2, 3, 4], replies, now=100.0) == {1: 3.0, 2: 40.0, 3: 9.0}


def test_a_worker_that_does_not_answer_counts_as_using_everything_now() -> None:
    replies: list[dict[int, float] | None] = [{1: 12.0}, None]
    assert merge_ages([1, 2], replies, now=100.0) == {1: 0.0, 2: 0.0}


def test_a_lost_worker_counts_as_using_everything_when_it_died() -> None:
    replies: list[dict[int, float] | None] = [{1: 2.0}]
    assert merge_ages([1, 2], replies, now=100.0, lost_at=90.0) == {1: 2.0, 2: 10.0}


def test_only_the_buckets_asked_about() -> None:
    assert merge_ages([5], [{5: 1.0, 6: 0.5}], now=10.0) == {5: 1.0}


def test_no_workers_no_use() -> None:
    assert merge_ages([1, 2], [], now=10.0) == {}


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.dictionaries(st.integers(0, 15), st.floats(0, 1000, allow_nan=False)),
        ),
        max_size=4,
    ),
    st.none() | st.floats(0, 1000, allow_nan=False),
)
def test_merged_age_is_never_older_than_any_worker_says(
    replies: list[dict[int, float] | None], lost_at: float | None
) -> None:
    buckets = list(range(16))
    merged = merge_ages(buckets, replies, now=1000.0, lost_at=lost_at)
    for reply in replies:
        for bucket in buckets:
            if reply is None:
                assert merged[bucket] == 0.0
            elif bucket in reply:
                assert merged[bucket] <= reply[bucket]
    if lost_at is not None:
        assert all(merged[b] <= 1000.0 - lost_at for b in buckets)


def test_open_associations_are_summed() -> None:
    assert merge_open([{"gw-0": 2, "gw-1": 1}, {"gw-1": 3}, {}]) == {"gw-0": 2, "gw-1": 4}


class _Workers:
    def __init__(self) -> None:
        self.ages: list[dict[int, float] | None] = []
        self.open: list[dict[str, int]] = []
        self.asked: list[tuple[list[int], float]] = []

    def ask_ages(self, buckets: list[int], now: float) -> list[dict[int, float] | None]:
        self.asked.append((buckets, now))
        return self.ages

    def ask_open(self) -> list[dict[str, int]]:
        return self.open


def test_replica_usage_asks_with_the_reporters_clock() -> None:
    workers = _Workers()
    workers.ages = [{7: 4.0}, {7: 1.5}]
    workers.open = [{"gw-0": 1}, {"gw-0": 1}]
    usage = ReplicaBucketUsage(workers, clock=lambda: 50.0)
    assert usage.ages([7, 8], now=20.0) == {7: 1.5}
    assert workers.asked == [([7, 8], 20.0)]
    assert usage.open_associations() == {"gw-0": 2}


def test_replica_usage_does_not_ask_about_no_buckets() -> None:
    workers = _Workers()
    assert ReplicaBucketUsage(workers, clock=lambda: 1.0).ages([]) == {}
    assert workers.asked == []


def test_a_lost_worker_wakes_the_reporter_and_marks_every_bucket() -> None:
    now = [100.0]
    workers = _Workers()
    usage = ReplicaBucketUsage(workers, clock=lambda: now[0])
    woken: list[bool] = []
    usage.subscribe(lambda: woken.append(True))
    usage.worker_lost()
    now[0] = 103.0
    assert woken == [True]
    assert usage.ages([1, 2]) == {1: 3.0, 2: 3.0}


def test_held_instance_in_a_worker_wakes_the_reporter() -> None:
    usage = ReplicaBucketUsage(_Workers(), clock=lambda: 1.0)
    woken: list[bool] = []
    usage.subscribe(lambda: woken.append(True))
    usage.held()
    assert woken == [True]


def test_a_study_seen_by_two_workers_counts_once_on_its_latest_gateway() -> None:
    snapshots = [
        {"1.2.3": (10.0, "gw-0"), "1.2.4": (11.0, "gw-1")},
        {"1.2.3": (12.0, "gw-2")},
    ]
    assert merge_in_flight(snapshots, now=15.0, quiet_seconds=30.0) == {"gw-2": 1, "gw-1": 1}


def test_quiet_studies_are_not_in_flight() -> None:
    snapshots = [{"1.2.3": (10.0, "gw-0")}, {"1.2.4": (40.0, "gw-0")}]
    assert merge_in_flight(snapshots, now=41.0, quiet_seconds=30.0) == {"gw-0": 1}


def test_the_replica_report_says_used_for_a_bucket_any_worker_used() -> None:
    """The report the operator reads, built from two workers' answers."""
    gateways = [Gateway(name=f"gw-{i}", host="h", port=104 + i, ae_title="GW") for i in range(2)]
    moving_map = dataclasses.replace(
        balanced_map(gateways, buckets=8, version=2), moving={0: 1, 2: 1, 4: 1}
    )
    holder = MapHolder(RouterMetrics())
    holder.offer(moving_map, source="test")
    workers = _Workers()
    # Worker 0 used bucket 0 a minute ago; worker 1 used it just now, and bucket 2 too.
    workers.ages = [{0: 60.0}, {0: 0.5, 2: 0.5}]
    workers.open = [{"gw-1": 1}, {"gw-1": 2, "gw-0": 1}]
    reporter = RouterReporter(
        None,
        ObjectRef(namespace="ns", name="pool-routers"),
        pod_name="router-a",
        holder=holder,
        usage=ReplicaBucketUsage(workers, clock=time.monotonic),
    )
    report = reporter.build()
    # Bucket 0 by its most recent use (worker 1's), not worker 0's older one.
    assert dict(report.used) == {0: age_class(0.5), 2: age_class(0.5)}
    assert dict(report.open_associations) == {0: 1, 1: 3}
