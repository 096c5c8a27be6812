"""The observe step of a pass: read what it decides from, and what pods and reports say.

`observe` is the pass's reads, through
:class:`~gatewaypool_operator.kubeapply.Cluster`: the pool's map and
StatefulSet, its pods, its report ConfigMap, its optional children and the
routers' spool claims, each once, before anything is decided
(:func:`gatewaypool_operator.plan.plan`).

The other functions are pure: they turn those plain objects into the inputs
of :func:`gatewaypool_operator.handover.decide.plan_handover`, which the plan
calls. Anything malformed is read as the safe thing: a pod without a
readable Ready condition is not Ready, a report that does not parse is no
report (its router then counts as not having spoken, which delays handovers
and never completes one).

A pod in phase ``Failed`` or ``Succeeded`` (evicted, killed by a node
shutdown, or its container exited for good) runs no container again and is
kept only until the pod garbage collector removes it: it is no router. It
never reports, so counting it would hold every handover until
``maxDrainSeconds`` forces it, and keep the StatefulSet from shrinking.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from gatewaypool.reports import ReportError, parse_report
from gatewaypool.strict import parse_time
from gatewaypool_operator.children.desired import optional_children
from gatewaypool_operator.children.names import (
    map_configmap_name,
    routers_configmap_name,
    selector_labels,
    statefulset_name,
)
from gatewaypool_operator.handover.decide import GatewayPod, RouterPod
from gatewaypool_operator.kubeapply import Cluster
from gatewaypool_operator.passdata import Observed

__all__ = [
    "FINISHED_PHASES",
    "gateway_pods",
    "gateway_ports",
    "live_routers",
    "observe",
    "router_pods",
]

FINISHED_PHASES: Final = frozenset({"Failed", "Succeeded"})
"""Pod phases after which no container of the pod runs again."""


def observe(cluster: Cluster, *, body: Mapping[str, Any]) -> Observed:
    """Read everything a pass decides from, each object once.

    The pool itself is read by the caller, under the pool's lock, to learn
    whether it is being deleted before anything else is read; `body` is that
    read.

    All optional children are read, whether the spec wants them or not:
    which ones it wants is the plan's decision, made after the reads. The
    price is a second read of each one the spec wants, which
    :meth:`~gatewaypool_operator.kubeapply.Cluster.apply` reads again to
    compare: it cannot take this read as its ``base``, since a conditional
    write of an object others update (the autoscaler's status) would
    conflict again and again.
    """
    metadata = body.get("metadata") or {}
    name = str(metadata["name"])
    namespace = str(metadata["namespace"])
    optional: dict[tuple[str, str], Mapping[str, Any]] = {}
    for kind, child_name in optional_children(name):
        live = cluster.read(kind, namespace, child_name)
        if live is not None:
            optional[(kind, child_name)] = live
    return Observed(
        pool=body,
        map_configmap=cluster.read("ConfigMap", namespace, map_configmap_name(name)),
        statefulset=cluster.read("StatefulSet", namespace, statefulset_name(name)),
        gateway_pods=cluster.find("Pod", namespace, labels=selector_labels(name, "gateway")),
        router_pods=cluster.find("Pod", namespace, labels=selector_labels(name, "router")),
        reports_configmap=cluster.read("ConfigMap", namespace, routers_configmap_name(name)),
        optional_children=optional,
        router_claims=cluster.find(
            "PersistentVolumeClaim", namespace, labels=selector_labels(name, "router")
        ),
    )


def _ready(pod: Mapping[str, Any]) -> tuple[bool, datetime | None]:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False, parse_time(pod["metadata"]["deletionTimestamp"])
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == "Ready":
            return condition.get("status") == "True", parse_time(
                condition.get("lastTransitionTime")
            )
    return False, parse_time((pod.get("metadata") or {}).get("creationTimestamp"))


def gateway_pods(pods: Iterable[Mapping[str, Any]], *, statefulset: str) -> list[GatewayPod]:
    """The gateway pods of StatefulSet `statefulset`, by ordinal, with readiness.

    A pod being deleted is not Ready (its gateway is shutting down), from
    the moment its deletion started.
    """
    pattern = re.compile(rf"^{re.escape(statefulset)}-(\d+)$")
    found: dict[int, GatewayPod] = {}
    for pod in pods:
        match = pattern.match(str((pod.get("metadata") or {}).get("name") or ""))
        if match is None:
            continue
        ready, since = _ready(pod)
        ordinal = int(match.group(1))
        found[ordinal] = GatewayPod(ordinal=ordinal, ready=ready, since=since)
    return [found[ordinal] for ordinal in sorted(found)]


def gateway_ports(pods: Iterable[Mapping[str, Any]], *, statefulset: str) -> dict[int, int]:
    """The DICOM port each existing gateway pod serves, by ordinal.

    A pod keeps the port it was created with until it is replaced, so while
    a new ``spec.gateway.port`` rolls out, the map must name each gateway at
    the port its pod has, not at the spec's.
    """
    pattern = re.compile(rf"^{re.escape(statefulset)}-(\d+)$")
    ports: dict[int, int] = {}
    for pod in pods:
        match = pattern.match(str((pod.get("metadata") or {}).get("name") or ""))
        if match is None:
            continue
        for container in (pod.get("spec") or {}).get("containers") or []:
            if not isinstance(container, Mapping) or container.get("name") != "gateway":
                continue
            for port in container.get("ports") or []:
                value = port.get("containerPort") if isinstance(port, Mapping) else None
                if port.get("name") == "dicom" and isinstance(value, int) and 0 < value < 65536:
                    ports[int(match.group(1))] = value
    return ports


def live_routers(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The router pods that may route: all but those in a `FINISHED_PHASES` phase.

    A pod being deleted stays: it still serves its open associations and
    still reports until it is gone.
    """
    return [pod for pod in pods if (pod.get("status") or {}).get("phase") not in FINISHED_PHASES]


def router_pods(
    pods: Iterable[Mapping[str, Any]], *, reports: Mapping[str, str], now: datetime
) -> list[RouterPod]:
    """The router pods that may route (`live_routers`), each with its report from `reports`.

    `reports` maps pod name to report text.
    """
    result: list[RouterPod] = []
    for pod in live_routers(pods):
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name") or "")
        if not name:
            continue
        # A router shutting down still serves its open associations and
        # still reports: it counts until its pod is gone.
        created = parse_time(metadata.get("creationTimestamp")) or now
        text = reports.get(name)
        if text is None:
            result.append(RouterPod(name=name, created_at=created))
            continue
        try:
            report = parse_report(text)
        except ReportError as exc:
            result.append(RouterPod(name=name, created_at=created, problem=str(exc)))
        else:
            result.append(RouterPod(name=name, created_at=created, report=report))
    return sorted(result, key=lambda router: router.name)
