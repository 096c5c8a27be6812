"""Bucket handover decisions: each rule by example, then a model of routers and gateways.

The model runs N routers that apply published maps late, restart, route
instances into buckets, open associations and report, all at arbitrary
times, while the spec's replicas change and gateway pods become Ready late
or die; the operator's pure core runs after every step, its inputs read
back from the text the cluster would hold (maps, state and reports through
their dump and parse functions), as a restarted operator would read them.
Routers also spool: an instance of a bucket whose gateway cannot take it
waits in the router's spool, and its report says which buckets hold
spooled instances until the router forwards them; a bucket moved without
force while a router held spooled instances of it fails the model, as a
split does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from gatewaypool.assignment import moved_buckets, rebalance
from gatewaypool.bucketmap import BucketMap, Gateway, dump_map, parse_map
from gatewaypool.reports import SpoolSummary, build_report, dump_report, parse_report
from gatewaypool_operator.handover.decide import (
    GatewayPod,
    HandoverInput,
    HandoverPlan,
    HandoverSettings,
    RouterPod,
    Step,
    plan_handover,
)
from gatewaypool_operator.handover.state import (
    HandoverState,
    MoveBatch,
    StateError,
    dump_state,
    parse_state,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
CATALOGUE = tuple(
    Gateway(name=f"gw-{i}", host=f"gw-{i}.pool-gw.ns.svc", port=104, ae_title="GW")
    for i in range(8)
)
SETTINGS = HandoverSettings(
    quiet_seconds=30, max_drain_seconds=600, report_timeout_seconds=60, fresh_seconds=10
)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def pods(
    ready: Sequence[int], *, not_ready: Sequence[int] = (), since: float = 0
) -> list[GatewayPod]:
    return [GatewayPod(g, True, at(since)) for g in ready] + [
        GatewayPod(g, False, at(since)) for g in not_ready
    ]


def router(
    name: str,
    *,
    version: int | None,
    reported: float,
    started: float = -1000,
    ages: dict[int, float] | None = None,
    opened: dict[int, int] | None = None,
    buckets: int = 12,
) -> RouterPod:
    report = build_report(
        map_version=version,
        buckets=buckets if version is not None else 0,
        started_at=at(started),
        reported_at=at(reported),
        ages=ages or {},
        open_associations=opened or {},
    )
    return RouterPod(name=name, created_at=at(started), report=parse_report(dump_report(report)))


def balanced(count: int, *, buckets: int = 12, version: int = 1) -> BucketMap:
    return BucketMap(
        version=version,
        buckets=buckets,
        gateways=CATALOGUE[:count],
        owners=tuple(b % count for b in range(buckets)),
    )


def plan(
    published: BucketMap | None,
    *,
    now: float,
    wanted: int,
    gateway_pods: Sequence[GatewayPod],
    routers: Sequence[RouterPod] = (),
    state: HandoverState | None = None,
    statefulset: int | None = None,
    options: HandoverSettings = SETTINGS,
    floor: int = 0,
    keys: Sequence[str] = (),
) -> HandoverPlan:
    return plan_handover(
        HandoverInput(
            published=published,
            state=state,
            catalogue=CATALOGUE,
            buckets=published.buckets if published else 12,
            wanted=wanted,
            statefulset_replicas=wanted if statefulset is None else statefulset,
            gateway_pods=gateway_pods,
            routers=routers,
            settings=options,
            now=at(now),
            version_floor=floor,
            report_keys=keys,
        )
    )


def confirm(
    closing: HandoverPlan, *, now: float, routers: Sequence[RouterPod], **options: Any
) -> HandoverPlan:
    """The pass after a bucket went closing: routers report again on that version."""
    assert closing.publish is not None and closing.publish.closing
    return plan(closing.publish, now=now, routers=routers, state=closing.state, **options)


def reasons(result: HandoverPlan) -> list[str]:
    return [event.reason for event in result.events]


# --- the first map ---------------------------------------------------------------


def test_the_first_map_waits_for_a_ready_gateway_and_uses_only_ready_ones() -> None:
    assert plan(None, now=0, wanted=3, gateway_pods=pods([], not_ready=[0, 1, 2])).publish is None
    first = plan(None, now=0, wanted=3, gateway_pods=pods([0, 2], not_ready=[1]), floor=6)
    assert first.publish is not None
    assert first.publish.version == 7
    assert set(first.publish.owners) == {0, 2}
    assert Counter(first.publish.owners) == {0: 6, 2: 6}
    assert len(first.publish.gateways) == 3


# --- scale-up ----------------------------------------------------------------------


def test_scale_up_waits_for_ready_then_marks_the_fewest_buckets_moving() -> None:
    current = balanced(3)
    waiting = plan(current, now=0, wanted=4, gateway_pods=pods([0, 1, 2], not_ready=[3]))
    # The map lists gateway 3 but gives it nothing while its pod is not Ready.
    assert waiting.publish is not None
    assert waiting.publish.owners == current.owners
    assert not waiting.publish.moving
    started = plan(current, now=0, wanted=4, gateway_pods=pods([0, 1, 2, 3]))
    assert started.publish is not None
    moving = started.publish.moving
    assert started.publish.owners == current.owners  # routers keep sending to the owner
    expected = rebalance(current.owners, 4)
    assert sorted(moving) == moved_buckets(current.owners, expected)
    assert all(target == 3 for target in moving.values())
    assert reasons(started) == ["HandoverStarted"]
    assert started.moving == 3
    assert started.state.batches == (MoveBatch(2, at(0), frozenset(moving)),)


def marked_scale_up() -> tuple[BucketMap, HandoverState]:
    started = plan(balanced(3), now=0, wanted=4, gateway_pods=pods([0, 1, 2, 3]))
    assert started.publish is not None
    return started.publish, started.state


def test_a_move_completes_only_when_every_router_applied_it_and_it_is_quiet() -> None:
    current, state = marked_scale_up()
    everyone = pods([0, 1, 2, 3])
    bucket = min(current.moving)

    def attempt(*routers: RouterPod, now: float = 100) -> HandoverPlan:
        return plan(current, now=now, wanted=4, gateway_pods=everyone, routers=routers, state=state)

    behind = router("r-b", version=1, reported=99)
    quiet = router("r-a", version=2, reported=99)
    busy = router("r-c", version=2, reported=99, ages={bucket: 12})
    assert attempt(quiet, behind).publish is None  # r-b has not applied version 2
    blocked = attempt(quiet, busy)
    assert blocked.publish is not None  # the others close; this one stays moving
    assert blocked.publish.moving == current.moving
    assert blocked.publish.closing == set(current.moving) - {bucket}
    closing = attempt(quiet, router("r-c", version=2, reported=99, ages={bucket: 30}))
    assert closing.publish is not None and closing.publish.version == 3
    assert closing.publish.closing == set(current.moving)
    assert closing.publish.owners == current.owners  # still sent to (held for) the owner
    assert not closing.completed
    # The last step: every router confirms on the closing version that it is still quiet.
    confirmations = [
        router("r-a", version=3, reported=100.5),
        router("r-c", version=3, reported=100.5, ages={bucket: 31}),
    ]
    lagging = confirm(
        closing,
        now=101,
        routers=[confirmations[0], router("r-c", version=2, reported=100.5)],
        wanted=4,
        gateway_pods=everyone,
    )
    assert lagging.publish is None  # r-c has not applied the closing version yet
    used = confirm(
        closing,
        now=101,
        routers=[confirmations[0], router("r-c", version=3, reported=100.5, ages={bucket: 0})],
        wanted=4,
        gateway_pods=everyone,
    )
    # A study came in: that bucket goes back to moving; the confirmed ones complete.
    assert used.publish is not None
    assert used.publish.moving == {bucket: 3} and not used.publish.closing
    assert len(used.completed) == 2
    assert reasons(used) == ["HandoverDeferred", "HandoverCompleted"]
    done = confirm(closing, now=101, routers=confirmations, wanted=4, gateway_pods=everyone)
    assert done.publish is not None
    assert done.publish.version == 4
    assert not done.publish.moving
    assert done.publish.owners == tuple(rebalance(current.owners, 4))
    assert len(done.completed) == 3
    assert not done.forced
    assert reasons(done) == ["HandoverCompleted"]
    assert done.moving == 0
    assert done.oldest_move_seconds is None


def test_a_router_that_restarted_counts_as_active_until_start_plus_quiet() -> None:
    current, state = marked_scale_up()
    restarted = router("r-a", version=2, reported=99, started=80)
    result = plan(
        current,
        now=100,
        wanted=4,
        gateway_pods=pods([0, 1, 2, 3]),
        routers=[restarted],
        state=state,
    )
    assert result.publish is None
    later = router("r-a", version=2, reported=110, started=80)
    closing = plan(
        current, now=111, wanted=4, gateway_pods=pods([0, 1, 2, 3]), routers=[later], state=state
    )
    again = router("r-a", version=3, reported=112, started=80)
    result = confirm(closing, now=112, routers=[again], wanted=4, gateway_pods=pods([0, 1, 2, 3]))
    assert result.publish is not None
    assert len(result.completed) == 3


def test_a_stale_report_never_proves_quiet() -> None:
    current, state = marked_scale_up()
    stale = router("r-a", version=2, reported=80)  # 20 s old at 100, fresh_seconds is 10
    result = plan(
        current, now=100, wanted=4, gateway_pods=pods([0, 1, 2, 3]), routers=[stale], state=state
    )
    assert result.publish is None
    assert result.excluded_routers == ()  # not yet timed out either


def test_after_max_drain_a_move_is_forced_and_recorded() -> None:
    current, state = marked_scale_up()
    busy = router("r-a", version=2, reported=599, ages=dict.fromkeys(current.moving, 1.0))
    early = plan(
        current, now=599, wanted=4, gateway_pods=pods([0, 1, 2, 3]), routers=[busy], state=state
    )
    assert early.publish is None
    assert early.oldest_move_seconds == 599
    assert early.oldest_move_since == at(0)
    busy = router("r-a", version=2, reported=600, ages=dict.fromkeys(current.moving, 1.0))
    forced = plan(
        current, now=600, wanted=4, gateway_pods=pods([0, 1, 2, 3]), routers=[busy], state=state
    )
    assert forced.publish is not None
    assert not forced.publish.moving
    assert [m.forced for m in forced.forced] == ["MaxDrain"] * 3
    assert not forced.completed
    warning = [e for e in forced.events if e.reason == "HandoverForced"]
    assert warning
    assert warning[0].type == "Warning"


def test_a_gateway_not_ready_past_failover_loses_its_buckets_at_once() -> None:
    current = balanced(3)
    options = replace(SETTINGS, failover_after_seconds=120)
    down = pods([0, 2], not_ready=[1], since=0)
    busy = router("r-a", version=1, reported=100, ages=dict.fromkeys(range(12), 0.0))
    waiting = plan(current, now=100, wanted=3, gateway_pods=down, routers=[busy], options=options)
    assert waiting.publish is None  # not Ready, but not for long: it keeps its buckets
    failed = plan(current, now=120, wanted=3, gateway_pods=down, routers=[busy], options=options)
    assert failed.publish is not None
    assert 1 not in failed.publish.owners
    assert not failed.publish.moving
    assert {m.forced for m in failed.forced} == {"GatewayFailedOver"}
    assert len(failed.forced) == 4
    assert Counter(failed.publish.owners) == {0: 6, 2: 6}


def test_a_silent_router_is_excluded_once_and_its_absence_is_recorded() -> None:
    current, state = marked_scale_up()
    quiet = router("r-a", version=2, reported=199)
    silent = router("r-b", version=1, reported=100)  # 100 s ago, timeout 60
    first = plan(
        current,
        now=200,
        wanted=4,
        gateway_pods=pods([0, 1, 2, 3]),
        routers=[quiet, silent],
        state=state,
    )
    assert first.excluded_routers == ("r-b",)
    assert reasons(first)[0] == "RouterExcluded"
    assert "r-b" in first.events[0].message
    assert first.publish is not None and first.publish.closing
    confirmed = confirm(
        first,
        now=201,
        routers=[router("r-a", version=first.publish.version, reported=200.5), silent],
        wanted=4,
        gateway_pods=pods([0, 1, 2, 3]),
    )
    assert {m.forced for m in confirmed.forced} == {"RouterExcluded"}
    assert not confirmed.completed
    again = plan(
        first.publish,
        now=201,
        wanted=4,
        gateway_pods=pods([0, 1, 2, 3]),
        routers=[quiet, silent],
        state=first.state,
    )
    assert "RouterExcluded" not in reasons(again)  # posted once, not every pass
    newborn = RouterPod(name="r-new", created_at=at(100))
    never = plan(
        current, now=200, wanted=4, gateway_pods=pods([0, 1, 2, 3]), routers=[newborn], state=state
    )
    assert never.excluded_routers == ("r-new",)
    assert "has not reported" in never.events[0].message


def test_a_router_without_a_report_blocks_until_it_times_out() -> None:
    current, state = marked_scale_up()
    newborn = RouterPod(name="r-new", created_at=at(90), problem="used: required key is missing")
    result = plan(
        current, now=100, wanted=4, gateway_pods=pods([0, 1, 2, 3]), routers=[newborn], state=state
    )
    assert result.publish is None


# --- scale-down -----------------------------------------------------------------


def test_scale_down_drains_first_and_shrinks_only_when_no_router_can_send_there() -> None:
    current = balanced(4)
    everyone = pods([0, 1, 2, 3])
    r = router("r-a", version=1, reported=0)
    marked = plan(current, now=0, wanted=3, gateway_pods=everyone, routers=[r], statefulset=4)
    assert marked.replicas == 4
    assert marked.publish is not None
    assert set(marked.publish.moving) == {3, 7, 11}
    v2, s2 = marked.publish, marked.state
    r = router("r-a", version=2, reported=40)
    closing = plan(
        v2, now=40, wanted=3, gateway_pods=everyone, routers=[r], state=s2, statefulset=4
    )
    assert closing.replicas == 4
    r = router("r-a", version=3, reported=40.5)
    done = confirm(closing, now=40.5, routers=[r], wanted=3, gateway_pods=everyone, statefulset=4)
    assert done.publish is not None
    assert 3 not in done.publish.owners
    assert done.replicas == 4  # r-a still routes by version 3, where gateway 3 owns buckets
    v3, s3 = done.publish, done.state
    assert s3.span == 3
    assert s3.span_since == 4
    still_open = router("r-a", version=4, reported=41, opened={3: 1, 0: 2})
    held = plan(
        v3, now=41, wanted=3, gateway_pods=everyone, routers=[still_open], state=s3, statefulset=4
    )
    assert held.publish is None
    assert held.replicas == 4  # an association to gateway 3 is still open
    closed = router("r-a", version=4, reported=42, opened={0: 2})
    shrunk = plan(
        v3, now=42, wanted=3, gateway_pods=everyone, routers=[closed], state=s3, statefulset=4
    )
    assert shrunk.replicas == 3
    newborn = RouterPod(name="r-new", created_at=at(42))
    unsure = plan(
        v3,
        now=42,
        wanted=3,
        gateway_pods=everyone,
        routers=[closed, newborn],
        state=s3,
        statefulset=4,
    )
    assert unsure.replicas == 4  # it may route by a map it has not reported


def test_growth_is_at_once() -> None:
    result = plan(balanced(2), now=0, wanted=5, gateway_pods=pods([0, 1]), statefulset=2)
    assert result.replicas == 5


def test_a_scale_change_mid_handover_retargets_moves_to_leaving_gateways() -> None:
    current = balanced(3, buckets=30)
    everyone = pods([0, 1, 2, 3, 4])
    up = plan(current, now=0, wanted=5, gateway_pods=everyone)
    assert up.publish is not None
    assert set(up.publish.moving.values()) == {3, 4}
    r = router("r-a", version=2, reported=10, ages=dict.fromkeys(up.publish.moving, 1), buckets=30)
    down = plan(
        up.publish,
        now=10,
        wanted=2,
        gateway_pods=everyone,
        routers=[r],
        state=up.state,
        statefulset=5,
    )
    assert down.publish is not None
    assert down.publish.owners == current.owners  # nothing completed: nothing changes owner
    assert set(down.publish.moving.values()) <= {0, 1}
    # Buckets that were moving keep the version and time their move started.
    carried = set(up.publish.moving) & set(down.publish.moving)
    assert carried
    assert all(
        any(bucket in batch.buckets and batch.version == 2 for batch in down.state.batches)
        for bucket in carried
    )
    assert down.replicas == 3  # gateway 2 still owns buckets; 3 and 4 never got any
    final = rebalance(current.owners, 2)
    assert {b: t for b, t in down.publish.moving.items()} == {
        b: final[b] for b in moved_buckets(current.owners, final)
    }


def test_a_target_that_stops_being_ready_is_not_handed_the_bucket() -> None:
    current, state = marked_scale_up()
    r = router("r-a", version=2, reported=99)
    result = plan(
        current,
        now=100,
        wanted=4,
        gateway_pods=pods([0, 1, 2], not_ready=[3]),
        routers=[r],
        state=state,
    )
    assert result.publish is not None
    assert not result.publish.moving
    assert result.publish.owners == current.owners
    assert not result.completed


# --- versions, state, reports -------------------------------------------------------


def test_versions_only_increase_and_nothing_changes_without_a_reason() -> None:
    current = balanced(3, version=4)
    assert plan(current, now=0, wanted=3, gateway_pods=pods([0, 1, 2])).publish is None
    bumped = plan(current, now=0, wanted=3, gateway_pods=pods([0, 1, 2]), floor=9)
    assert bumped.publish is not None
    assert bumped.publish.version == 10
    assert bumped.publish.owners == current.owners


def test_an_operator_restart_resumes_from_the_stored_state() -> None:
    current, state = marked_scale_up()
    stored = parse_state(dump_state(state, buckets=12), buckets=12)
    assert stored == state
    busy = router("r-a", version=2, reported=599, ages=dict.fromkeys(current.moving, 1.0))
    resumed = plan(
        current, now=600, wanted=4, gateway_pods=pods([0, 1, 2, 3]), routers=[busy], state=stored
    )
    assert len(resumed.forced) == 3  # the move started at 0, not at the restart


def test_a_lost_state_is_resumed_conservatively() -> None:
    current, _ = marked_scale_up()
    busy = router("r-a", version=2, reported=599, ages=dict.fromkeys(current.moving, 1.0))
    resumed = plan(
        current, now=600, wanted=4, gateway_pods=pods([0, 1, 2, 3]), routers=[busy], state=None
    )
    assert resumed.publish is None  # started "now" as far as it knows: not forced yet
    assert resumed.state.batches[0].started_at == at(600)
    assert resumed.state_changed


def test_a_router_that_left_holds_every_handover_for_the_quiet_period() -> None:
    current, state = marked_scale_up()
    quiet = router("r-a", version=2, reported=99)
    left = replace(state, routers=frozenset({"r-a", "r-b"}))  # r-b's pod is gone now
    paused = plan(
        current, now=100, wanted=4, gateway_pods=pods([0, 1, 2, 3]), routers=[quiet], state=left
    )
    assert paused.publish is None
    assert reasons(paused) == ["HandoverPaused"]
    assert "r-b" in paused.events[0].message
    assert paused.state.hold_until == at(130)
    assert paused.state.routers == {"r-a"}
    assert parse_state(dump_state(paused.state, buckets=12), buckets=12) == paused.state
    still = router("r-a", version=2, reported=129)
    held = plan(
        current,
        now=129,
        wanted=4,
        gateway_pods=pods([0, 1, 2, 3]),
        routers=[still],
        state=paused.state,
    )
    assert held.publish is None
    assert not held.events  # said once
    later = router("r-a", version=2, reported=130)
    closing = plan(
        current,
        now=130,
        wanted=4,
        gateway_pods=pods([0, 1, 2, 3]),
        routers=[later],
        state=held.state,
    )
    again = router("r-a", version=3, reported=130.5)
    done = confirm(closing, now=131, routers=[again], wanted=4, gateway_pods=pods([0, 1, 2, 3]))
    assert len(done.completed) == 3
    assert done.state.hold_until is None


def test_a_router_that_left_is_noticed_by_its_report_too() -> None:
    current, state = marked_scale_up()
    quiet = router("r-a", version=2, reported=99)
    result = plan(
        current,
        now=100,
        wanted=4,
        gateway_pods=pods([0, 1, 2, 3]),
        routers=[quiet],
        state=state,
        keys=["r-a", "r-old"],
    )
    assert result.publish is None
    assert result.prune_reports == ("r-old",)
    assert reasons(result) == ["HandoverPaused"]


def test_reports_of_pods_that_are_gone_are_pruned() -> None:
    r = router("r-a", version=1, reported=0)
    result = plan(
        balanced(3),
        now=0,
        wanted=3,
        gateway_pods=pods([0, 1, 2]),
        routers=[r],
        keys=["r-a", "r-old"],
    )
    assert result.prune_reports == ("r-old",)


@pytest.mark.parametrize(
    ("text", "field_name"),
    [
        ("[]", "an object"),
        ('{"batches": 1}', "batches"),
        ('{"batches": [{"version": -1}]}', "batches[0].version"),
        ('{"batches": [{"version": 1, "startedAt": "x"}]}', "batches[0].startedAt"),
        (
            '{"batches": [{"version": 1, "startedAt": "2026-01-01T00:00:00Z", "buckets": "!"}]}',
            "batches[0].buckets",
        ),
        ('{"batches": [], "span": "3"}', "span"),
        ('{"batches": [], "span": 3, "spanSince": 1, "excluded": [1]}', "excluded"),
        ('{"batches": [], "span": 3, "spanSince": 1, "excluded": [], "routers": 2}', "routers"),
        (
            '{"batches": [], "span": 3, "spanSince": 1, "excluded": [], "routers": [], '
            '"holdUntil": "soon"}',
            "holdUntil",
        ),
    ],
)
def test_a_malformed_state_names_the_field(text: str, field_name: str) -> None:
    with pytest.raises(StateError, match=field_name.replace("[", r"\[").replace("]", r"\]")):
        parse_state(text, buckets=12)


# --- the model ------------------------------------------------------------------------

QUIET = 4
MODEL_SETTINGS = HandoverSettings(
    quiet_seconds=QUIET, max_drain_seconds=25, report_timeout_seconds=8, fresh_seconds=1
)


@dataclass
class Use:
    time: int
    seq: int  # orders actions within a second
    router: str
    bucket: int
    gateway: int


@dataclass
class Completion:
    bucket: int
    version: int
    decided: int
    forced: bool
    seen: dict[str, int]  # router → when (seq) it wrote the report the decision relied on


@dataclass
class ModelRouter:
    name: str
    created: int
    started: int
    applied: BucketMap | None
    last_use: dict[int, int] = field(default_factory=dict)
    opened: Counter[int] = field(default_factory=Counter)
    report: str | None = None
    #: Bucket → when (seq) its oldest instance waiting in this router's spool was spooled.
    spooled: dict[int, int] = field(default_factory=dict)


class SplitError(AssertionError):
    pass


@dataclass
class Model:
    buckets: int
    options: HandoverSettings
    time: int = 0
    wanted: int = 1
    statefulset: int = 1
    ready: dict[int, tuple[bool, int]] = field(default_factory=dict)  # ordinal → (ready, since)
    routers: dict[str, ModelRouter] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)  # the NAME-routers ConfigMap
    map_text: str | None = None
    state_text: str | None = None
    maps: list[BucketMap] = field(default_factory=list)
    uses: list[Use] = field(default_factory=list)
    completions: list[Completion] = field(default_factory=list)
    spawned: int = 0
    seq: int = 0
    report_seq: dict[str, int] = field(default_factory=dict)
    forced_moves: int = 0
    last_plan: HandoverPlan | None = None

    # --- the world ----------------------------------------------------------

    @property
    def published(self) -> BucketMap | None:
        return parse_map(self.map_text) if self.map_text else None

    def spawn(self) -> None:
        name = f"router-{self.spawned}"
        self.spawned += 1
        self.routers[name] = ModelRouter(name, self.time, self.time, self.published)

    def set_ready(self, ordinal: int, ready: bool) -> None:
        if ordinal < self.statefulset and self.ready.get(ordinal, (False, 0))[0] != ready:
            self.ready[ordinal] = (ready, self.time)

    def route(self, name: str, bucket: int, *, keep_open: bool) -> None:
        r = self.routers.get(name)
        if r is None or r.applied is None:
            return
        gateway = r.applied.owners[bucket % self.buckets]
        bucket %= self.buckets
        r.last_use[bucket] = self.time
        self.seq += 1
        self.uses.append(Use(self.time, self.seq, name, bucket, gateway))
        if keep_open:
            r.opened[gateway] += 1
        self.check_agreement()

    def spool(self, name: str, bucket: int) -> None:
        """The router takes an instance its gateway cannot take now: routed, and spooled."""
        r = self.routers.get(name)
        if r is None or r.applied is None:
            return
        self.route(name, bucket, keep_open=False)
        r.spooled.setdefault(bucket % self.buckets, self.seq)

    def forward(self, name: str) -> None:
        """The router forwards its spool, each bucket to its owner in the map it applied."""
        r = self.routers.get(name)
        if r is None or r.applied is None:
            return
        for bucket in sorted(r.spooled):
            self.route(name, bucket, keep_open=False)
        r.spooled.clear()

    def apply(self, name: str) -> None:
        r = self.routers.get(name)
        if r is not None and self.maps:
            r.applied = self.maps[-1]
            self.check_agreement()

    def restart(self, name: str) -> None:
        r = self.routers.get(name)
        if r is not None:
            r.started = self.time
            r.last_use.clear()
            r.opened.clear()
            r.applied = self.published  # a starting router loads the map first
            self.check_agreement()

    def report(self, name: str) -> None:
        r = self.routers.get(name)
        if r is None:
            return
        m = r.applied
        moving = m.moving if m is not None else {}
        self.seq += 1
        self.report_seq[name] = self.seq
        self.reports[name] = dump_report(
            build_report(
                map_version=m.version if m else None,
                buckets=m.buckets if m else 0,
                started_at=at(r.started),
                reported_at=at(self.time),
                ages={b: self.time - t for b, t in r.last_use.items() if b in moving},
                open_associations=dict(r.opened),
                spool=SpoolSummary(instances=len(r.spooled), buckets=frozenset(r.spooled))
                if m is not None
                else None,
            )
        )

    # --- the operator ---------------------------------------------------------

    def inputs(self) -> HandoverInput:
        published = self.published
        state = None
        if self.state_text is not None:
            state = parse_state(self.state_text, buckets=self.buckets)
        routers = []
        for name, r in self.routers.items():
            text = self.reports.get(name)
            routers.append(
                RouterPod(name, at(r.created), parse_report(text) if text is not None else None)
            )
        gateway_pods = [
            GatewayPod(g, ready, at(since))
            for g, (ready, since) in self.ready.items()
            if g < self.statefulset
        ]
        return HandoverInput(
            published=published,
            state=state,
            catalogue=CATALOGUE,
            buckets=self.buckets,
            wanted=self.wanted,
            statefulset_replicas=self.statefulset,
            gateway_pods=gateway_pods,
            routers=routers,
            settings=self.options,
            now=at(self.time),
            version_floor=self.maps[-1].version if self.maps else 0,
            report_keys=list(self.reports),
        )

    def operate(self) -> HandoverPlan:
        inputs = self.inputs()
        result = plan_handover(inputs)
        self.last_plan = result
        before = inputs.published
        if result.publish is not None:
            new = result.publish
            # (3) versions strictly increase.
            assert not self.maps or new.version > self.maps[-1].version
            # (2) a bucket is only ever given to a gateway whose pod is Ready.
            for b, owner in enumerate(new.owners):
                if before is None or before.owners[b] != owner:
                    assert self.ready.get(owner, (False, 0))[0], (b, owner)
            for target in new.moving.values():
                assert self.ready.get(target, (False, 0))[0]
                assert target < self.wanted
            seen = {pod.name: self.report_seq[pod.name] for pod in inputs.routers if pod.report}
            self.check_spools(result.completed, seen)
            for move in result.completed:
                self.completions.append(
                    Completion(move.bucket, new.version, self.time, False, seen)
                )
            for move in result.forced:
                self.completions.append(Completion(move.bucket, new.version, self.time, True, seen))
                self.forced_moves += 1
            self.map_text = dump_map(new)
            self.maps.append(new)
        self.state_text = dump_state(result.state, buckets=self.buckets)
        for key in result.prune_reports:
            del self.reports[key]
        # (5) the StatefulSet never drops below a gateway a live router may send to.
        for r in self.routers.values():
            if r.applied is not None:
                assert max(r.applied.owners) < result.replicas, (r.name, result.replicas)
            if +r.opened:
                assert max(g for g, n in r.opened.items() if n) < result.replicas
        if result.replicas < self.statefulset:
            for g in range(result.replicas, self.statefulset):
                self.ready.pop(g, None)
        elif result.replicas > self.statefulset:
            for g in range(self.statefulset, result.replicas):
                self.ready[g] = (False, self.time)
        self.statefulset = result.replicas
        return result

    # --- property (6) -------------------------------------------------------

    def check_spools(self, completed: Sequence[Any], seen: dict[str, int]) -> None:
        """No bucket moves without force while a router holds spooled instances of it.

        Unless, as for a use, the instance was spooled after the report the
        decision relied on (which no report could show; property (1) bounds
        that window).
        """
        for move in completed:
            for r in self.routers.values():
                since = r.spooled.get(move.bucket)
                relied = seen.get(r.name)
                if since is not None and relied is not None and since < relied:
                    raise SplitError(
                        f"bucket {move.bucket} moved at {self.time} while {r.name} held "
                        "spooled instances of it, which would reach the new owner"
                    )

    # --- property (1) -------------------------------------------------------

    def check_agreement(self) -> None:
        """No two live routers send an active bucket to different gateways, unless excused.

        Excused: an owner change between their versions that was forced (and
        recorded), or a use its router made after the report the completion
        relied on, which no report could show: the window `gatewaypool.reports`
        documents, at most fresh_seconds before the decision (checked too).
        """
        active: dict[int, list[Use]] = {}
        for use in reversed(self.uses):
            if self.time - use.time >= QUIET:
                break
            active.setdefault(use.bucket, []).append(use)
        for bucket, uses in active.items():
            views = {
                r.applied.version: r.applied.owners[bucket]
                for r in self.routers.values()
                if r.applied is not None
            }
            if len(set(views.values())) < 2:
                continue
            low, high = min(views), max(views)
            changes = [
                c for c in self.completions if c.bucket == bucket and low < c.version <= high
            ]
            assert changes, (bucket, views)
            for change in changes:
                if change.forced:
                    continue
                for use in uses:
                    relied = change.seen.get(use.router)
                    if relied is not None and use.seq < relied:
                        raise SplitError(
                            f"bucket {bucket} active (used by {use.router} at {use.time}) "
                            f"while routers disagree {views}; completion at {change.decided} "
                            f"relied on its report of {relied}"
                        )
                    # The residual window is bounded by the freshness requirement.
                    if use.time < change.decided - self.options.fresh_seconds:
                        raise SplitError(
                            f"bucket {bucket} active (used by {use.router} at {use.time}) "
                            f"while routers disagree {views}; completion at {change.decided} "
                            "relied on a report older than fresh_seconds"
                        )


def owners_balanced(owners: Sequence[int], wanted: int) -> bool:
    counts = Counter(owners)
    values = [counts.get(g, 0) for g in range(wanted)]
    return max(values) - min(values) <= 1 and all(owner < wanted for owner in owners)


actions = st.one_of(
    st.tuples(st.just("route"), st.integers(0, 3), st.integers(0, 63), st.booleans()),
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(st.just("apply"), st.integers(0, 3)),
    st.tuples(st.just("report"), st.integers(0, 3)),
    st.tuples(st.just("restart"), st.integers(0, 3)),
    st.tuples(st.just("spool"), st.integers(0, 3), st.integers(0, 63)),
    st.tuples(st.just("forward"), st.integers(0, 3)),
    st.tuples(st.just("spawn")),
    st.tuples(st.just("kill"), st.integers(0, 3)),
    st.tuples(st.just("scale"), st.integers(1, 5)),
    st.tuples(st.just("ready"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("tick"), st.integers(1, 4)),
    # Routers mostly apply and report promptly; these keep handovers completing.
    st.tuples(st.just("sync"), st.integers(0, 3)),
    st.tuples(st.just("sync all")),
    st.tuples(st.just("sync all")),
    st.tuples(st.just("tick"), st.integers(1, 2)),
)


def number(step: tuple[object, ...], index: int) -> int:
    value = step[index]
    assert isinstance(value, int)  # booleans too
    return value


def run_model(
    *, buckets: int, start: int, routers: int, steps: list[tuple[object, ...]], failover: int | None
) -> Model:
    model = Model(buckets=buckets, options=replace(MODEL_SETTINGS, failover_after_seconds=failover))
    model.wanted = model.statefulset = start
    for g in range(start):
        model.ready[g] = (True, 0)
    for _ in range(routers):
        model.spawn()
    model.operate()
    for name in model.routers:
        model.apply(name)
        model.report(name)
    model.operate()
    for step in steps:
        kind = step[0]
        names = sorted(model.routers)
        pick = names[number(step, 1) % len(names)] if len(step) > 1 and names else ""
        if kind == "route":
            model.route(pick, number(step, 2), keep_open=bool(number(step, 3)))
        elif kind == "spool":
            model.spool(pick, number(step, 2))
        elif kind == "forward":
            model.forward(pick)
        elif kind == "close" and pick:
            model.routers[pick].opened.clear()
        elif kind == "apply":
            model.apply(pick)
        elif kind == "report":
            model.report(pick)
        elif kind == "sync":
            model.apply(pick)
            model.report(pick)
        elif kind == "sync all":
            for name in names:
                model.apply(name)
                model.report(name)
        elif kind == "restart":
            model.restart(pick)
        elif kind == "spawn" and len(model.routers) < 4:
            model.spawn()
        elif kind == "kill" and len(model.routers) > 1:
            del model.routers[pick]
            model.check_agreement()
        elif kind == "scale":
            model.wanted = number(step, 1)
        elif kind == "ready":
            model.set_ready(number(step, 1), bool(number(step, 2)))
        elif kind == "tick":
            model.time += number(step, 1)
            model.check_agreement()
        model.operate()
    return model


def settle(model: Model) -> tuple[list[int], int, int]:
    """Make inputs stable and quiet; return the owners then, moving count, forced count."""
    for g in range(model.statefulset):
        model.set_ready(g, True)
    model.operate()
    for g in range(model.statefulset):
        model.set_ready(g, True)
    for name, r in model.routers.items():
        r.opened.clear()
        model.forward(name)  # the gateways take what was spooled
    before = model.published
    assert before is not None
    owners, moving, forced = list(before.owners), len(before.moving), model.forced_moves
    for _ in range(2 * int(model.options.max_drain_seconds)):
        model.time += 1
        for name in model.routers:
            model.apply(name)
            model.report(name)
        model.operate()
        for g in range(model.statefulset):
            model.set_ready(g, True)
    return owners, moving, forced


@settings(max_examples=300, deadline=None)
@given(
    buckets=st.integers(6, 24),
    start=st.integers(1, 4),
    routers=st.integers(1, 3),
    failover=st.none() | st.just(12),
    steps=st.lists(actions, min_size=20, max_size=150),
)
def test_model_never_splits_an_active_bucket_and_converges(
    buckets: int, start: int, routers: int, failover: int | None, steps: list[tuple[object, ...]]
) -> None:
    model = run_model(buckets=buckets, start=start, routers=routers, steps=steps, failover=failover)
    owners, moving, _ = settle(model)
    final = model.published
    assert final is not None
    # (4) once stable and quiet: every move done, balanced, the StatefulSet at the spec.
    assert not final.moving
    assert owners_balanced(final.owners, model.wanted)
    assert model.statefulset == model.wanted
    # ... having moved no more buckets than rebalance would from the owners then.
    minimum = len(moved_buckets(owners, rebalance(owners, model.wanted)))
    assert len(moved_buckets(owners, final.owners)) <= minimum
    event(f"moves under way when settling: {min(moving, 5)}+")
    event(f"quiet completions: {min(sum(not c.forced for c in model.completions), 10)}+")
    event(f"forced moves: {min(model.forced_moves, 10)}+")


@settings(max_examples=150, deadline=None)
@given(
    buckets=st.integers(6, 40),
    start=st.integers(1, 5),
    wanted=st.integers(1, 5),
    routers=st.integers(1, 3),
    late=st.lists(st.integers(0, 5), max_size=5),
)
def test_model_one_scale_change_moves_exactly_the_minimum_without_forcing(
    buckets: int, start: int, wanted: int, routers: int, late: list[int]
) -> None:
    """From a settled pool, one change of replicas, pods Ready late: fewest moves, none forced."""
    steps: list[tuple[object, ...]] = [("scale", wanted)]
    for g in late:
        steps += [("tick", 1), ("ready", g, True)]
    model = run_model(buckets=buckets, start=start, routers=routers, steps=steps, failover=None)
    owners = list(balanced(start, buckets=buckets).owners)
    settle(model)
    final = model.published
    assert final is not None
    assert not final.moving
    assert owners_balanced(final.owners, wanted)
    assert moved_buckets(owners, final.owners) == moved_buckets(owners, rebalance(owners, wanted))
    assert model.forced_moves == 0
    assert model.statefulset == wanted


SPLITTING_SCENARIO: list[tuple[object, ...]] = [
    ("tick", 5),  # past the hold of the first pass, which has no state to go by
    ("route", 0, 5, False),  # router-0 sends bucket 5 to gateway 1 ...
    ("report", 0),  # ... and says so
    ("scale", 3),
    ("ready", 2, True),  # buckets 4 and 5 start moving to gateway 2
    ("apply", 1),
    ("report", 1),
    ("apply", 1),
]


def test_the_model_passes_a_scenario_that_a_careless_core_fails() -> None:
    model = run_model(buckets=6, start=2, routers=2, steps=SPLITTING_SCENARIO, failover=None)
    assert model.published is not None
    assert model.published.moving == {4: 2, 5: 2}


def test_the_model_catches_a_core_that_ignores_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The property checker can fail: with the quiet check gone, it sees the split."""
    from gatewaypool_operator.handover import decide

    monkeypatch.setattr(decide._Routers, "quiet", lambda *args, **kwargs: True)
    monkeypatch.setattr(decide._Routers, "closing", lambda *args, **kwargs: Step.COMPLETED)
    with pytest.raises(SplitError, match="bucket 5 active"):
        run_model(buckets=6, start=2, routers=2, steps=SPLITTING_SCENARIO, failover=None)


