"""``locate``'s join of the map and the routers' records, and what it prints (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gatewaypool.bucketmap import BucketMap, Gateway
from gatewaypool.hashing import study_bucket
from gatewaypool.studyrecord import GatewayUse, StudyEntry
from gatewaypool_operator.locate.answer import RouterAnswer, UidError, locate, render_text

UID = "1.2.826.0.1.3680043.8.498.12345"
NOW = datetime(2026, 12, 7, 23, 30, tzinfo=UTC)


def _pool_map(*, moving: bool, closing: bool = False) -> BucketMap:
    gateways = tuple(
        Gateway(
            name=f"ct-gw-{i}",
            host=f"ct-gw-{i}.ct-gw.rad.svc.cluster.local",
            port=104,
            ae_title="GATEWAY",
        )
        for i in range(3)
    )
    bucket = study_bucket(UID, 16)
    owners = tuple(i % 2 for i in range(16))
    move = {bucket: 2} if moving else {}
    return BucketMap(
        version=9,
        buckets=16,
        gateways=gateways,
        owners=owners,
        moving=move,
        closing=frozenset({bucket}) if closing else frozenset(),
    )


def _entry(*uses: GatewayUse) -> StudyEntry:
    return StudyEntry(UID, bucket=study_bucket(UID, 16), uses={u.gateway: u for u in uses})


def test_a_study_on_both_sides_of_a_move_shows_both_gateways_and_the_move() -> None:
    bucket_map = _pool_map(moving=True, closing=True)
    owner = bucket_map.gateway_for(study_bucket(UID, 16)).name
    before = GatewayUse(
        owner,
        instances=30,
        first_at=NOW.timestamp() - 100,
        last_at=NOW.timestamp() - 90,
        map_versions={8},
        acknowledged=30,
    )
    after = GatewayUse(
        "ct-gw-2",
        instances=18,
        first_at=NOW.timestamp() - 10,
        last_at=NOW.timestamp() - 5,
        map_versions={10},
        acknowledged=17,
        held=2,
        failures={0xA702: 1},
    )
    answers = [
        RouterAnswer("ct-router-a", entry=_entry(before)),
        RouterAnswer("ct-router-b", entry=_entry(after)),
        RouterAnswer("ct-router-c", entry=StudyEntry(UID)),
        RouterAnswer("ct-router-d", error="pod is Pending, not Running"),
    ]
    since = NOW - timedelta(seconds=95)
    location = locate(UID, bucket_map, routers=answers, move_since=since, in_pool=True)
    assert location.went_to == {owner: 30, "ct-gw-2": 18}
    # Gateways in the order they got the study, whichever router saw them.
    backwards = locate(UID, bucket_map, routers=answers[::-1], move_since=since, in_pool=True)
    assert list(backwards.went_to) == [owner, "ct-gw-2"]
    text = render_text(location, now=NOW)
    assert f"moving    {owner} → ct-gw-2 since 2026-12-07 23:28:25 UTC (95 s ago)" in text
    assert "closing" in text
    assert f"owner     {owner} (pod {owner}, {owner}.ct-gw.rad.svc.cluster.local:104" in text
    assert f"went to   {owner} (30), ct-gw-2 (18), by 2 of 4 routers" in text
    assert (
        "ct-gw-2: 18 instances 2026-12-07 23:29:50 to 23:29:55 UTC, map version 10, "
        "17 acknowledged, 1 failed (1 x 0xA702), 2 held while the bucket closed"
    ) in text
    assert "ct-router-c  not seen" in text
    single = GatewayUse(
        "ct-gw-2",
        instances=1,
        first_at=NOW.timestamp(),
        last_at=NOW.timestamp() + 0.2,
        map_versions={10},
        acknowledged=1,
    )
    one = locate(UID, bucket_map, routers=[RouterAnswer("r", entry=_entry(single))])
    assert "ct-gw-2: 1 instance at 2026-12-07 23:30:00 UTC, map version 10" in render_text(one)
    assert "ct-router-d  not asked: pod is Pending" in text
    data = location.to_json()
    assert data["moving"] == {
        "from": owner,
        "to": "ct-gw-2",
        "since": "2026-12-07T23:28:25.000000Z",
        "closing": True,
    }
    assert data["owner"]["pod"] == owner and data["seen"] is True
    assert [r["seen"] for r in data["routers"]] == [True, True, False, False]


def test_what_the_spool_did_later_is_shown_beside_what_was_routed() -> None:
    bucket_map = _pool_map(moving=False)
    owner = bucket_map.gateway_for(study_bucket(UID, 16)).name
    spooled = GatewayUse(
        owner,
        instances=5,
        first_at=NOW.timestamp() - 100,
        last_at=NOW.timestamp() - 60,
        map_versions={9},
        spooled=5,
        spool_delivered=4,
        spool_refused=1,
    )
    elsewhere = GatewayUse(
        "ct-gw-2", first_at=NOW.timestamp() - 20, last_at=NOW.timestamp() - 20, spool_delivered=2
    )
    location = locate(
        UID, bucket_map, routers=[RouterAnswer("r", entry=_entry(spooled, elsewhere))]
    )
    # Counted where they were routed, not again where the spool delivered them.
    assert location.went_to == {owner: 5}
    text = render_text(location, now=NOW)
    assert (
        f"{owner}: 5 instances 2026-12-07 23:28:20 to 23:29:00 UTC, map version 9, 5 spooled, "
        "4 delivered from the spool, 1 refused from the spool (kept aside)"
    ) in text
    assert "ct-gw-2: from the spool at 2026-12-07 23:29:40 UTC, 2 delivered from the spool" in text


def test_an_unseen_study_still_shows_its_bucket_and_owner() -> None:
    bucket_map = _pool_map(moving=False)
    location = locate(UID, bucket_map, routers=[RouterAnswer("r", entry=StudyEntry(UID))])
    text = render_text(location, now=NOW)
    bucket = study_bucket(UID, 16)
    assert f"bucket    {bucket} of 16 (map version 9)" in text
    assert f"owner     {bucket_map.gateway_for(bucket).name} (" in text
    assert "moving    no" in text
    assert "not seen by any router (1 asked)" in text
    assert not location.seen and location.went_to == {}


@pytest.mark.parametrize("bad", ["", "1.2.", "1..2", "1.2.3a", " 1.2", "1" * 65, "1.2\u0663"])
def test_a_malformed_uid_is_refused_by_name(bad: str) -> None:
    with pytest.raises(UidError, match="is not a StudyInstanceUID"):
        locate(bad, _pool_map(moving=False), routers=[])
