"""Bucket handover as pure decisions: what to publish next, and how far the gateways may shrink.

A bucket changes owner only when no router is sending a study into it (the
README's "Scaling without splitting a study" tells it for users). On every
pass the operator calls `plan_handover` with what it observed; the function
returns the next map to publish (or None), the StatefulSet replica count
allowed now, the moves completed and forced, the Events to post and the
drain progress. It does no I/O, keeps no memory between calls, and is
deterministic: everything it needs to resume after an operator restart is
in the published map and the `HandoverState` stored beside it.

The rules, pass by pass; the code cites them by number:

1. *Receivers.* Gateways that may receive buckets are the wanted ones
   (ordinal below ``spec.replicas``) whose pods are Ready. A wanted gateway
   that is not Ready keeps what it owns (its pod is restarting) but receives
   nothing, until it has been not Ready for ``failoverAfterSeconds``: then
   its buckets move at once (rule 7). Gateways at or above ``spec.replicas``
   are leaving. A pool's first map deals the buckets round robin over the
   Ready wanted gateways, once there is one.
2. *Targets.* The target owners are `gatewaypool.assignment.rebalance` of
   the *planned* owners: each bucket's owner, or the gateway it is moving to
   if that one may still receive. Planning from the targets already
   published makes the passes agree with each other (a balanced plan is a
   fixed point of `rebalance`), so a handover is never re-decided while it
   drains, and a new spec mid-handover only re-targets the moves it must.
   When rebalancing the owners alone would move strictly fewer buckets (say
   the moves under way went to gateways that are now over their share), that
   plan is taken instead; every such switch leaves fewer moves to make, so
   the plans settle, and from any pass on the buckets that change owner are
   at most the fewest `rebalance` would move from the owners of that pass.
3. *Mark.* A bucket whose target differs from its owner is published
   moving, ``owner → target``; routers keep sending it to the owner. It is
   recorded with the version that marked it and the time it started
   (`MoveBatch`). A moving bucket whose target changes keeps both: routers
   send it to the same owner whatever the target. A bucket whose target
   becomes its owner again simply stops moving.
4. *Close.* A moving bucket that every considered router's fresh report (on
   the marking version or newer) shows quiet for at least ``quietSeconds``
   -- which also covers a router that started less than ``quietSeconds``
   before its report -- is published *closing*: routers on that version hold
   its instances instead of sending them to the owner.
5. *Complete.* A closing bucket completes (its target becomes the owner)
   when every considered router's fresh report written on a version that
   has it closing still shows it quiet: from then on no router sends it to
   the old owner, and an instance held meanwhile belongs to a study that
   began after the bucket went quiet, so the handover is exact, whatever
   the reports' age.
6. *Reopen.* A closing bucket that such a report shows used (a study came
   in after the operator last looked, or one is held now) goes back to
   plain moving, and its held instances go to the owner.
7. *Force.* A moving bucket changes owner anyway, counted as forced,
   ``maxDrainSeconds`` after it started, at once when its owner failed over
   (rule 1), and when it completes while a router is excluded (rule 8).
8. *Exclude.* A live router whose newest report (or, without one, whose
   pod) is older than the report timeout is excluded: no step waits for its
   word. The others are the *considered* routers.
9. *Pause.* A router pod that goes away (or a lost state, when one may have
   gone unseen) holds every close and completion for ``quietSeconds``
   (``HandoverState.hold_until``): the study it was receiving may go on
   through another router that has not seen that bucket in use. It is the
   mirror of the rule for a router that starts.
10. *Versions* only increase, also above ``version_floor``
    (``status.mapVersion``), and a pass that changes nothing publishes
    nothing.
11. *Shrink last.* The StatefulSet grows at once to ``spec.replicas``; it
    shrinks only as far as no live router can still send to a gateway it
    would remove: not under the map version it applied, whose highest owner
    is known only for versions since the current highest owner was
    published (``HandoverState.span_since``; a router on an older version
    holds the StatefulSet where it is), and not over an association it
    reports open.
12. *Spooled.* A bucket with instances in a considered router's spool (its
    report's ``spool.buckets``, `RouterReport.spooled`) is not quiet,
    whatever its last use: it does not close (rule 4), and a closing one
    reopens (rule 6), so that what the router spooled reaches the owner its
    study began on, first in first out, before the bucket moves. Only rule
    7 moves it (``maxDrainSeconds``, a failed-over owner, an excluded
    router); the routers then send what they spooled to the new owner.

Map gateways are numbered by StatefulSet ordinal (gateway ``i`` is pod ``i``),
as `gatewaypool_operator.mapgateways.desired_gateways` builds them, so gateway
indices in routers' reports mean the same pod in every version.

Where the move records live (`gatewaypool_operator.handover.state`):
`dump_state` gives the text the operator stores under `STATE_KEY` in the
``NAME-map`` ConfigMap, written in the same update as the map (routers
read ``map.json``, and ``readiness.json`` beside it, never this), so a map
and the start times of its moves are never out of step. Readiness
(`gatewaypool_operator.mapgateways.readiness`) is not a rule of handover:
it changes no owner and publishes no version; rule 1 alone decides what a
gateway that is not Ready keeps. A missing or unreadable state is safe to
resume from: every moving bucket then counts as marked by the published
version and started now, which can only delay completion and forcing.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, NamedTuple

from gatewaypool.assignment import initial_owners, rebalance
from gatewaypool.bucketmap import BucketMap, Gateway
from gatewaypool.reports import AGE_CLASSES, RouterReport
from gatewaypool.strict import format_time
from gatewaypool_operator.events import Event, Reason
from gatewaypool_operator.handover.state import MAX_BATCHES, HandoverState, MoveBatch

__all__ = [
    "DEFAULT_FRESH_SECONDS",
    "DEFAULT_REPORT_TIMEOUT_SECONDS",
    "Forced",
    "GatewayPod",
    "HandoverInput",
    "HandoverPlan",
    "HandoverSettings",
    "Move",
    "RouterPod",
    "Step",
    "plan_handover",
]

DEFAULT_FRESH_SECONDS: Final = 10.0
"""How old a report may be and still prove a bucket quiet (routers report every 2 s)."""

DEFAULT_REPORT_TIMEOUT_SECONDS: Final = 60.0
"""A router silent for this long is excluded from handovers (with an event)."""


class Step(enum.Enum):
    """Where a bucket that is not where it should be stands after a pass."""

    STARTED = "started"  # rule 3: marked moving by this pass
    MOVING = "moving"  # rule 3: moving, not yet quiet everywhere
    CLOSING = "closing"  # rule 4: closing, its completion not yet confirmed
    REOPENED = "reopened"  # rule 6: was closing, used again: moving
    COMPLETED = "completed"  # rule 5: handed over, quiet on every router
    FORCED = "forced"  # rule 7: handed over without proof of quiet


class Forced(enum.StrEnum):
    """Why a bucket was handed over without proof of quiet (rule 7)."""

    MAX_DRAIN = "MaxDrain"
    FAILOVER = "GatewayFailedOver"
    UNCONFIRMED = "RouterExcluded"


# --- inputs ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HandoverSettings:
    """The timings of handover.

    Attributes
    ----------
    quiet_seconds, max_drain_seconds
        ``spec.handover``.
    failover_after_seconds
        A gateway pod not Ready for this long has its buckets moved at once
        (forced); None: never, its buckets wait for it.
    report_timeout_seconds
        A live router whose newest report (or, without one, whose pod) is
        older than this is excluded: handovers stop waiting for it.
    fresh_seconds
        The oldest a report may be to prove a bucket quiet; see
        `gatewaypool.reports` for why this bounds the risk of a split.
    """

    quiet_seconds: float
    max_drain_seconds: float
    failover_after_seconds: float | None = None
    report_timeout_seconds: float = DEFAULT_REPORT_TIMEOUT_SECONDS
    fresh_seconds: float = DEFAULT_FRESH_SECONDS

    def __post_init__(self) -> None:
        if self.quiet_seconds <= 0:
            raise ValueError(f"quiet_seconds: {self.quiet_seconds!r} is not positive")
        if self.max_drain_seconds < self.quiet_seconds:
            raise ValueError(
                f"max_drain_seconds: {self.max_drain_seconds!r} is less than quiet_seconds"
            )
        if self.fresh_seconds <= 0 or self.report_timeout_seconds < self.fresh_seconds:
            raise ValueError(
                f"fresh_seconds {self.fresh_seconds!r} must be positive and at most "
                f"report_timeout_seconds {self.report_timeout_seconds!r}"
            )


@dataclass(frozen=True, slots=True)
class GatewayPod:
    """A gateway pod that exists.

    Attributes
    ----------
    ordinal
        Its StatefulSet ordinal, which is its gateway index in the map.
    ready
        Its ``Ready`` condition.
    since
        When ``Ready`` last changed (the condition's ``lastTransitionTime``);
        None if unknown, in which case it never fails over.
    """

    ordinal: int
    ready: bool
    since: datetime | None = None


@dataclass(frozen=True, slots=True)
class RouterPod:
    """A router pod that exists, and its report.

    Attributes
    ----------
    name
        The pod's name, the key of its report.
    created_at
        The pod's ``creationTimestamp``: a router that never reported is
        excluded once this is older than the report timeout.
    report
        Its newest report; None if there is none or it is unusable.
    problem
        Why the report is unusable (a `gatewaypool.reports.ReportError`), for
        the Event.
    """

    name: str
    created_at: datetime
    report: RouterReport | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class HandoverInput:
    """Everything one pass decides from.

    Attributes
    ----------
    published
        The map published now; None if there is none.
    state
        The `HandoverState` stored with it; None if missing or unreadable.
    version_floor
        A version known to have been published (``status.mapVersion``).
    catalogue
        The map entry of gateway ``i`` at index ``i``, for at least
        ``max(wanted, len(published.gateways))`` gateways
        (`gatewaypool_operator.mapgateways.desired_gateways`).
    buckets
        ``spec.buckets``.
    wanted
        ``spec.replicas``.
    statefulset_replicas
        The gateway StatefulSet's ``spec.replicas`` now.
    gateway_pods
        The gateway pods that exist.
    routers
        The router pods that exist, with their reports.
    report_keys
        The keys of the ``NAME-routers`` ConfigMap, to prune reports of pods
        that are gone.
    settings
        The timings.
    now
        The time of the pass, timezone-aware.
    """

    published: BucketMap | None
    state: HandoverState | None
    catalogue: Sequence[Gateway]
    buckets: int
    wanted: int
    statefulset_replicas: int
    gateway_pods: Sequence[GatewayPod]
    routers: Sequence[RouterPod]
    settings: HandoverSettings
    now: datetime
    version_floor: int = 0
    report_keys: Collection[str] = ()


# --- outputs -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Move:
    """A bucket that changed owner in this pass.

    `forced` is None for a handover that completed quietly, else why not.
    """

    bucket: int
    source: int
    target: int
    started_at: datetime
    forced: Forced | None = None


@dataclass(frozen=True, slots=True)
class HandoverPlan:
    """What one pass decided.

    Attributes
    ----------
    publish
        The map to publish now, or None.
    state
        The state to store with the map (also when `publish` is None: the
        excluded routers may have changed); `state_changed` says whether a
        write is needed.
    replicas
        The gateway StatefulSet's replica count allowed now.
    completed, forced
        Moves that completed quietly / were forced in `publish`.
    events
        To post, in order.
    prune_reports
        Keys of the ``NAME-routers`` ConfigMap whose pods are gone.
    moving
        Buckets moving after this pass; `oldest_move_since` when the oldest
        move started, `oldest_move_seconds` its age (None when nothing moves).
    excluded_routers
        Live routers whose word is not waited for.
    """

    publish: BucketMap | None
    state: HandoverState
    state_changed: bool
    replicas: int
    completed: tuple[Move, ...]
    forced: tuple[Move, ...]
    events: tuple[Event, ...]
    prune_reports: tuple[str, ...]
    moving: int
    oldest_move_seconds: float | None
    excluded_routers: tuple[str, ...]
    oldest_move_since: datetime | None = None


# --- the pass ------------------------------------------------------------------------


def plan_handover(inputs: HandoverInput) -> HandoverPlan:
    """Decide one pass; see the module docstring for the rules.

    Raises
    ------
    ValueError
        If `now` is naive, the catalogue is too short, or the published map
        has another bucket count than `buckets`.
    """
    x = inputs
    if x.now.tzinfo is None:
        raise ValueError("now: a naive datetime is ambiguous; pass a timezone-aware one")
    if x.published is not None and x.published.buckets != x.buckets:
        raise ValueError(
            f"published map has {x.published.buckets} buckets, the spec {x.buckets}: "
            "the bucket count is fixed for a pool's life"
        )
    listed = max(x.wanted, len(x.published.gateways) if x.published else 0, 1)
    if len(x.catalogue) < listed:
        raise ValueError(f"catalogue: {len(x.catalogue)} gateways, {listed} needed")

    previous = x.state or HandoverState()
    routers = _Routers.classify(x)
    events, held, prune = _router_hold(x, previous, routers)
    if x.published is None:
        return _first_map(x, events=events, held=held, prune=prune)

    published = x.published
    decided = _decide_buckets(x, published, routers, hold=held.hold_until)
    publish, version = _next_map(x, published, decided)
    state = HandoverState(
        _batches(decided.marks, decided.moving, decided.started, version=version, now=x.now),
        decided.span,
        _span_since(x, previous, published, span=decided.span, version=version),
        *held,
    )
    events.extend(_move_events(decided, owners=published.owners, version=version))
    starts = [batch.started_at for batch in state.batches]
    return HandoverPlan(
        publish=publish,
        state=state,
        state_changed=state != x.state,
        replicas=_replicas(x, state=state),
        completed=tuple(decided.completed),
        forced=tuple(decided.forced),
        events=tuple(events),
        prune_reports=prune,
        moving=len(decided.moving),
        oldest_move_seconds=(x.now - min(starts)).total_seconds() if starts else None,
        excluded_routers=tuple(sorted(held.excluded)),
        oldest_move_since=min(starts) if starts else None,
    )


def _router_hold(
    x: HandoverInput, previous: HandoverState, routers: _Routers
) -> tuple[list[Event], _Held, tuple[str, ...]]:
    """The routers' part of a pass: who is excluded (rule 8), and the hold (rule 9).

    Returns the Events so far, the bookkeeping to store, and the reports to
    prune (those of pods that are gone).
    """
    events = [
        Event(Reason.ROUTER_EXCLUDED, routers.excluded[name])
        for name in sorted(routers.excluded)
        if name not in previous.excluded  # said once, not on every pass
    ]
    live = frozenset(pod.name for pod in x.routers)
    prune = tuple(sorted(set(x.report_keys) - live))
    gone = sorted((set(x.report_keys) | previous.routers) - live)
    hold = previous.hold_until
    if gone or x.state is None:  # rule 9; without a state, a router may have left unseen
        until = x.now + timedelta(seconds=x.settings.quiet_seconds)
        hold = max(hold, until) if hold is not None else until
        if gone:
            events.append(
                Event(
                    Reason.HANDOVER_PAUSED,
                    f"router {', '.join(gone)} is gone; no bucket changes owner before "
                    f"{format_time(hold)} in case it was receiving a study that another "
                    "router now continues",
                )
            )
    if hold is not None and hold <= x.now:
        hold = None
    return events, _Held(excluded=frozenset(routers.excluded), routers=live, hold_until=hold), prune


@dataclass(slots=True)
class _Buckets:
    """What the per-bucket loop decided: the next map's owners, moves and records."""

    owners: list[int]
    marks: Mapping[int, tuple[int, datetime]]
    moving: dict[int, int] = field(default_factory=dict)
    closing: set[int] = field(default_factory=set)
    reopened: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)
    completed: list[Move] = field(default_factory=list)
    forced: list[Move] = field(default_factory=list)

    @property
    def span(self) -> int:
        """The gateways the next map's owners reach: the highest owner + 1."""
        return max(self.owners) + 1


