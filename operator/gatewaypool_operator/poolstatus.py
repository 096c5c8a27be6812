"""The GatewayPool's status block, computed from what the operator observed.

``status`` is what ``kubectl get gwp`` prints, what an HPA reads through the
scale subresource, and what ``kubectl wait --for=condition=Ready`` waits
on, so it is computed in one place from plain observations, no I/O: the
StatefulSet's status, the published bucket map, the routers' reports and
which router pods are alive.

Conditions follow the Kubernetes conventions: ``type``, ``status``
(``"True"``/``"False"``), a CamelCase ``reason``, a ``message`` for people,
``lastTransitionTime`` (kept while the status stays the same, so it says
since when) and ``observedGeneration``.

- ``Ready``: the pool routes studies: its map is published, every gateway
  the spec wants is ready, and at least one router applied the map.
- ``Progressing``: the pool is on its way to the spec: gateways scaling or
  starting, the map not yet matching them, buckets handing over, routers
  not yet on the current map.
- ``Degraded``: needs a person: the spec was rejected, the API server
  refused to write a child (reason ``ApplyRefused``, its message), gateways are
  unavailable that were ready before (or never became ready within the
  progress deadline), or the pool's HorizontalPodAutoscaler says it cannot
  scale (reason ``AutoscalerNotScaling``: its ``ScalingActive`` or
  ``AbleToScale`` condition is False, e.g. no metrics for its targets).
- ``RouterExposed``: present, and True, only while the router Service is a
  LoadBalancer that admits any source address (see
  `gatewaypool_operator.exposure`); it goes when the spec restricts the
  sources or the type changes.
- ``SpoolBacklog``: present with ``spec.router.spool``, True while the
  routers' spools need a person (`gatewaypool_operator.spoolstatus`), beside
  ``status.spool``, what they hold.

The status changes only when something a user sees changed: it holds no
age or anything else that moves with the clock alone (the oldest move's
start is ``oldestMoveSince``, a time; ``kubectl get gwp`` shows its age).
A pass with nothing new then writes no status (see
`gatewaypool_operator.runner`), and so does not change the pool's
``resourceVersion``: a HorizontalPodAutoscaler writes ``/scale`` with the
resourceVersion it read, and a status write in between makes that write
conflict (``FailedRescale``), just when it scales.

With ``spec.autoscaling``, ``status.autoscaling`` reads ``MIN-MAX`` (the
autoscaler's range, a column of ``kubectl get gwp``); without, it is absent.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from gatewaypool.bucketmap import BucketMap
from gatewaypool.reports import ReportError, parse_report
from gatewaypool.strict import format_time, is_int, parse_time
from gatewaypool_operator import exposure, spoolstatus
from gatewaypool_operator.children.names import selector_string
from gatewaypool_operator.conditions import ConditionReason, ConditionType
from gatewaypool_operator.spec.fields import thaw
from gatewaypool_operator.spec.types import PoolSpec

__all__ = [
    "DEFAULT_PROGRESS_DEADLINE_SECONDS",
    "HandoverSummary",
    "compute_status",
    "merge_patch",
    "report_in_sync",
]

DEFAULT_PROGRESS_DEADLINE_SECONDS: Final = 600.0
"""How long gateways may stay short of the spec while progressing before the pool is
Degraded: a pulled image and a started DICOM server take well under that, a wrong image
name never succeeds. The same default as a Deployment's progressDeadlineSeconds."""

#: The HorizontalPodAutoscaler conditions that, when False, mean it does not scale the pool.
_AUTOSCALER_BLOCKERS: Final = ("ScalingActive", "AbleToScale")


@dataclass(frozen=True, slots=True)
class HandoverSummary:
    """What the handover pass adds to the status.

    Attributes
    ----------
    oldest_move_since
        When the oldest move under way started; None when nothing moves.
        A time, not an age: an age would change the status on every pass.
    completed, forced
        Moves since the pool was created (the previous totals plus this pass's).
    excluded_routers
        Live routers whose reports are too old to wait for.
    """

    oldest_move_since: datetime | None = None
    completed: int = 0
    forced: int = 0
    excluded_routers: tuple[str, ...] = ()


def report_in_sync(text: str | None, version: int) -> bool:
    """Whether a router's report (`gatewaypool.reports`) says it applied `version`.

    Anything unusable counts as not in sync, which is safe, rather than
    stopping the operator.
    """
    if not text:
        return False
    try:
        return parse_report(text).map_version == version
    except ReportError:
        return False