def test_the_model_catches_a_core_that_shrinks_too_early(monkeypatch: pytest.MonkeyPatch) -> None:
    from gatewaypool_operator.handover import decide

    monkeypatch.setattr(decide, "_replicas", lambda x, **kwargs: x.wanted)
    with pytest.raises(AssertionError):
        run_model(buckets=6, start=3, routers=1, steps=[("scale", 2)], failover=None)


STALE_SCENARIO: list[tuple[object, ...]] = [
    ("scale", 3),
    ("ready", 2, True),  # buckets 4 and 5 start moving to gateway 2
    ("tick", 4),
    ("sync", 0),  # router-0 applies that and reports both quiet ...
    ("tick", 1),
    ("route", 0, 5, False),  # ... then sends bucket 5 to gateway 1, and reports nothing
    ("tick", 2),
    ("sync", 1),  # router-1 catches up: only router-0's word is stale now
    ("apply", 1),
]


def test_the_closing_step_saves_a_core_that_trusts_stale_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the quiet check made to trust a stale report, the closing step still asks
    every router on the closing version, sees bucket 5 used, and moves nothing."""
    from gatewaypool_operator.handover import decide

    model = run_model(buckets=6, start=2, routers=2, steps=STALE_SCENARIO, failover=None)
    assert model.published is not None
    assert model.published.moving == {4: 2, 5: 2}  # waits for a fresh report from router-0
    trusting = replace(MODEL_SETTINGS, fresh_seconds=8)
    original = decide._Routers.quiet

    def quiet(
        self: decide._Routers,
        bucket: int,
        *,
        marked: int,
        buckets: int,
        settings: HandoverSettings,
        now: datetime,
    ) -> bool:
        return original(self, bucket, marked=marked, buckets=buckets, settings=trusting, now=now)

    monkeypatch.setattr(decide._Routers, "quiet", quiet)
    steps = [*STALE_SCENARIO, ("sync", 0), ("sync", 1), ("tick", 1), ("sync", 0), ("sync", 1)]
    model = run_model(buckets=6, start=2, routers=2, steps=steps, failover=None)
    assert model.published is not None
    assert 5 in model.published.moving and 5 not in model.published.closing


def test_the_model_drives_three_to_five_to_two_mid_handover_to_the_end() -> None:
    steps: list[tuple[object, ...]] = [
        ("scale", 5),
        ("tick", 1),
        ("ready", 3, True),
        ("ready", 4, True),
        ("sync all",),
        ("route", 0, 7, True),
        ("tick", 1),
        ("scale", 2),  # before any move finished
        ("sync all",),
        ("tick", 1),
        ("route", 1, 9, False),
    ]
    model = run_model(buckets=30, start=3, routers=2, steps=steps, failover=None)
    assert model.published is not None
    assert model.published.moving
    assert not model.completions
    owners, _, _ = settle(model)
    final = model.published
    assert owners_balanced(final.owners, 2)
    assert not final.moving
    assert model.statefulset == 2
    assert model.forced_moves == 0
    assert moved_buckets(owners, final.owners) == moved_buckets(owners, rebalance(owners, 2))


SPOOL_SCENARIO: list[tuple[object, ...]] = [
    ("tick", 5),  # past the hold of the first pass
    ("scale", 3),
    ("ready", 2, True),  # buckets 4 and 5 start moving to gateway 2
    ("sync all",),
    ("spool", 0, 5),  # gateway 1 cannot take an instance of bucket 5: router-0 spools it
    ("tick", 6),  # quiet for longer than quietSeconds (4): only the spool says otherwise
    ("sync all",),
    ("tick", 1),
    ("sync all",),
    ("tick", 1),
    ("sync all",),
]


def test_a_spooled_bucket_does_not_move_until_its_spool_is_forwarded() -> None:
    model = run_model(buckets=6, start=2, routers=2, steps=SPOOL_SCENARIO, failover=None)
    assert model.published is not None
    assert 5 in model.published.moving and 5 not in model.published.closing
    assert 4 not in model.published.moving  # quiet and not spooled: it moved
    steps = [*SPOOL_SCENARIO, ("forward", 0), ("tick", 6), ("sync all",)]
    steps += [("tick", 1), ("sync all",)] * 2
    model = run_model(buckets=6, start=2, routers=2, steps=steps, failover=None)
    assert model.published is not None
    assert not model.published.moving
    assert model.forced_moves == 0


def test_the_model_catches_a_core_that_ignores_the_spool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The spool property can fail: with spooled buckets read as not spooled, it sees the move."""
    from gatewaypool.reports import RouterReport

    monkeypatch.setattr(RouterReport, "spooled", lambda self, bucket: False)
    with pytest.raises(SplitError, match="held spooled instances"):
        run_model(buckets=6, start=2, routers=2, steps=SPOOL_SCENARIO, failover=None)