def _decide_buckets(
    x: HandoverInput, published: BucketMap, routers: _Routers, *, hold: datetime | None
) -> _Buckets:
    """Each bucket's step in this pass, from the targets (rules 1 and 2)."""
    ready = {pod.ordinal for pod in x.gateway_pods if pod.ready}
    failed = _failed_over(x)
    receivers = [g for g in range(x.wanted) if g in ready]
    receiving = set(receivers)
    holding = {g for g in range(x.wanted) if g not in ready and g not in failed}
    owners = list(published.owners)
    planned = [
        target if (target := published.moving.get(b)) in receiving else owner
        for b, owner in enumerate(owners)
    ]
    # Rule 2: continue the moves under way unless starting over from the owners
    # moves strictly fewer buckets (a spec change can make moves under way
    # pointless). Each switch leaves fewer moves to make, so plans cannot oscillate.
    targets = _targets(planned, receivers, holding)
    afresh = _targets(owners, receivers, holding)
    if _changes(owners, afresh) < _changes(owners, targets):
        targets = afresh

    decided = _Buckets(owners=list(owners), marks=_recover_marks(published, x.state, x.now))
    for bucket, (owner, target) in enumerate(zip(owners, targets, strict=True)):
        if target == owner:
            continue  # rule 3: not moving, or it stops moving
        mark = decided.marks.get(bucket)
        step, why = _step(
            x,
            published,
            routers,
            bucket=bucket,
            owner=owner,
            target=target,
            mark=mark,
            failed=failed,
            hold=hold,
        )
        if step in (Step.COMPLETED, Step.FORCED):
            decided.owners[bucket] = target
            move = Move(bucket, owner, target, mark[1] if mark else x.now, why)
            (decided.completed if why is None else decided.forced).append(move)
            continue
        decided.moving[bucket] = target
        if step is Step.STARTED:
            decided.started.add(bucket)
        elif step is Step.CLOSING:
            decided.closing.add(bucket)
        elif step is Step.REOPENED:
            decided.reopened.add(bucket)
    return decided


