"""The map watch's decisions: which request next, and after how long (ListWatchPlan)."""

from __future__ import annotations

import pytest

from gatewaypool_router.kubesource import BACKOFF_FIRST, BACKOFF_MAX, ListWatchPlan, Step


def plan(jitter: float = 1.0) -> ListWatchPlan:
    return ListWatchPlan(jitter=lambda: jitter)


def test_lists_first_then_watches_from_the_list_at_once() -> None:
    p = plan()
    assert p.next() == Step("list", None, 0.0)
    p.listed("100")
    assert p.next() == Step("watch", "100", 0.0)


def test_resumes_from_the_newest_event_or_bookmark() -> None:
    p = plan()
    p.listed("100")
    p.watching()
    p.seen("105")  # an event of our object
    p.seen("230")  # a bookmark: others' writes moved the server on
    assert p.ended(seconds=50) == 0.0
    assert p.next() == Step("watch", "230", 0.0)


def test_410_lists_again_at_once_then_backs_off_if_it_repeats() -> None:
    p = plan()
    p.listed("100")
    p.watching()
    assert p.expired() == 0.0
    assert p.next() == Step("list", None, 0.0)
    p.listed("500")
    p.watching()
    # Gone again before anything worked (a server that restarted with an
    # empty watch cache): now it waits, longer each time.
    first = p.expired()
    assert first == BACKOFF_FIRST
    assert p.next() == Step("list", None, first)
    p.listed("600")
    p.watching()
    assert p.expired() == 2 * BACKOFF_FIRST


def test_a_working_watch_makes_the_next_410_immediate_again() -> None:
    p = plan()
    p.listed("1")
    p.expired()
    p.listed("2")
    assert p.expired() > 0
    p.listed("3")
    p.watching()
    p.seen("4")
    p.ended(seconds=50)
    assert p.expired() == 0.0


def test_failures_back_off_doubling_up_to_the_ceiling_and_keep_the_version() -> None:
    p = plan()
    p.listed("100")
    delays = [p.failed() for _ in range(12)]
    assert delays[:4] == [0.5, 1.0, 2.0, 4.0]
    assert max(delays) == BACKOFF_MAX == delays[-1]
    assert p.next() == Step("watch", "100", BACKOFF_MAX), "resume, do not re-list"
    p.watching()
    p.seen("101")
    assert p.failures == 0
    assert p.ended(seconds=50) == 0.0


@pytest.mark.parametrize("jitter", [0.0, 0.3, 0.999])
def test_jitter_draws_between_half_and_all_of_the_delay(jitter: float) -> None:
    p = plan(jitter)
    delay = p.failed()
    assert BACKOFF_FIRST / 2 <= delay <= BACKOFF_FIRST
    assert delay == pytest.approx(BACKOFF_FIRST * (0.5 + 0.5 * jitter))


def test_a_watch_ended_at_once_with_nothing_in_it_is_a_failure() -> None:
    p = plan()
    p.listed("100")
    p.watching()
    assert p.ended(seconds=0.01) == BACKOFF_FIRST
    p.watching()
    assert p.ended(seconds=0.01) == 2 * BACKOFF_FIRST
    # A short watch that delivered something worked.
    p.watching()
    p.seen("101")
    assert p.ended(seconds=0.01) == 0.0


def test_requests_stay_bounded_whatever_the_server_answers() -> None:
    """Against a server that answers every request badly, count requests per minute."""
    for answer in ("gone", "error", "short"):
        p = plan(jitter=0.0)  # the shortest delays jitter can draw
        elapsed, requests = 0.0, 0
        while elapsed < 600:
            step = p.next()
            elapsed += step.delay
            requests += 1
            if step.verb == "list":
                p.listed(str(requests))
            elif answer == "gone":
                p.watching()
                p.expired()
            elif answer == "error":
                p.failed()
            else:
                p.watching()
                p.ended(seconds=0.0)
        # Back-off reaches 15 s (half of 30) within a few steps: a few per minute.
        assert requests / (elapsed / 60) < 10, answer
