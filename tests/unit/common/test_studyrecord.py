"""The study record format: round trip, strictness, and the merge over workers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewaypool.studyrecord import (
    GatewayUse,
    RecordError,
    StudyEntry,
    dump_entry,
    merge_entries,
    parse_entry,
)

UID = "1.2.826.0.1.3680043.8.498.1"


def _use(gateway: str | None, first: float, last: float, **counts: int) -> GatewayUse:
    failures = {0xA702: counts.pop("failed")} if counts.get("failed") else {}
    counts.pop("failed", None)
    instances = sum(counts.values()) + sum(failures.values()) - counts.get("held", 0)
    return GatewayUse(
        gateway,
        instances=instances,
        first_at=first,
        last_at=last,
        map_versions={3},
        failures=failures,
        **counts,
    )


uses = st.builds(
    lambda name, first, span, ack, spooled, held, failed, versions, later: GatewayUse(
        name,
        instances=ack + spooled + failed,
        first_at=first,
        last_at=first + span,
        map_versions=set(versions),
        acknowledged=ack,
        spooled=spooled,
        held=min(held, ack + spooled + failed),
        failures={0xA801: failed} if failed else {},
        spool_delivered=later[0],
        spool_refused=later[1],
    ),
    st.one_of(st.none(), st.sampled_from(["gw-0", "gw-1", "ct-gw-12"])),
    st.integers(1_700_000_000_000_000, 1_900_000_000_000_000).map(lambda us: us / 1e6),
    st.integers(0, 10**9).map(lambda us: us / 1e6),
    st.integers(0, 500),
    st.integers(0, 500),
    st.integers(0, 500),
    st.integers(0, 500),
    st.sets(st.integers(0, 10**6), max_size=3),
    st.tuples(st.integers(0, 500), st.integers(0, 500)),
)


@given(st.lists(uses, max_size=4, unique_by=lambda u: u.gateway), st.integers(0, 65535))
def test_round_trip(items: list[GatewayUse], bucket: int) -> None:
    entry = StudyEntry(UID, bucket=bucket if items else None, uses={u.gateway: u for u in items})
    text = json.dumps(dump_entry(entry))
    again = parse_entry(text)
    assert again.study_uid == UID and again.bucket == entry.bucket
    assert set(again.uses) == set(entry.uses)
    for name, use in entry.uses.items():
        back = again.uses[name]
        assert (back.instances, back.acknowledged, back.spooled, back.held) == (
            use.instances,
            use.acknowledged,
            use.spooled,
            use.held,
        )
        assert (back.spool_delivered, back.spool_refused) == (
            use.spool_delivered,
            use.spool_refused,
        )
        assert back.failures == use.failures and back.map_versions == use.map_versions
        assert abs(back.first_at - use.first_at) < 1e-5 and abs(back.last_at - use.last_at) < 1e-5
    assert dump_entry(again) == dump_entry(entry)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(studyInstanceUID="1.2.x"), "studyInstanceUID"),
        (lambda d: d.update(bucket=-1), "bucket"),
        (lambda d: d.update(seen=False), "seen"),
        (lambda d: d.update(patientName="DOE^JOHN"), "unknown key 'patientName'"),
        (lambda d: d["gateways"][0].update(instances=True), "gateways[0].instances"),
        (lambda d: d["gateways"][0].update(firstAt="yesterday"), "gateways[0].firstAt"),
        (lambda d: d["gateways"][0].update(failed=3), "gateways[0].failed"),
        (lambda d: d["gateways"][0].update(spoolDelivered=-1), "gateways[0].spoolDelivered"),
        (lambda d: d["gateways"][0].update(spoolRefused="2"), "gateways[0].spoolRefused"),
        (lambda d: d["gateways"][0]["failures"][0].update(status="A702"), "failures[0].status"),
        (lambda d: d["gateways"].append(dict(d["gateways"][0])), "listed twice"),
    ],
)
def test_malformed_records_are_refused_naming_the_field(
    change: Callable[[dict[str, Any]], None], field: str
) -> None:
    entry = StudyEntry(
        UID, bucket=7, uses={"gw-0": _use("gw-0", 1e9, 1e9 + 1, acknowledged=2, failed=1)}
    )
    data = dump_entry(entry)
    parse_entry(data)  # the unchanged record is accepted: the refusals below are the change's
    change(data)
    with pytest.raises(RecordError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_entry(data)


def test_merge_over_workers_sums_counts_and_spans_times() -> None:
    one = StudyEntry(UID, bucket=5, uses={"gw-0": _use("gw-0", 100.0, 200.0, acknowledged=4)})
    two = StudyEntry(
        UID,
        bucket=5,
        uses={
            "gw-0": _use("gw-0", 50.0, 150.0, acknowledged=1, failed=2),
            "gw-1": _use("gw-1", 300.0, 400.0, spooled=3),
        },
    )
    merged = merge_entries(UID, [one, None, two])
    assert merged.bucket == 5 and merged.seen
    gw0 = merged.uses["gw-0"]
    assert (gw0.instances, gw0.acknowledged, gw0.failed) == (7, 5, 2)
    assert (gw0.first_at, gw0.last_at) == (50.0, 200.0)
    assert merged.uses["gw-1"].spooled == 3
    assert not merge_entries(UID, [None, None]).seen
    # The supervisor's spool record: deliveries only, its times counted in the span.
    spool = StudyEntry(
        UID,
        bucket=5,
        uses={"gw-1": GatewayUse("gw-1", first_at=450.0, last_at=450.0, spool_delivered=2)},
    )
    gw1 = merge_entries(UID, [two, spool]).uses["gw-1"]
    assert (gw1.instances, gw1.spooled, gw1.spool_delivered) == (3, 3, 2)
    assert (gw1.first_at, gw1.last_at) == (300.0, 450.0)
    alone = merge_entries(UID, [None, spool]).uses["gw-1"]
    assert (alone.first_at, alone.last_at, alone.spool_delivered) == (450.0, 450.0, 2)
    # Merging leaves the workers' entries alone.
    assert one.uses["gw-0"].instances == 4