def _step(
    x: HandoverInput,
    published: BucketMap,
    routers: _Routers,
    *,
    bucket: int,
    owner: int,
    target: int,
    mark: tuple[int, datetime] | None,
    failed: set[int],
    hold: datetime | None,
) -> tuple[Step, Forced | None]:
    """The step of one bucket whose target is not its owner, and why if forced."""
    if owner in failed:
        return Step.FORCED, Forced.FAILOVER  # rules 1 and 7
    if mark is None:
        return Step.STARTED, None  # rule 3
    if (x.now - mark[1]).total_seconds() >= x.settings.max_drain_seconds:
        return Step.FORCED, Forced.MAX_DRAIN  # rule 7
    if hold is not None:
        return Step.MOVING, None  # rule 9: neither closes nor completes
    if bucket in published.closing and published.moving.get(bucket) == target:
        # Rules 5 and 6: routers on this version hold the bucket's instances.
        step = routers.closing(
            bucket, version=published.version, buckets=x.buckets, settings=x.settings, now=x.now
        )
        if step is Step.COMPLETED and routers.excluded:
            return Step.FORCED, Forced.UNCONFIRMED  # rules 7 and 8
        return step, None
    if routers.quiet(bucket, marked=mark[0], buckets=x.buckets, settings=x.settings, now=x.now):
        return Step.CLOSING, None  # rule 4: close it, and complete once confirmed
    return Step.MOVING, None


