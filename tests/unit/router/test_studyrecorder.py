"""The router's bounded study record: outcomes counted per gateway, least recent forgotten."""

from __future__ import annotations

import itertools

from gatewaypool_router.statuses import Status
from gatewaypool_router.studyrecorder import StudyRecorder


def _clock() -> itertools.count[float]:
    return itertools.count(1_800_000_000.0)


def test_outcomes_are_counted_per_gateway() -> None:
    ticks = _clock()
    record = StudyRecorder(capacity=10, clock=lambda: next(ticks))
    uid = "1.2.3.4"
    record.answered(uid, gateway="gw-0", bucket=9, map_version=3, status=0)
    record.answered(uid, gateway="gw-0", bucket=9, map_version=3, status=0xB000)  # a warning
    record.answered(uid, gateway="gw-0", bucket=9, map_version=4, status=0, held=True)
    record.answered(uid, gateway="gw-1", bucket=9, map_version=5, status=0, spooled=True)
    record.answered(uid, gateway="gw-1", bucket=9, map_version=5, status=int(Status.SPOOL_FULL))
    record.answered(uid, gateway=None, bucket=None, map_version=None, status=int(Status.NO_MAP))
    entry = record.get(uid)
    assert entry is not None and entry.bucket == 9
    gw0, gw1, none = entry.uses["gw-0"], entry.uses["gw-1"], entry.uses[None]
    assert (gw0.instances, gw0.acknowledged, gw0.held, gw0.map_versions) == (3, 3, 1, {3, 4})
    assert (gw0.first_at, gw0.last_at) == (1_800_000_000.0, 1_800_000_002.0)
    assert (gw1.spooled, gw1.failures) == (1, {int(Status.SPOOL_FULL): 1})
    assert none.failures == {int(Status.NO_MAP): 1}
    # A copy: what the caller does with it does not reach the record.
    gw0.instances = 0
    again = record.get(uid)
    assert again is not None and again.uses["gw-0"].instances == 3


def test_what_the_spool_settles_is_counted_where_it_went() -> None:
    ticks = _clock()
    record = StudyRecorder(capacity=10, clock=lambda: next(ticks))
    uid = "1.2.3.4"
    record.answered(uid, gateway="gw-1", bucket=9, map_version=5, status=0, spooled=True)
    record.answered(uid, gateway="gw-1", bucket=9, map_version=5, status=0, spooled=True)
    record.from_spool(uid, gateway="gw-1", bucket=9, delivered=True)
    record.from_spool(uid, gateway="gw-1", bucket=9, delivered=False)
    record.from_spool(uid, gateway="gw-2", bucket=9, delivered=True)
    entry = record.get(uid)
    assert entry is not None
    gw1, gw2 = entry.uses["gw-1"], entry.uses["gw-2"]
    assert (gw1.instances, gw1.spooled, gw1.spool_delivered, gw1.spool_refused) == (2, 2, 1, 1)
    assert (gw1.first_at, gw1.last_at) == (1_800_000_000.0, 1_800_000_003.0)
    # A gateway the spool reached that no instance was routed to: no instances of its own.
    assert (gw2.instances, gw2.spool_delivered, gw2.map_versions) == (0, 1, set())


def test_the_least_recently_routed_study_is_forgotten_first() -> None:
    record = StudyRecorder(capacity=2)
    for uid in ("1.1", "1.2", "1.1", "1.3"):
        record.answered(uid, gateway="gw-0", bucket=0, map_version=1, status=0)
    assert len(record) == 2
    assert record.get("1.2") is None
    assert record.get("1.1") is not None and record.get("1.3") is not None


def test_capacity_zero_keeps_nothing() -> None:
    record = StudyRecorder(capacity=0)
    record.answered("1.1", gateway="gw-0", bucket=0, map_version=1, status=0)
    assert record.get("1.1") is None
