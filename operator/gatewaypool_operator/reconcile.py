"""One pass of the control loop for one GatewayPool: observe, decide, apply.

Level-based, so the same pass serves creation, every spec change, an
operator restart, a deleted child and the periodic drift check. Decisions
come from the pure core (spec, children, mapping, status); this module only
reads and writes through :class:`~gatewaypool_operator.kubeapply.Cluster`.

The bucket map and the StatefulSet are written conditionally on the
versions read at the start of the pass: if either changed meanwhile,
:class:`~gatewaypool_operator.kubeapply.ConflictError` ends the pass, and the
caller (:mod:`gatewaypool_operator.runner`, which also holds the pool's
lock) re-reads the pool and runs it again. A child the API server refuses
does not stop the others: the pool is ``Degraded`` with the server's
message, and one Warning Event says so (not one per pass).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gatewaypool.bucketmap import BucketMap, dump_map
from gatewaypool_operator import children, handover, mapgateways, observe, poolstatus
from gatewaypool_operator.kubeapply import Applied, Cluster, RefusedError
from gatewaypool_operator.spec import PoolSpec, SpecError, check_name, parse_spec

log = logging.getLogger(__name__)

ACCEPTED_SPEC_ANNOTATION = "gatewaypool.io/accepted-spec"
APPLY_REFUSED = poolstatus.APPLY_REFUSED


@dataclass(frozen=True, slots=True)
class Event:
    """A Kubernetes Event to post about the pool."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(slots=True)