def _next_map(
    x: HandoverInput, published: BucketMap, decided: _Buckets
) -> tuple[BucketMap | None, int]:
    """The map to publish (None if nothing changed) and the version the pass ends on (rule 10)."""
    gateways = tuple(x.catalogue[: max(x.wanted, decided.span, 1)])
    unchanged = (
        gateways == published.gateways
        and tuple(decided.owners) == published.owners
        and decided.moving == dict(published.moving)
        and frozenset(decided.closing) == published.closing
        and published.version >= x.version_floor
    )
    if unchanged:
        return None, published.version
    version = max(published.version, x.version_floor) + 1
    publish = BucketMap(
        version=version,
        buckets=x.buckets,
        gateways=gateways,
        owners=tuple(decided.owners),
        moving=decided.moving,
        closing=frozenset(decided.closing),
    )
    return publish, version


def _span_since(
    x: HandoverInput, previous: HandoverState, published: BucketMap, *, span: int, version: int
) -> int:
    """The oldest version since which the owners reach no further than `span` (rule 11)."""
    old_span = max(published.owners) + 1
    if x.state is not None and previous.span == old_span:
        since = min(previous.span_since, published.version)
    else:
        since = published.version  # no usable record: trust only this version
    return version if span != old_span else since


# --- routers -----------------------------------------------------------------------


