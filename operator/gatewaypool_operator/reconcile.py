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

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gatewaypool.assignment import moved_buckets
from gatewaypool.bucketmap import BucketMap, dump_map
from gatewaypool_operator import children, mapping, status
from gatewaypool_operator.kubeapply import Applied, Cluster, RefusedError
from gatewaypool_operator.spec import PoolSpec, SpecError, parse_spec

log = logging.getLogger(__name__)

ACCEPTED_SPEC_ANNOTATION = "gatewaypool.io/accepted-spec"
APPLY_REFUSED = status.APPLY_REFUSED


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
    published = mapping.read_published((map_object or {}).get("data"))
    if published.problem is not None:
        events.append(Event("Warning", "MapUnreadable", published.problem))
    current_map = published.bucket_map

    spec_error: str | None = None
    try:
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
    gateways = mapping.desired_gateways(
        name=name, namespace=namespace, spec=spec, count=spec.replicas
    )
    new_map = mapping.next_map(
        current_map, gateways=gateways, buckets=spec.buckets, version_floor=floor
    )
    if new_map is not None:
        events.append(_map_event(current_map, new_map))
        current_map = new_map
    map_json = dump_map(current_map) if current_map is not None else None

    owner = children.owner_reference(body)
    applied: list[Applied] = []
    desired = children.build_children(
        name=name,
        namespace=namespace,
        spec=spec,
        bucket_map_json=map_json,
        gateway_replicas=spec.replicas,
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
            if new_map is None and map_object is not None:
                # Only a new map version is ever written, never the same one again.
                continue
            apply(obj, base=map_object, exclusive=True)
        elif obj["kind"] == "StatefulSet":
            # Conditional: a pass computed from an older state cannot shrink it back.
            apply(obj, base=statefulset)
        else:
            apply(obj)
    reports = children.routers_configmap(name=name, namespace=namespace)
    reports["metadata"]["ownerReferences"] = [owner]
    apply(reports, create_only=True)
    for kind, child_name in children.optional_children(name):
        if (kind, child_name) not in wanted:
            _remove_owned(cluster, kind, namespace, child_name, owner=owner, applied=applied)
    for item in applied:
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
        ),
        events=events,
        accepted_spec=accepted if accepted != annotations.get(ACCEPTED_SPEC_ANNOTATION) else None,
        applied=applied,
    )


def _map_event(old: BucketMap | None, new: BucketMap) -> Event:
    if old is None or old.buckets != new.buckets:
        message = (
            f"published map version {new.version}: "
            f"{new.buckets} buckets over {len(new.gateways)} gateways"
        )
    else:
        moved = len(moved_buckets(_by_name(old, new), list(new.owners)))
        message = (
            f"published map version {new.version}: {len(old.gateways)} -> {len(new.gateways)} "
            f"gateways, {moved} of {new.buckets} buckets moved"
        )
    return Event("Normal", "MapPublished", message)


def _by_name(old: BucketMap, new: BucketMap) -> list[int]:
    """Old owners renumbered into the new map's gateway indices (-1 if gone)."""
    index = {gateway.name: i for i, gateway in enumerate(new.gateways)}
    return [index.get(old.gateways[owner].name, -1) for owner in old.owners]


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
) -> dict[str, Any]:
    statefulset = cluster.read("StatefulSet", namespace, children.statefulset_name(name))
    reports = cluster.read("ConfigMap", namespace, children.routers_configmap_name(name))
    pods = cluster.find("Pod", namespace, labels=children.selector_labels(name, "router"))
    live = [
        str(pod["metadata"]["name"]) for pod in pods if not pod["metadata"].get("deletionTimestamp")
    ]
    return status.compute_status(
        name=name,
        spec=spec,
        generation=generation,
        statefulset_status=(statefulset or {}).get("status"),
        bucket_map=bucket_map,
        router_reports=(reports or {}).get("data") or {},
        live_router_pods=live,
        spec_error=spec_error,
        apply_error=apply_error,
        previous_conditions=previous,
        now=now,
    )


def _already_degraded(previous: Any, message: str) -> bool:
    """Whether the pool already says this refusal (its Event was posted then)."""
    for condition in previous or []:
        if condition.get("type") == status.DEGRADED:
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