class Outcome:
    """What a pass decided: the status to write, events, the accepted spec."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    #: The spec to record in the accepted-spec annotation; None when the
    #: annotation already holds it (or the spec was refused).
    accepted_spec: str | None = None
    applied: list[Applied] = field(default_factory=list)
    #: The handover's decision; None when the spec was refused.
    plan: handover.HandoverPlan | None = None

    @property
    def pending(self) -> bool:
        """Whether the pool is mid-change: buckets moving, gateways not yet as wanted.

        The resync then passes again within seconds, not at its usual interval:
        a handover advances only on passes.
        """
        plan = self.plan
        if plan is None:
            return False
        wanted = self.status.get("replicas") != plan.replicas
        return bool(plan.moving or plan.publish is not None or wanted or plan.events)


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


def reconcile(
    cluster: Cluster,
    *,
    body: Mapping[str, Any],
    default_router_image: str,
    now: datetime,
) -> Outcome:
    """Bring the pool's children, map and status in line with its spec."""
    metadata = body.get("metadata") or {}
    name = str(metadata["name"])
    namespace = str(metadata["namespace"])
    raw_spec = body.get("spec") or {}
    previous = (body.get("status") or {}).get("conditions") or []
    generation = int(metadata.get("generation") or 0)
    events: list[Event] = []

    map_name = children.map_configmap_name(name)
    map_object = cluster.read("ConfigMap", namespace, map_name)
    statefulset = cluster.read("StatefulSet", namespace, children.statefulset_name(name))
    published = mapgateways.read_published((map_object or {}).get("data"))
    if published.problem is not None:
        events.append(Event("Warning", "MapUnreadable", published.problem))
    current_map = published.bucket_map

    spec_error: str | None = None
    try:
        # The API server accepts names that would give the children invalid names.
        check_name(name)
        spec = parse_spec(raw_spec, default_router_image=default_router_image)
        if current_map is not None and current_map.buckets != spec.buckets:
            raise SpecError(
                "spec.buckets",
                spec.buckets,
                f"cannot change from {current_map.buckets}: the bucket count is fixed "
                "for a pool's life",
            )
    except SpecError as exc:
        spec_error = str(exc)
        events.append(Event("Warning", "SpecRejected", f"{spec_error}; the pool is left as it was"))
        running = _accepted(body, default_router_image)
        return Outcome(
            status=_status(
                cluster,
                name=name,
                namespace=namespace,
                spec=running,
                generation=generation,
                bucket_map=current_map,
                spec_error=spec_error,
                apply_error=None,
                previous=previous,
                now=now,
            ),
            events=events,
        )

    floor = int((body.get("status") or {}).get("mapVersion") or 0)
    plan, routers_seen = _plan_handover(
        cluster,
        name=name,
        namespace=namespace,
        spec=spec,
        published=current_map,
        map_data=(map_object or {}).get("data") or {},
        statefulset=statefulset,
        version_floor=floor,
        now=now,
        events=events,
    )
    if plan.publish is not None:
        current_map = plan.publish
    stored = (map_object or {}).get("data") or {}
    write_map = (
        plan.publish is not None
        or map_object is None
        or (plan.state_changed and _state_news(stored, plan.state, buckets=spec.buckets, now=now))
    )
    map_data = (
        {
            children.MAP_KEY: dump_map(current_map),
            handover.STATE_KEY: handover.dump_state(plan.state, buckets=spec.buckets),
        }
        if current_map is not None
        else None
    )
    events.extend(Event(e.type, e.reason, e.message) for e in plan.events)
    previous_totals = (body.get("status") or {}).get("handovers") or {}
    summary = poolstatus.HandoverSummary(
        oldest_move_seconds=plan.oldest_move_seconds,
        completed=_count(previous_totals.get("completed")) + len(plan.completed),
        forced=_count(previous_totals.get("forced")) + len(plan.forced),
        excluded_routers=plan.excluded_routers,
    )

    owner = children.owner_reference(body)
    applied: list[Applied] = []
    desired = children.build_children(
        name=name,
        namespace=namespace,
        spec=spec,
        map_data=map_data,
        gateway_replicas=plan.replicas,
    )
    refused: list[RefusedError] = []

    def apply(obj: dict[str, Any], **options: Any) -> None:
        try:
            applied.append(cluster.apply(obj, **options))
        except RefusedError as exc:
            refused.append(exc)

    wanted = {(str(obj["kind"]), str(obj["metadata"]["name"])) for obj in desired}
    for obj in desired:
        obj["metadata"]["ownerReferences"] = [owner]
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"] == map_name:
            if not write_map:
                # Written only with a new version or a new handover state.
                continue
            # Conditional: a pass computed from an older map cannot publish over a newer one.
            apply(obj, base=map_object, exclusive=True)
        elif obj["kind"] == "StatefulSet":
            # Conditional: a pass computed from an older state cannot shrink it back.
            apply(obj, base=statefulset)
        else:
            apply(obj)
    reports = children.routers_configmap(name=name, namespace=namespace)
    reports["metadata"]["ownerReferences"] = [owner]
    apply(reports, create_only=True)
    if plan.prune_reports:
        # Reports of router pods that are gone; each router writes only its own key.
        cluster.merge_patch_data(
            "ConfigMap",
            namespace,
            children.routers_configmap_name(name),
            dict.fromkeys(plan.prune_reports),
        )
    for kind, child_name in children.optional_children(name):
        if (kind, child_name) not in wanted:
            _remove_owned(cluster, kind, namespace, child_name, owner=owner, applied=applied)
    for item in applied:
        if item.kind == "ConfigMap" and item.name == map_name and item.action == "patched":
            continue  # map versions have their own events (BucketMapPublished, Handover*)
        if item.action == "created" and map_object is not None:
            events.append(Event("Normal", "ChildRecreated", f"{item.kind} {item.name} re-created"))
        elif item.action == "recreated":
            events.append(
                Event(
                    "Normal",
                    "ChildRecreated",
                    f"{item.kind} {item.name} deleted with its pods and volumes orphaned and "
                    f"created again: {item.why} (an immutable field)",
                )
            )
        elif item.action == "patched":
            events.append(
                Event(
                    "Normal", "ChildUpdated", f"{item.kind} {item.name} brought in line: {item.why}"
                )
            )
        elif item.action == "deleted":
            events.append(Event("Normal", "ChildDeleted", f"{item.kind} {item.name} deleted"))
    apply_error = "; ".join(str(exc) for exc in refused) or None
    if apply_error is not None and not _already_degraded(previous, apply_error):
        events.append(Event("Warning", APPLY_REFUSED, f"the API server refused {apply_error}"))

    accepted = json.dumps(raw_spec, sort_keys=True, separators=(",", ":"))
    annotations = metadata.get("annotations") or {}
    return Outcome(
        status=_status(
            cluster,
            name=name,
            namespace=namespace,
            spec=spec,
            generation=generation,
            bucket_map=current_map,
            spec_error=None,
            apply_error=apply_error,
            previous=previous,
            now=now,
            handover=summary,
            routers_seen=routers_seen,
        ),
        events=events,
        accepted_spec=accepted if accepted != annotations.get(ACCEPTED_SPEC_ANNOTATION) else None,
        applied=applied,
        plan=plan,
    )