class _Held(NamedTuple):
    """The router bookkeeping a state carries: `HandoverState`'s last three fields."""

    excluded: frozenset[str]
    routers: frozenset[str]
    hold_until: datetime | None


@dataclass(frozen=True, slots=True)
class _Routers:
    """Live routers split into those whose word counts and those excluded."""

    considered: tuple[RouterPod, ...]
    excluded: Mapping[str, str]  # name → why, for the Event

    @classmethod
    def classify(cls, x: HandoverInput) -> _Routers:
        considered: list[RouterPod] = []
        excluded: dict[str, str] = {}
        timeout = x.settings.report_timeout_seconds
        for pod in x.routers:
            since = pod.report.reported_at if pod.report else pod.created_at
            age = (x.now - since).total_seconds()
            if age <= timeout:
                considered.append(pod)
                continue
            if pod.report is not None:
                why = f"its report is {age:.0f} s old"
            elif pod.problem is not None:
                why = f"its report is unusable ({pod.problem})"
            else:
                why = f"it has not reported in the {age:.0f} s since its pod was created"
            excluded[pod.name] = (
                f"router {pod.name} excluded from bucket handover: {why} (timeout "
                f"{timeout:.0f} s); handovers completed without it are counted as forced"
            )
        return cls(tuple(considered), excluded)

    def closing(
        self, bucket: int, *, version: int, buckets: int, settings: HandoverSettings, now: datetime
    ) -> Step:
        """The last step of a move: `Step.COMPLETED`, `Step.REOPENED` or `Step.CLOSING`.

        Completed when every considered router's fresh report, written on
        `version` or newer (so it holds the bucket's instances instead of
        sending them to the old owner), still shows the bucket quiet for
        quietSeconds (rule 5): from then on no router sends to the old owner,
        and an instance held meanwhile belongs to a study that began after
        the bucket went quiet. Reopened when such a report shows a use within
        quietSeconds (rule 6): a study came in after the operator last looked
        (or one is held now), or shows it spooled (rule 12), so the bucket
        goes back to plain moving. Still closing while any router's word is
        missing.
        """
        step = Step.COMPLETED
        for pod in self.considered:
            report = pod.report
            if report is None or report.map_version is None or report.map_version < version:
                step = Step.CLOSING
                continue
            if report.buckets != buckets:
                step = Step.CLOSING
                continue
            if report.all_used or report.spooled(bucket):
                return Step.REOPENED  # rule 12 for a spooled bucket
            cls = report.used.get(bucket)
            if cls is not None and AGE_CLASSES[cls - 1] < settings.quiet_seconds:
                return Step.REOPENED
            if (now - report.reported_at).total_seconds() > settings.fresh_seconds:
                step = Step.CLOSING
            elif report.quiet_seconds(bucket) < settings.quiet_seconds:
                step = Step.CLOSING  # started too recently to vouch for the bucket
        return step

    def quiet(
        self, bucket: int, *, marked: int, buckets: int, settings: HandoverSettings, now: datetime
    ) -> bool:
        """Whether every considered router's fresh report proves `bucket` quiet."""
        for pod in self.considered:
            report = pod.report
            if report is None or report.map_version is None or report.map_version < marked:
                return False
            if report.buckets != buckets:
                return False
            if (now - report.reported_at).total_seconds() > settings.fresh_seconds:
                return False
            if report.spooled(bucket):
                return False  # rule 12
            if report.quiet_seconds(bucket) < settings.quiet_seconds:
                return False
        return True