def compute_status(
    *,
    name: str,
    spec: PoolSpec | None,
    generation: int,
    statefulset_status: Mapping[str, Any] | None,
    bucket_map: BucketMap | None,
    router_reports: Mapping[str, str],
    live_router_pods: Collection[str],
    spec_error: str | None,
    previous_conditions: Sequence[Mapping[str, Any]],
    now: datetime,
    progress_deadline_seconds: float = DEFAULT_PROGRESS_DEADLINE_SECONDS,
    apply_error: str | None = None,
    handover: HandoverSummary | None = None,
    autoscaler_status: Mapping[str, Any] | None = None,
    idle_spool_claims: Sequence[str] = (),
    gateways_not_ready: Sequence[str] = (),
) -> dict[str, Any]:
    """Return the pool's whole ``status`` block.

    Parameters
    ----------
    name
        The pool's name (for ``selector``).
    spec
        The spec the pool runs: the current one, or the last accepted one
        when the current one is rejected; None if no spec was ever accepted.
    generation
        ``metadata.generation`` of the pool as observed.
    statefulset_status
        The gateway StatefulSet's ``status``; None if it does not exist yet.
    bucket_map
        The published map; None if there is none.
    router_reports
        The ``NAME-routers`` ConfigMap's data: pod name → report JSON.
    live_router_pods
        Names of the router pods that exist now. Reports of pods that are
        gone are ignored: they can neither hold nor apply a map.
    spec_error
        Why the current spec was rejected (`SpecError` text), or None.
    previous_conditions
        ``status.conditions`` as they are now, to keep ``lastTransitionTime``
        of conditions whose status does not change.
    now
        The time of this observation, timezone-aware (a parameter, so that
        the result depends only on the arguments).
    progress_deadline_seconds
        See `DEFAULT_PROGRESS_DEADLINE_SECONDS`.
    apply_error
        What the API server said when it refused to write a child (``"StatefulSet
        NAME-gw: ..."``), or None.
    handover
        The handover's drain progress and totals; None before any pass planned one.
    autoscaler_status
        The ``status`` of the pool's HorizontalPodAutoscaler; None if there is
        none or it has no status yet. Read only when `spec` has autoscaling.
    idle_spool_claims
        Spool claims no live router mounts (``status.spool.idleClaims``).
    gateways_not_ready
        The map's gateways published as not Ready beside it
        (``status.gatewaysNotReady``, `gatewaypool_operator.mapgateways.readiness`).

    Returns
    -------
    dict
        Every status field of the contract, always all of them but
        ``oldestMoveSince`` (absent when nothing moves), ``gatewaysNotReady``
        (absent when all are Ready) and ``autoscaling``
        (absent without ``spec.autoscaling``): the status is written with
        `merge_patch`, which deletes what is absent.

    Raises
    ------
    ValueError
        If `now` is naive.
    """
    if now.tzinfo is None:
        raise ValueError("now: a naive datetime is ambiguous; pass a timezone-aware one")
    observed = _Observed.of(
        spec=spec,
        statefulset_status=statefulset_status,
        bucket_map=bucket_map,
        router_reports=router_reports,
        live_router_pods=live_router_pods,
    )
    previous = _by_type(previous_conditions)
    summary = handover if handover is not None else HandoverSummary()
    wanted = [
        (ConditionType.READY, *_ready(observed)),
        (ConditionType.PROGRESSING, *_progressing(observed)),
        (
            ConditionType.DEGRADED,
            *_degraded(
                observed,
                spec_error=spec_error,
                apply_error=apply_error,
                previous=previous,
                generation=generation,
                now=now,
                deadline=progress_deadline_seconds,
                autoscaler=_autoscaler_problem(
                    autoscaler_status if spec is not None and spec.autoscaling else None
                ),
            ),
        ),
    ]
    if spec is not None and exposure.router_exposure(spec)[0]:
        wanted.append((ConditionType.ROUTER_EXPOSED, "True", *exposure.router_exposure(spec)[1:]))
    spool = spec.router.spool if spec is not None else None
    totals = spoolstatus.spool_totals(router_reports, live_router_pods)
    if spool is not None:
        wanted.append((ConditionType.SPOOL_BACKLOG, *spoolstatus.backlog(spool, totals, now=now)))
    conditions = [
        _condition(
            kind,
            status=status,
            reason=reason,
            message=message,
            generation=generation,
            previous=previous.get(kind),
            now=now,
        )
        for kind, status, reason, message in wanted
    ]
    result: dict[str, Any] = {
        "replicas": observed.replicas,
        "readyReplicas": observed.ready,
        "selector": selector_string(name),
        "observedGeneration": generation,
        "mapVersion": observed.version,
        "routersInSync": observed.in_sync,
        "routersTotal": observed.routers,
        "routers": f"{observed.in_sync}/{observed.routers}",
        "movingBuckets": observed.moving,
        "handovers": {"completed": summary.completed, "forced": summary.forced},
        "excludedRouters": list(summary.excluded_routers),
        "bucketCounts": bucket_map.bucket_counts() if bucket_map is not None else {},
        "conditions": conditions,
    }
    if gateways_not_ready:
        # Absent when all are Ready: the merge patch then deletes it.
        result["gatewaysNotReady"] = sorted(gateways_not_ready)
    if summary.oldest_move_since is not None:
        # Absent when nothing moves: the merge patch then deletes it.
        result["oldestMoveSince"] = format_time(summary.oldest_move_since)
    if spool is not None or idle_spool_claims:
        # Absent without a spool and its claims (the merge patch then deletes it).
        result["spool"] = totals.status() if spool is not None else {}
        if idle_spool_claims:
            result["spool"]["idleClaims"] = list(idle_spool_claims)
    if spec is not None and spec.autoscaling is not None:
        # Absent when not autoscaled, so that kubectl get gwp shows <none>.
        autoscaling = spec.autoscaling
        result["autoscaling"] = f"{autoscaling.min_replicas}-{autoscaling.max_replicas}"
    return result