def _plan_handover(
    cluster: Cluster,
    *,
    name: str,
    namespace: str,
    spec: PoolSpec,
    published: BucketMap | None,
    map_data: Mapping[str, str],
    statefulset: Mapping[str, Any] | None,
    version_floor: int,
    now: datetime,
    events: list[Event],
) -> tuple[handover.HandoverPlan, _RoutersSeen]:
    """Observe what the handover decides from, and let the pure core decide.

    Also returns the router pods and reports it read, which the status of
    the same pass counts (read once per pass, not twice).
    """
    state: handover.HandoverState | None = None
    text = map_data.get(handover.STATE_KEY)
    if text:
        try:
            state = handover.parse_state(text, buckets=spec.buckets)
        except handover.StateError as exc:
            # Safe to lose: moves then count as started now and wait again.
            events.append(Event("Warning", "HandoverStateUnreadable", str(exc)))
    sts_name = children.statefulset_name(name)
    gateway_objects = cluster.find(
        "Pod", namespace, labels=children.selector_labels(name, "gateway")
    )
    router_objects = cluster.find("Pod", namespace, labels=children.selector_labels(name, "router"))
    reports_object = cluster.read("ConfigMap", namespace, children.routers_configmap_name(name))
    reports = (reports_object or {}).get("data") or {}
    sts_replicas = _count(((statefulset or {}).get("spec") or {}).get("replicas"))
    listed = len(published.gateways) if published is not None else 0
    ports = observe.gateway_ports(gateway_objects, statefulset=sts_name)
    catalogue = [
        dataclasses.replace(gateway, port=ports.get(ordinal, gateway.port))
        for ordinal, gateway in enumerate(
            mapgateways.desired_gateways(
                name=name,
                namespace=namespace,
                spec=spec,
                count=max(spec.replicas, listed, sts_replicas, 1),
            )
        )
    ]
    settings = handover.HandoverSettings(
        quiet_seconds=spec.handover.quiet_seconds,
        max_drain_seconds=spec.handover.max_drain_seconds,
        failover_after_seconds=spec.handover.failover_after_seconds,
    )
    plan = handover.plan_handover(
        handover.HandoverInput(
            published=published,
            state=state,
            catalogue=catalogue,
            buckets=spec.buckets,
            wanted=spec.replicas,
            statefulset_replicas=sts_replicas,
            gateway_pods=observe.gateway_pods(gateway_objects, statefulset=sts_name),
            routers=observe.router_pods(router_objects, reports=reports, now=now),
            settings=settings,
            now=now,
            version_floor=version_floor,
            report_keys=tuple(reports),
        )
    )
    return plan, _RoutersSeen(pods=router_objects, reports=reports)


def _state_news(
    stored: Mapping[str, str], state: handover.HandoverState, *, buckets: int, now: datetime
) -> bool:
    """Whether `state` says more than the stored one (an expired hold says nothing).

    A hold that has run out changes no decision, so clearing it is no reason
    to write the map's ConfigMap (and to send every router a watch event).
    """
    try:
        before = handover.parse_state(stored.get(handover.STATE_KEY, ""), buckets=buckets)
    except handover.StateError:
        return True

    def settled(one: handover.HandoverState) -> handover.HandoverState:
        if one.hold_until is not None and one.hold_until <= now:
            return dataclasses.replace(one, hold_until=None)
        return one

    return settled(before) != settled(state)


@dataclass(frozen=True, slots=True)
class _RoutersSeen:
    """The router pods and the ``NAME-routers`` reports a pass read."""

    pods: list[dict[str, Any]]
    reports: Mapping[str, str]


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _status(
    cluster: Cluster,
    *,
    name: str,
    namespace: str,
    spec: PoolSpec | None,
    generation: int,
    bucket_map: BucketMap | None,
    spec_error: str | None,
    apply_error: str | None,
    previous: Any,
    now: datetime,
    handover: poolstatus.HandoverSummary | None = None,
    routers_seen: _RoutersSeen | None = None,
) -> dict[str, Any]:
    statefulset = cluster.read("StatefulSet", namespace, children.statefulset_name(name))
    if routers_seen is None:
        reports_object = cluster.read("ConfigMap", namespace, children.routers_configmap_name(name))
        routers_seen = _RoutersSeen(
            pods=cluster.find("Pod", namespace, labels=children.selector_labels(name, "router")),
            reports=(reports_object or {}).get("data") or {},
        )
    pods = routers_seen.pods
    live = [
        str(pod["metadata"]["name"]) for pod in pods if not pod["metadata"].get("deletionTimestamp")
    ]
    autoscaler = None
    if spec is not None and spec.autoscaling is not None:
        # Its conditions say whether it can scale the pool (metrics found, scale read).
        autoscaler = cluster.read(
            "HorizontalPodAutoscaler", namespace, children.autoscaler_name(name)
        )
    return poolstatus.compute_status(
        name=name,
        spec=spec,
        generation=generation,
        statefulset_status=(statefulset or {}).get("status"),
        bucket_map=bucket_map,
        router_reports=routers_seen.reports,
        live_router_pods=live,
        spec_error=spec_error,
        apply_error=apply_error,
        previous_conditions=previous,
        now=now,
        handover=handover,
        autoscaler_status=(autoscaler or {}).get("status"),
    )


def _already_degraded(previous: Any, message: str) -> bool:
    """Whether the pool already says this refusal (its Event was posted then)."""
    for condition in previous or []:
        if condition.get("type") == poolstatus.DEGRADED:
            return bool(
                condition.get("status") == "True"
                and condition.get("reason") == APPLY_REFUSED
                and condition.get("message") == message
            )
    return False


def _remove_owned(
    cluster: Cluster,
    kind: str,
    namespace: str,
    name: str,
    *,
    owner: Mapping[str, Any],
    applied: list[Applied],
) -> None:
    """Delete a child the spec no longer wants, if this pool owns it."""
    live = cluster.read(kind, namespace, name)
    if live is None:
        return
    owners = (live.get("metadata") or {}).get("ownerReferences") or []
    ours = any(ref.get("uid") == owner["uid"] for ref in owners)
    if ours and cluster.delete(kind, namespace, name):
        applied.append(Applied(kind, name, "deleted"))
