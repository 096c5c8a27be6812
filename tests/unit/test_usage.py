"""Router usage tracking: last use per bucket, open upstream associations per gateway."""

from __future__ import annotations

import threading

from gatewaypool_router.usage import Usage


def test_ages_cover_buckets_used_since_start_only() -> None:
    usage = Usage()
    usage.routed(5, 64)
    usage.routed(9, 64)
    ages = usage.ages(range(64))
    assert set(ages) == {5, 9}
    assert all(0 <= age < 5 for age in ages.values())
    [(bucket, age)] = usage.ages([5, 6]).items()
    assert bucket == 5
    assert usage.ages([5], now=1e12)[5] > age


def test_a_new_bucket_count_starts_over() -> None:
    usage = Usage()
    usage.routed(5, 64)
    usage.routed(100, 4096)
    assert set(usage.ages(range(4096))) == {100}


def test_open_associations_count_up_and_down_across_threads() -> None:
    usage = Usage()
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