def merge_patch(*, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """Return a JSON merge patch (RFC 7386) that turns `old` into `new`.

    A merge patch merges mappings, so a key missing from `new` would stay:
    a gateway gone from ``bucketCounts`` would keep its count forever. The
    patch sets such keys to null, which deletes them. Lists are replaced
    whole, as merge patches do.
    """
    patch: dict[str, Any] = {}
    old = old or {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = merge_patch(old=before, new=value)
        else:
            patch[key] = thaw(value)
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


# --- observations ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Observed:
    """The numbers the conditions are decided from."""

    spec: PoolSpec | None
    has_statefulset: bool
    replicas: int
    ready: int
    bucket_map: BucketMap | None
    version: int
    map_gateways: int
    moving: int
    in_sync: int
    routers: int

    @classmethod
    def of(
        cls,
        *,
        spec: PoolSpec | None,
        statefulset_status: Mapping[str, Any] | None,
        bucket_map: BucketMap | None,
        router_reports: Mapping[str, str],
        live_router_pods: Collection[str],
    ) -> _Observed:
        status = statefulset_status or {}
        live = set(live_router_pods)
        in_sync = 0
        if bucket_map is not None:
            version = bucket_map.version
            in_sync = sum(1 for pod in live if report_in_sync(router_reports.get(pod), version))
        return cls(
            spec=spec,
            has_statefulset=statefulset_status is not None,
            replicas=_count(status.get("replicas")),
            ready=_count(status.get("readyReplicas")),
            bucket_map=bucket_map,
            version=bucket_map.version if bucket_map is not None else 0,
            map_gateways=len(bucket_map.gateways) if bucket_map is not None else 0,
            moving=len(bucket_map.moving) if bucket_map is not None else 0,
            in_sync=in_sync,
            routers=len(live),
        )


_Verdict = tuple[str, ConditionReason, str]  # status, reason, message


def _ready(seen: _Observed) -> _Verdict:
    spec = seen.spec
    if spec is None:
        return "False", ConditionReason.SPEC_REJECTED, "no spec of this pool was accepted yet"
    if spec.replicas == 0:
        return (
            "False",
            ConditionReason.SCALED_TO_ZERO,
            "spec.replicas is 0: no gateway takes studies",
        )
    if seen.bucket_map is None:
        return "False", ConditionReason.MAP_NOT_PUBLISHED, "no bucket map is published yet"
    if seen.ready < spec.replicas:
        return (
            "False",
            ConditionReason.GATEWAYS_NOT_READY,
            f"{seen.ready} of {spec.replicas} gateways ready",
        )
    if seen.in_sync == 0:
        return (
            "False",
            ConditionReason.ROUTERS_NOT_READY,
            f"no router has applied bucket map version {seen.version} ({seen.routers} router pods)",
        )
    return (
        "True",
        ConditionReason.ALL_GATEWAYS_READY,
        f"{spec.replicas} of {spec.replicas} gateways ready; "
        f"{seen.in_sync}/{seen.routers} routers on bucket map version {seen.version}",
    )


def _progressing(seen: _Observed) -> _Verdict:
    spec = seen.spec
    if spec is None:
        return "False", ConditionReason.SPEC_REJECTED, "no spec of this pool was accepted yet"
    wanted = spec.replicas
    map_behind = wanted > 0 and (seen.bucket_map is None or seen.map_gateways != wanted)
    if not seen.has_statefulset or seen.replicas != wanted or seen.ready < wanted or map_behind:
        listed = (
            "no bucket map yet"
            if seen.bucket_map is None
            else f"bucket map version {seen.version} lists {seen.map_gateways}"
        )
        return (
            "True",
            ConditionReason.SCALING_GATEWAYS,
            f"{wanted} gateways wanted: {seen.replicas} exist, {seen.ready} ready; {listed}",
        )
    if seen.moving:
        return (
            "True",
            ConditionReason.HANDING_OVER_BUCKETS,
            f"{seen.moving} buckets moving in bucket map version {seen.version}",
        )
    routers_wanted = max(seen.routers, spec.router.replicas)
    if seen.bucket_map is not None and seen.in_sync < routers_wanted:
        return (
            "True",
            ConditionReason.ROUTERS_UPDATING,
            f"{seen.in_sync} of {routers_wanted} routers applied bucket map version {seen.version}",
        )
    return (
        "False",
        ConditionReason.UP_TO_DATE,
        f"{wanted} gateways and {seen.routers} routers as the spec says",
    )


def _degraded(
    seen: _Observed,
    *,
    spec_error: str | None,
    apply_error: str | None,
    previous: Mapping[str, Mapping[str, Any]],
    generation: int,
    now: datetime,
    deadline: float,
    autoscaler: str | None,
) -> _Verdict:
    if spec_error is not None:
        return "True", ConditionReason.SPEC_REJECTED, spec_error
    if apply_error is not None:
        return "True", ConditionReason.APPLY_REFUSED, apply_error
    spec = seen.spec
    if spec is not None and seen.ready < spec.replicas:
        ready_before = previous.get(ConditionType.READY, {})
        degraded_before = previous.get(ConditionType.DEGRADED, {})
        progressing_before = previous.get(ConditionType.PROGRESSING, {})
        # A gateway lost while the pool was ready at this very spec, not one
        # still starting after a change of spec:
        lost = (
            ready_before.get("status") == "True"
            and ready_before.get("observedGeneration") == generation
        )
        # ... stays lost until it is back, whatever Progressing says meanwhile:
        still = (
            degraded_before.get("status") == "True"
            and degraded_before.get("reason") == ConditionReason.GATEWAYS_UNAVAILABLE
        )
        since = parse_time(progressing_before.get("lastTransitionTime"))
        stuck = (
            progressing_before.get("status") == "True"
            and since is not None
            and (now - since).total_seconds() >= deadline
        )
        if lost or still or stuck:
            missing = spec.replicas - seen.ready
            why = (
                f"progressing for more than {_seconds(deadline)}"
                if stuck and not (lost or still)
                else "they were ready before"
            )
            return (
                "True",
                ConditionReason.GATEWAYS_UNAVAILABLE,
                f"{missing} of {spec.replicas} gateways not ready ({why}); "
                "studies in their buckets are refused until they are back",
            )
    if autoscaler is not None:
        return "True", ConditionReason.AUTOSCALER_NOT_SCALING, autoscaler
    return "False", ConditionReason.AS_EXPECTED, "nothing needs attention"


def _autoscaler_problem(autoscaler_status: Mapping[str, Any] | None) -> str | None:
    """What keeps the pool's HorizontalPodAutoscaler from scaling, in its own words.

    The autoscaler reports a missing metric (no Prometheus Adapter, a CPU
    request gone) only on itself; the pool's ``Degraded`` condition repeats
    it, so that ``kubectl get gwp`` users learn their pool stopped following
    its load. None when both conditions are True or not reported yet.
    """
    problems = []
    for condition in (autoscaler_status or {}).get("conditions") or []:
        if not isinstance(condition, Mapping):
            continue
        kind = condition.get("type")
        if kind in _AUTOSCALER_BLOCKERS and condition.get("status") == "False":
            reason = condition.get("reason") or "no reason"
            message = condition.get("message")
            problems.append(f"{kind} is False ({reason})" + (f": {message}" if message else ""))
    if not problems:
        return None
    return "the HorizontalPodAutoscaler does not scale the pool: " + "; ".join(problems)


# --- conditions -----------------------------------------------------------------


def _condition(
    kind: ConditionType,
    *,
    status: str,
    reason: ConditionReason,
    message: str,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    since = format_time(now)
    if previous is not None and previous.get("status") == status:
        kept = previous.get("lastTransitionTime")
        if isinstance(kept, str) and parse_time(kept) is not None:
            since = kept
    return {
        "type": str(kind),  # plain strings: the status is written as JSON, and read as YAML
        "status": status,
        "reason": str(reason),
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def _by_type(conditions: Sequence[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    result: dict[str, Mapping[str, Any]] = {}
    for condition in conditions:
        if isinstance(condition, Mapping) and isinstance(condition.get("type"), str):
            result[condition["type"]] = condition
    return result


def _count(value: object) -> int:
    return value if is_int(value) and value > 0 else 0


def _seconds(seconds: float) -> str:
    return f"{math.ceil(seconds)} s"