def _replicas(x: HandoverInput, *, state: HandoverState) -> int:
    """Grow at once; shrink only as far as no live router may still send.

    `state` is the one stored with the map this pass publishes (or keeps):
    its `span` bounds the owners of that map and of every version since
    `span_since`, which is all a router on such a version can send to.
    """
    current = x.statefulset_replicas
    if x.wanted >= current:
        return x.wanted
    needed = max(x.wanted, state.span)
    for pod in x.routers:  # excluded ones too: they may still be routing
        report = pod.report
        if report is None:
            return current  # it may route by any map we know nothing of
        if report.map_version is not None and report.map_version < state.span_since:
            return current
        top = report.highest_open_gateway()
        if top is not None:
            needed = max(needed, top + 1)
    return min(current, needed)


# --- planning ----------------------------------------------------------------------


def _failed_over(x: HandoverInput) -> set[int]:
    after = x.settings.failover_after_seconds
    if after is None:
        return set()
    return {
        pod.ordinal
        for pod in x.gateway_pods
        if not pod.ready and pod.since is not None and (x.now - pod.since).total_seconds() >= after
    }


def _targets(planned: Sequence[int], receivers: Sequence[int], holding: set[int]) -> list[int]:
    """Rebalance `planned` over `receivers`; buckets planned on `holding` gateways stay."""
    free = [b for b, holder in enumerate(planned) if holder not in holding]
    if not receivers or not free:
        return list(planned)
    members = list(receivers[: len(free)])
    index = {gateway: i for i, gateway in enumerate(members)}
    leaving = len(members)
    owners = [index.get(planned[b], leaving) for b in free]
    result = list(planned)
    for b, new in zip(free, rebalance(owners, len(members)), strict=True):
        if new < leaving:
            result[b] = members[new]
    return result


