"""The stall watchdog's decision: when an instance in progress is logged."""

from __future__ import annotations

import logging

import pytest

from gatewaypool_router.progress import Progress, StallWatch, overdue


class _Association:
    def __init__(self) -> None:
        self.progress = Progress()

    def who(self) -> dict[str, object]:
        return {"peer": "127.0.0.1:1"}


def test_no_instance_in_progress_is_never_overdue() -> None:
    assert not overdue(Progress(), now=1e9, limit=10)


def test_an_instance_is_overdue_after_the_limit_then_again_every_limit() -> None:
    progress = Progress()
    progress.start_instance("1.2.3")
    start = progress.instance_started
    assert not overdue(progress, now=start + 9.9, limit=10)
    assert overdue(progress, now=start + 10, limit=10)
    progress.warned_at = start + 10
    assert not overdue(progress, now=start + 19.9, limit=10)
    assert overdue(progress, now=start + 20, limit=10)
    progress.end_instance()
    assert not overdue(progress, now=start + 30, limit=10)


def test_the_watch_logs_the_state_and_counts_each_instance_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    association = _Association()
    counted: list[int] = []
    watch = StallWatch(lambda: [association], limit=5, on_overdue=lambda: counted.append(1))
    association.progress.start_instance("1.2.3")
    association.progress.wait("gateway", "C-STORE-RSP")
    association.progress.received_bytes = association.progress.forwarded_bytes = 100
    start = association.progress.instance_started
    with caplog.at_level(logging.WARNING):
        assert watch.check(start + 1) == 0
        assert watch.check(start + 5) == 1
        assert watch.check(start + 6) == 0
        assert watch.check(start + 10) == 1
    assert counted == [1]
    assert len(caplog.records) == 2
    fields = vars(caplog.records[0])["fields"]
    assert fields["waiting_for"] == "C-STORE-RSP"
    assert fields["received_bytes"] == fields["forwarded_bytes"] == 100