def test_a_closing_bucket_reopens_when_a_router_spools_it() -> None:
    closing = plan(
        balanced(2, version=2).__class__(
            version=2,
            buckets=12,
            gateways=CATALOGUE[:3],
            owners=balanced(2).owners,
            moving={5: 2},
            closing=frozenset({5}),
        ),
        now=100,
        wanted=3,
        gateway_pods=pods([0, 1, 2]),
        routers=[spooling_router("r0", version=2, reported=99, spooled={5})],
        state=HandoverState((MoveBatch(2, at(50), frozenset({5})),), 3, 1),
    )
    assert closing.publish is not None
    assert 5 in closing.publish.moving and 5 not in closing.publish.closing
    assert "HandoverDeferred" in reasons(closing)


def test_a_spooled_bucket_is_still_forced_after_max_drain() -> None:
    moving = BucketMap(
        version=2,
        buckets=12,
        gateways=CATALOGUE[:3],
        owners=balanced(2).owners,
        moving={5: 2},
    )
    forced = plan(
        moving,
        now=700,
        wanted=3,
        gateway_pods=pods([0, 1, 2]),
        routers=[spooling_router("r0", version=2, reported=699, spooled={5})],
        state=HandoverState((MoveBatch(2, at(50), frozenset({5})),), 3, 1),
    )
    assert [m.bucket for m in forced.forced] == [5]
    assert "HandoverForced" in reasons(forced)


def spooling_router(
    name: str, *, version: int, reported: float, spooled: set[int], buckets: int = 12
) -> RouterPod:
    report = build_report(
        map_version=version,
        buckets=buckets,
        started_at=at(-1000),
        reported_at=at(reported),
        ages={},
        open_associations={},
        spool=SpoolSummary(instances=len(spooled), buckets=frozenset(spooled)),
    )
    return RouterPod(name=name, created_at=at(-1000), report=parse_report(dump_report(report)))