def _changes(before: Sequence[int], after: Sequence[int]) -> int:
    return sum(1 for a, b in zip(before, after, strict=True) if a != b)


def _recover_marks(
    published: BucketMap, state: HandoverState | None, now: datetime
) -> dict[int, tuple[int, datetime]]:
    """Return bucket → (marking version, start) for every moving bucket of `published`.

    Records of buckets no longer moving are dropped; a moving bucket without
    a record (lost state) counts as marked by the published version, now.
    """
    marks: dict[int, tuple[int, datetime]] = {}
    for batch in state.batches if state else ():
        version = min(batch.version, published.version)
        for bucket in batch.buckets:
            if bucket in published.moving:
                marks[bucket] = (version, batch.started_at)
    for bucket in published.moving:
        marks.setdefault(bucket, (published.version, now))
    return marks


def _batches(
    marks: Mapping[int, tuple[int, datetime]],
    moving: Mapping[int, int],
    fresh: set[int],
    *,
    version: int,
    now: datetime,
) -> tuple[MoveBatch, ...]:
    groups: dict[tuple[int, datetime], set[int]] = {}
    for bucket in moving:
        key = (version, now) if bucket in fresh else marks[bucket]
        groups.setdefault(key, set()).add(bucket)
    ordered = sorted(groups.items(), key=lambda item: (item[0][0], item[0][1]))
    while len(ordered) > MAX_BATCHES:
        # Merge the two oldest into one with the later version and start: completion
        # then waits for more routers and forcing comes later, never sooner.
        (first_key, first), (second_key, second) = ordered[0], ordered[1]
        merged = (max(first_key[0], second_key[0]), max(first_key[1], second_key[1]))
        ordered = sorted(
            [(merged, first | second), *ordered[2:]], key=lambda item: (item[0][0], item[0][1])
        )
    return tuple(MoveBatch(v, started, frozenset(b)) for (v, started), b in ordered)


