"""What one pass of the control loop decides for a pool, from what it observed: no I/O.

A pass reads the pool and the objects around it once (`Observed`, read by
:func:`gatewaypool_operator.observe.observe`), decides everything here
(:func:`plan`), and only then writes (:func:`gatewaypool_operator.apply.apply`).
Keeping the decisions apart from the reads and writes means every rule of a
pass -- a refused spec leaves the pool alone, the map is published only with
news, an optional child goes only if this pool owns it, a refusal is
announced once -- can be tested from plain dicts, the way
:mod:`gatewaypool_operator.children` builds the objects themselves.

Two things depend on how the writes went, and are decided after them, still
without I/O, by :func:`finish`: the Events about children created, patched
or deleted, and the ``Degraded`` condition with the API server's message
when it refused a write (its Warning Event posted once, not on every pass).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from gatewaypool.bucketmap import BucketMap, Readiness, dump_map, dump_readiness
from gatewaypool.contract import MAP_KEY, READINESS_KEY
from gatewaypool.strict import is_int
from gatewaypool_operator import exposure, mapgateways, observe, poolstatus, spoolstatus
from gatewaypool_operator.children.desired import (
    build_children,
    optional_children,
    router_workloads,
    routers_configmap,
)
from gatewaypool_operator.children.names import (
    DEFAULT_CLUSTER_DOMAIN,
    autoscaler_name,
    map_configmap_name,
    owner_reference,
    router_name,
    routers_configmap_name,
    statefulset_name,
)
from gatewaypool_operator.conditions import ConditionReason, ConditionType
from gatewaypool_operator.drift import duplicate_key
from gatewaypool_operator.events import Event, Reason
from gatewaypool_operator.handover.decide import (
    HandoverInput,
    HandoverPlan,
    HandoverSettings,
    plan_handover,
)
from gatewaypool_operator.handover.state import (
    STATE_KEY,
    HandoverState,
    StateError,
    dump_state,
    parse_state,
)
from gatewaypool_operator.kubeapply import Applied
from gatewaypool_operator.passdata import (
    ApplyResult,
    Observed,
    Outcome,
    Plan,
    Prune,
    StatusBasis,
    Write,
)
from gatewaypool_operator.spec.fields import SpecError
from gatewaypool_operator.spec.parse import check_name, parse_spec
from gatewaypool_operator.spec.types import PoolSpec

__all__ = [
    "ACCEPTED_SPEC_ANNOTATION",
    "finish",
    "plan",
]

ACCEPTED_SPEC_ANNOTATION = "gatewaypool.io/accepted-spec"


def plan(
    observed: Observed,
    *,
    default_router_image: str,
    now: datetime,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> Plan:
    """Decide everything one pass does to bring the pool in line with its spec.

    Deterministic and free of I/O: the same observations at the same `now`
    give the same plan, and `observed` is left as it was.

    Parameters
    ----------
    observed
        What the pass read.
    default_router_image
        The router image when the spec names none (the operator's own).
    now
        The time of the pass, timezone-aware.
    cluster_domain
        The cluster's DNS domain, in the gateways' host names in the map.

    Raises
    ------
    ValueError
        If the pool has no ``metadata.uid`` (its children's owner reference
        needs one), or `now` is naive.
    """
    body = observed.pool
    metadata = body.get("metadata") or {}
    name = str(metadata["name"])
    namespace = str(metadata["namespace"])
    raw_spec = body.get("spec") or {}
    pool_status = body.get("status") or {}
    previous = pool_status.get("conditions") or []
    generation = int(metadata.get("generation") or 0)
    events: list[Event] = []
    map_name = map_configmap_name(name)
    map_object = observed.map_configmap
    stored: Mapping[str, str] = (map_object or {}).get("data") or {}

    published = mapgateways.read_published((map_object or {}).get("data"))
    if published.problem is not None:
        events.append(Event(Reason.MAP_UNREADABLE, published.problem))
    current_map = published.bucket_map
    basis = StatusBasis(
        name=name,
        spec=None,
        generation=generation,
        statefulset_status=(observed.statefulset or {}).get("status"),
        bucket_map=current_map,
        router_reports=observed.reports,
        live_router_pods=tuple(
            str(pod["metadata"]["name"])
            for pod in observe.live_routers(observed.router_pods)
            if not pod["metadata"].get("deletionTimestamp")
        ),
        spec_error=None,
        previous_conditions=previous,
        now=now,
    )
    basis = dataclasses.replace(
        basis,
        idle_spool_claims=spoolstatus.idle_claims(
            observed.router_claims, router_name(name), basis.live_router_pods
        ),
        gateways_not_ready=_not_ready(_readiness(observed, name, current_map)),
    )

    try:
        spec = _checked_spec(name, raw_spec, current_map, default_router_image)
    except SpecError as exc:
        events.append(Event(Reason.SPEC_REJECTED, f"{exc}; the pool is left as it was"))
        running = _accepted(body, default_router_image)
        return Plan(
            namespace=namespace,
            status_basis=dataclasses.replace(
                basis,
                spec=running,
                spec_error=str(exc),
                autoscaler_status=_autoscaler_status(observed, name, running),
            ),
            map_name=map_name,
            map_existed=map_object is not None,
            events=tuple(events),
        )

    decided = _plan_handover(
        observed,
        name=name,
        namespace=namespace,
        spec=spec,
        published=current_map,
        stored=stored,
        version_floor=int(pool_status.get("mapVersion") or 0),
        now=now,
        events=events,
        cluster_domain=cluster_domain,
    )
    if decided.publish is not None:
        current_map = decided.publish
    # Readiness goes beside the map, unversioned (see gatewaypool.bucketmap):
    # a change is written, but publishes no version and posts no Event.
    readiness = _readiness(observed, name, current_map)
    readiness_text = dump_readiness(readiness) if readiness is not None else None
    write_map = (
        decided.publish is not None
        or map_object is None
        or (
            decided.state_changed
            and _state_news(stored, decided.state, buckets=spec.buckets, now=now)
        )
        or (readiness_text is not None and stored.get(READINESS_KEY) != readiness_text)
    )
    map_data = (
        {
            MAP_KEY: dump_map(current_map),
            STATE_KEY: dump_state(decided.state, buckets=spec.buckets),
            READINESS_KEY: readiness_text or "",
        }
        if current_map is not None
        else None
    )
    events.extend(decided.events)
    events.extend(_exposure_events(spec, previous))
    events.extend(_spool_events(spec, basis, previous))
    previous_totals = pool_status.get("handovers") or {}
    summary = poolstatus.HandoverSummary(
        oldest_move_since=decided.oldest_move_since,
        completed=_count(previous_totals.get("completed")) + len(decided.completed),
        forced=_count(previous_totals.get("forced")) + len(decided.forced),
        excluded_routers=decided.excluded_routers,
    )

    owner = owner_reference(body)
    desired = build_children(
        name=name,
        namespace=namespace,
        spec=spec,
        map_data=map_data,
        gateway_replicas=decided.replicas,
    )
    wanted = {(str(obj["kind"]), str(obj["metadata"]["name"])) for obj in desired}
    if _autoscaler_waits(observed, name, spec, pool_status):
        desired = [obj for obj in desired if obj["kind"] != "HorizontalPodAutoscaler"]
    reports = routers_configmap(name=name, namespace=namespace)
    # What server-side apply would refuse with a 500 is not sent: refused here, by name.
    refused = tuple(
        f"{obj['kind']} {obj['metadata']['name']}: {problem}"
        for obj in desired
        if (problem := duplicate_key(obj)) is not None
    )
    writes = _writes(
        [obj for obj in (*desired, reports) if duplicate_key(obj) is None],
        pool=name,
        owner=owner,
        observed=observed,
        write_map=write_map,
    )
    unwanted = [
        child
        for child in optional_children(name)
        if child not in wanted and _owned(observed.optional_children.get(child), owner["uid"])
    ]
    waiting = [c for c in unwanted if _replacement_waits(c, observed, name, spec, wanted)]
    deletes = tuple(child for child in unwanted if child not in waiting)
    accepted = json.dumps(raw_spec, sort_keys=True, separators=(",", ":"))
    annotations = metadata.get("annotations") or {}
    return Plan(
        namespace=namespace,
        status_basis=dataclasses.replace(
            basis,
            spec=spec,
            bucket_map=current_map,
            handover=summary,
            autoscaler_status=_autoscaler_status(observed, name, spec),
            gateways_not_ready=_not_ready(readiness),
        ),
        map_name=map_name,
        map_existed=map_object is not None,
        writes=writes,
        # Reports of router pods that are gone; each router writes only its own key.
        prune=(
            Prune(routers_configmap_name(name), decided.prune_reports)
            if decided.prune_reports
            else None
        ),
        deletes=deletes,
        events=tuple(events),
        accepted_spec=accepted if accepted != annotations.get(ACCEPTED_SPEC_ANNOTATION) else None,
        handover=decided,
        refused=refused,
        replacing=bool(waiting),
        # A spool holds instances for these until the map says they are Ready again.
        owners_not_ready=(
            mapgateways.owners_not_ready(current_map, readiness)
            if spec.router.spool is not None and current_map is not None and readiness is not None
            else ()
        ),
    )


def finish(plan: Plan, result: ApplyResult) -> Outcome:
    """The pass's outcome once its writes are done: Events about them, the final status.

    A refusal makes the pool ``Degraded`` (reason
    `gatewaypool_operator.conditions.ConditionReason.APPLY_REFUSED`, the server's words) on
    every pass it lasts, but its Warning Event is posted
    only when the pool did not already say the same: a refused child is
    retried on every resync, and one Event a minute would bury the others.
    """
    events = list(plan.events)
    for item in result.applied:
        event = _child_event(plan, item)
        if event is not None:
            events.append(event)
    apply_error = "; ".join((*plan.refused, *result.refused)) or None
    previous = plan.status_basis.previous_conditions
    if apply_error is not None and not _already_degraded(previous, apply_error):
        events.append(Event(Reason.APPLY_REFUSED, f"the API server refused {apply_error}"))
    return Outcome(
        status=plan.status_basis.status(apply_error=apply_error),
        events=events,
        accepted_spec=plan.accepted_spec,
        applied=list(result.applied),
        plan=plan.handover,
        replacing=plan.replacing,
        owners_not_ready=plan.owners_not_ready,
    )


# --- helpers ------------------------------------------------------------------------


def _checked_spec(
    name: str,
    raw_spec: Mapping[str, Any],
    current_map: BucketMap | None,
    default_router_image: str,
) -> PoolSpec:
    """The pool's spec, checked against its name and its published map.

    Raises
    ------
    SpecError
        If the spec is invalid, the name would give the children invalid
        names (the API server accepts such names), or the spec changes the
        bucket count of a published map.
    """
    check_name(name)
    spec = parse_spec(raw_spec, default_router_image=default_router_image)
    if current_map is not None and current_map.buckets != spec.buckets:
        raise SpecError(
            "spec.buckets",
            spec.buckets,
            f"cannot change from {current_map.buckets}: the bucket count is fixed "
            "for a pool's life",
        )
    return spec


def _accepted(body: Mapping[str, Any], default_router_image: str) -> PoolSpec | None:
    """The last spec this operator accepted for the pool, from its annotation."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    text = annotations.get(ACCEPTED_SPEC_ANNOTATION)
    if not text:
        return None
    try:
        return parse_spec(json.loads(text), default_router_image=default_router_image)
    except (ValueError, SpecError):
        return None


def _readiness(observed: Observed, name: str, bucket_map: BucketMap | None) -> Readiness | None:
    """Which of `bucket_map`'s gateways are not Ready now; None without a map."""
    if bucket_map is None:
        return None
    pods = observe.gateway_pods(observed.gateway_pods, statefulset=statefulset_name(name))
    return mapgateways.readiness(bucket_map, pods)


def _not_ready(readiness: Readiness | None) -> tuple[str, ...]:
    return tuple(sorted(readiness.not_ready)) if readiness is not None else ()


def _plan_handover(
    observed: Observed,
    *,
    name: str,
    namespace: str,
    spec: PoolSpec,
    published: BucketMap | None,
    stored: Mapping[str, str],
    version_floor: int,
    now: datetime,
    events: list[Event],
    cluster_domain: str,
) -> HandoverPlan:
    """Turn the observed objects into the handover's inputs, and let it decide."""
    state: HandoverState | None = None
    text = stored.get(STATE_KEY)
    if text:
        try:
            state = parse_state(text, buckets=spec.buckets)
        except StateError as exc:
            # Safe to lose: moves then count as started now and wait again.
            events.append(Event(Reason.HANDOVER_STATE_UNREADABLE, str(exc)))
    sts_name = statefulset_name(name)
    sts_replicas = _count(((observed.statefulset or {}).get("spec") or {}).get("replicas"))
    listed = len(published.gateways) if published is not None else 0
    ports = observe.gateway_ports(observed.gateway_pods, statefulset=sts_name)
    catalogue = [
        dataclasses.replace(gateway, port=ports.get(ordinal, gateway.port))
        for ordinal, gateway in enumerate(
            mapgateways.desired_gateways(
                name=name,
                namespace=namespace,
                spec=spec,
                count=max(spec.replicas, listed, sts_replicas, 1),
                cluster_domain=cluster_domain,
            )
        )
    ]
    settings = HandoverSettings(
        quiet_seconds=spec.handover.quiet_seconds,
        max_drain_seconds=spec.handover.max_drain_seconds,
        failover_after_seconds=spec.handover.failover_after_seconds,
    )
    reports = observed.reports
    return plan_handover(
        HandoverInput(
            published=published,
            state=state,
            catalogue=catalogue,
            buckets=spec.buckets,
            wanted=spec.replicas,
            statefulset_replicas=sts_replicas,
            gateway_pods=observe.gateway_pods(observed.gateway_pods, statefulset=sts_name),
            routers=observe.router_pods(observed.router_pods, reports=reports, now=now),
            settings=settings,
            now=now,
            version_floor=version_floor,
            report_keys=tuple(reports),
        )
    )


def _writes(
    objects: Sequence[dict[str, Any]],
    *,
    pool: str,
    owner: Mapping[str, Any],
    observed: Observed,
    write_map: bool,
) -> tuple[Write, ...]:
    """The writes of `objects` (the children, then the routers' reports), owned by the pool.

    The map and the StatefulSet are written only over the versions the pass
    read: a pass decided from an older map cannot publish over a newer one,
    nor shrink the StatefulSet back. The map's first version is created only
    if it is still absent. The routers' reports are created once and never
    overwritten: the routers write into them.
    """
    writes: list[Write] = []
    for obj in objects:
        obj["metadata"]["ownerReferences"] = [owner]
        kind, name = obj["kind"], obj["metadata"]["name"]
        if kind == "ConfigMap" and name == map_configmap_name(pool):
            if write_map:
                # Written only with a new version or a new handover state.
                base = observed.map_configmap
                writes.append(Write(obj, conditional=True, base=base, exclusive=True))
        elif kind == "ConfigMap" and name == routers_configmap_name(pool):
            writes.append(Write(obj, create_only=True))
        elif kind == "StatefulSet" and name == statefulset_name(pool):
            writes.append(Write(obj, conditional=True, base=observed.statefulset))
        else:
            writes.append(Write(obj))
    return tuple(writes)


def _state_news(
    stored: Mapping[str, str], state: HandoverState, *, buckets: int, now: datetime
) -> bool:
    """Whether `state` says more than the stored one (an expired hold says nothing).

    A hold that has run out changes no decision, so clearing it is no reason
    to write the map's ConfigMap (and to send every router a watch event).
    """
    try:
        before = parse_state(stored.get(STATE_KEY, ""), buckets=buckets)
    except StateError:
        return True

    def settled(one: HandoverState) -> HandoverState:
        if one.hold_until is not None and one.hold_until <= now:
            return dataclasses.replace(one, hold_until=None)
        return one

    return settled(before) != settled(state)


def _autoscaler_waits(
    observed: Observed, name: str, spec: PoolSpec, pool_status: Mapping[str, Any]
) -> bool:
    """Whether the pool's HorizontalPodAutoscaler is not to be created in this pass yet.

    The HPA controller reads the pool's ``/scale``, whose selector is
    ``status.selector``, at once when an HPA appears; before the pool's
    status has a selector it answers ``InvalidSelector`` (a Warning Event,
    ``SelectorRequired``, and the pool ``Degraded`` until its next sync). So
    a new pool's HPA is created by the pass after the one that wrote the
    selector. One that exists is kept in line whatever the status says.
    """
    if spec.autoscaling is None or pool_status.get("selector"):
        return False
    key = ("HorizontalPodAutoscaler", autoscaler_name(name))
    return observed.optional_children.get(key) is None


def _autoscaler_status(
    observed: Observed, name: str, spec: PoolSpec | None
) -> Mapping[str, Any] | None:
    """The HorizontalPodAutoscaler's status, when the spec the pool runs has one.

    Its conditions say whether it can scale the pool (metrics found, scale read).
    """
    if spec is None or spec.autoscaling is None:
        return None
    autoscaler = observed.optional_children.get(("HorizontalPodAutoscaler", autoscaler_name(name)))
    status: Mapping[str, Any] | None = (autoscaler or {}).get("status")
    return status


def _replacement_waits(
    child: tuple[str, str],
    observed: Observed,
    name: str,
    spec: PoolSpec,
    wanted: set[tuple[str, str]],
) -> bool:
    """Whether `child`, a router workload the spec no longer wants, must wait to be deleted.

    Adding or removing ``spec.router.spool`` replaces the router Deployment
    with a StatefulSet or back. The old kind goes only once the new one has
    every router Ready on its current template: until then the old routers
    take the studies (a StatefulSet whose claims no storage class serves
    never becomes Ready, and the Deployment then keeps routing). A deleted
    router gets its grace period, in which a spooling one forwards its
    spool; its claim stays.
    """
    if child not in router_workloads(name):
        return False
    replacement = next((one for one in router_workloads(name) if one in wanted), None)
    live = observed.optional_children.get(replacement) if replacement else None
    return not _workload_ready(live, spec.router.replicas)


def _workload_ready(live: Mapping[str, Any] | None, replicas: int) -> bool:
    """Whether a Deployment or StatefulSet has `replicas` Ready pods of its current spec."""
    if live is None:
        return False
    metadata = live.get("metadata") or {}
    status = live.get("status") or {}
    generation = metadata.get("generation")
    observed_generation = status.get("observedGeneration")
    current = (
        is_int(generation) and is_int(observed_generation) and observed_generation >= generation
    )
    return bool(current) and _count(status.get("readyReplicas")) >= replicas


def _owned(live: Mapping[str, Any] | None, uid: str) -> bool:
    """Whether `live` exists and names the pool `uid` among its owners.

    A NetworkPolicy or autoscaler of the same name that someone else made is
    not the pool's to delete.
    """
    if live is None:
        return False
    owners = (live.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in owners)


def _child_event(plan: Plan, item: Applied) -> Event | None:
    """The Event that says what a write did to a child; None for nothing worth one."""
    if item.kind == "ConfigMap" and item.name == plan.map_name and item.action == "patched":
        return None  # map versions have their own events (BucketMapPublished, Handover*)
    if item.action == "created" and plan.map_existed:
        return Event(Reason.CHILD_RECREATED, f"{item.kind} {item.name} re-created")
    if item.action == "recreated":
        if item.kind == "Service":
            return Event(
                Reason.CHILD_RECREATED,
                f"Service {item.name} deleted and created again: {item.why} (an immutable "
                "field); the addresses the API server allocated to it (cluster IP, node ports "
                "not fixed in the spec, load balancer address) may change",
            )
        return Event(
            Reason.CHILD_RECREATED,
            f"{item.kind} {item.name} deleted with its pods and volumes orphaned and "
            f"created again: {item.why} (an immutable field)",
        )
    if item.action == "patched":
        return Event(Reason.CHILD_UPDATED, f"{item.kind} {item.name} brought in line: {item.why}")
    if item.action == "deleted":
        return Event(Reason.CHILD_DELETED, f"{item.kind} {item.name} deleted")
    return None


def _exposure_events(spec: PoolSpec, previous: Sequence[Mapping[str, Any]]) -> list[Event]:
    """The ``RouterExposed`` Warning Event, when the condition turns True (not on every pass)."""
    exposed, _, message = exposure.router_exposure(spec)
    was = any(
        isinstance(condition, Mapping)
        and condition.get("type") == ConditionType.ROUTER_EXPOSED
        and condition.get("status") == "True"
        for condition in previous
    )
    if not exposed or was:
        return []
    return [Event(Reason.ROUTER_EXPOSED, message)]


def _spool_events(
    spec: PoolSpec, basis: StatusBasis, previous: Sequence[Mapping[str, Any]]
) -> list[Event]:
    """The ``SpoolBacklog`` Warning Event, when the condition turns True (not on every pass)."""
    if spec.router.spool is None:
        return []
    totals = spoolstatus.spool_totals(basis.router_reports, basis.live_router_pods)
    status, _, message = spoolstatus.backlog(spec.router.spool, totals, now=basis.now)
    was = any(
        isinstance(condition, Mapping)
        and condition.get("type") == ConditionType.SPOOL_BACKLOG
        and condition.get("status") == "True"
        for condition in previous
    )
    if status != "True" or was:
        return []
    return [Event(Reason.SPOOL_BACKLOG, message)]


def _already_degraded(previous: Any, message: str) -> bool:
    """Whether the pool already says this refusal (its Event was posted then)."""
    for condition in previous or []:
        if condition.get("type") == ConditionType.DEGRADED:
            return bool(
                condition.get("status") == "True"
                and condition.get("reason") == ConditionReason.APPLY_REFUSED
                and condition.get("message") == message
            )
    return False


def _count(value: object) -> int:
    return value if is_int(value) and value > 0 else 0