def _first_map(
    x: HandoverInput, *, events: list[Event], held: _Held, prune: tuple[str, ...]
) -> HandoverPlan:
    """The first map of a pool: round robin over the Ready wanted gateways, or nothing yet.

    Rule 1; the StatefulSet shrinks only if no router can be routing by a map
    we cannot see (rule 11).
    """
    ready = {pod.ordinal for pod in x.gateway_pods if pod.ready}
    receivers = [g for g in range(x.wanted) if g in ready][: x.buckets]
    state = HandoverState((), 0, 0, *held)
    publish = None
    if receivers:
        version = x.version_floor + 1
        owners = [receivers[i] for i in initial_owners(x.buckets, len(receivers))]
        span = max(owners) + 1
        publish = BucketMap(
            version=version,
            buckets=x.buckets,
            gateways=tuple(x.catalogue[: max(x.wanted, span)]),
            owners=tuple(owners),
        )
        state = HandoverState((), span, version, *held)
        events.append(
            Event(
                Reason.BUCKET_MAP_PUBLISHED,
                f"bucket map version {version}: {x.buckets} buckets over "
                f"{len(receivers)} ready gateways",
            )
        )
    # Shrink only if no router can be routing by a map we cannot see.
    blind = all(pod.report is not None and pod.report.map_version is None for pod in x.routers)
    replicas = x.wanted if blind else max(x.wanted, x.statefulset_replicas)
    return HandoverPlan(
        publish=publish,
        state=state,
        state_changed=state != x.state,
        replicas=replicas,
        completed=(),
        forced=(),
        events=tuple(events),
        prune_reports=prune,
        moving=0,
        oldest_move_seconds=None,
        excluded_routers=tuple(sorted(held.excluded)),
    )


def _move_events(decided: _Buckets, *, owners: Sequence[int], version: int) -> list[Event]:
    """The Events of the moves reopened (rule 6), started (3), completed (5) and forced (7)."""
    events: list[Event] = []
    if decided.reopened:
        events.append(
            Event(
                Reason.HANDOVER_DEFERRED,
                f"bucket map version {version}: {len(decided.reopened)} closing buckets were "
                "used again (a study began in them); they move once quiet again",
            )
        )
    if decided.started:
        pairs = sorted({(owners[b], decided.moving[b]) for b in decided.started})
        events.append(
            Event(
                Reason.HANDOVER_STARTED,
                f"bucket map version {version}: {len(decided.started)} buckets start moving "
                f"({_pairs(pairs)}); they move once quiet on every router",
            )
        )
    if decided.completed:
        events.append(
            Event(
                Reason.HANDOVER_COMPLETED,
                f"bucket map version {version}: {len(decided.completed)} buckets handed over "
                f"({_pairs(sorted({(m.source, m.target) for m in decided.completed}))})",
            )
        )
    by_reason: dict[Forced, list[Move]] = {}
    for move in decided.forced:
        if move.forced is not None:
            by_reason.setdefault(move.forced, []).append(move)
    for reason, moves in sorted(by_reason.items()):
        events.append(
            Event(
                Reason.HANDOVER_FORCED,
                f"bucket map version {version}: {len(moves)} buckets handed over without "
                f"proof of quiet ({reason}: {_WHY_FORCED[reason]}; "
                f"{_pairs(sorted({(m.source, m.target) for m in moves}))}); "
                "a study in flight in them may be split",
            )
        )
    return events


_WHY_FORCED: Final = {
    Forced.MAX_DRAIN: "still in use after maxDrainSeconds",
    Forced.FAILOVER: "their gateway was not ready for failoverAfterSeconds",
    Forced.UNCONFIRMED: "quiet on every router that reports, but some are excluded",
}


def _pairs(pairs: Sequence[tuple[int, int]], limit: int = 6) -> str:
    shown = ", ".join(f"gateway {a} → {b}" for a, b in pairs[:limit])
    return shown + (f" and {len(pairs) - limit} more" if len(pairs) > limit else "")
