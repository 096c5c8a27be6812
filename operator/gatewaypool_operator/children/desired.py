"""The list of everything a GatewayPool owns, built as plain data from its spec.

Desired state is built here and applied elsewhere: these functions return
the objects as ``kubectl get -o json`` would show them, minus what the API
server fills in, so that a test can check a StatefulSet without a cluster
and the applier only compares and writes. Nothing here talks to the API.

The objects are built without an ownerReference: the pass's plan
(`gatewaypool_operator.plan`) adds `gatewaypool_operator.children.names.owner_reference`
to each object it writes (the pool's uid is known only from the live
object), which makes the garbage collector delete them with the pool.

This module holds the list (`build_children`), the two ConfigMaps and the
HorizontalPodAutoscaler. The gateways' objects are built by
`gatewaypool_operator.children.gateway`, the routers' by
`gatewaypool_operator.children.router`, and the PodDisruptionBudget of each
by `gatewaypool_operator.children.podparts.pod_disruption_budget`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gatewaypool.contract import KIND
from gatewaypool_operator.children import gateway, router
from gatewaypool_operator.children.names import (
    API_VERSION,
    autoscaler_name,
    labels,
    map_configmap_name,
    object_metadata,
    router_name,
    router_pods_service_name,
    routers_configmap_name,
    statefulset_name,
)
from gatewaypool_operator.children.podparts import pod_disruption_budget
from gatewaypool_operator.spec.types import AutoscalingSpec, PoolSpec

__all__ = [
    "SCALE_UP_POLICIES",
    "STUDIES_IN_FLIGHT_METRIC",
    "build_children",
    "optional_children",
    "router_workloads",
    "routers_configmap",
]

STUDIES_IN_FLIGHT_METRIC: Final = "gatewaypool_studies_in_flight"
"""The per-gateway Pods metric (served by Prometheus Adapter or KEDA from the routers'
``gatewaypool_router_studies_in_flight``) the autoscaler's studiesInFlight target reads."""


# --- children -------------------------------------------------------------------


def build_children(
    *,
    name: str,
    namespace: str,
    spec: PoolSpec,
    map_data: Mapping[str, str] | None,
    gateway_replicas: int,
) -> list[dict[str, Any]]:
    """Return every object pool `name` owns and the operator keeps in line with the spec.

    The list excludes the ``NAME-routers`` ConfigMap (see `routers_configmap`):
    routers write into it, so the operator creates it once and never
    overwrites it.

    Parameters
    ----------
    name, namespace
        The pool's.
    spec
        The pool's checked spec.
    map_data
        The ``NAME-map`` ConfigMap's data to publish: the bucket map
        (`MAP_KEY`) and the handover's state beside it, written together; or
        None if there is no map yet (no gateway was Ready): the ConfigMap is
        then built with no data, and routers stay unready until a map appears.
    gateway_replicas
        The StatefulSet's replica count, which the handover decides, not the
        spec: ``spec.replicas`` when growing, and while scaling down only as
        few as no live router can still send to a gateway it would remove
        (see `gatewaypool_operator.handover.decide`).

    Returns
    -------
    list[dict]
        StatefulSet, headless Service, router Deployment (with
        ``spec.router.spool``: the router StatefulSet and its headless
        Service ``NAME-router-pods`` instead), router Service,
        ServiceAccount, Role, RoleBinding, ConfigMap ``NAME-map``,
        NetworkPolicies ``NAME-gw`` and ``NAME-router`` (unless
        ``spec.networkPolicy.enabled`` is false) and PodDisruptionBudgets
        ``NAME-gw`` and ``NAME-router``, and the HorizontalPodAutoscaler
        ``NAME`` when ``spec.autoscaling`` is set, in an order that can be
        created as is (what an object refers to comes first).

    Raises
    ------
    ValueError
        If `gateway_replicas` is negative.
    """
    if gateway_replicas < 0:
        raise ValueError(f"gateway_replicas: {gateway_replicas!r} is negative")
    policies = (
        [
            gateway.network_policy(name, namespace, spec),
            router.network_policy(name, namespace, spec),
        ]
        if spec.network_policy.enabled
        else []
    )
    autoscalers = (
        [_horizontal_pod_autoscaler(name, namespace, spec.autoscaling)]
        if spec.autoscaling is not None
        else []
    )
    routers = (
        [router.pods_service(name, namespace), router.statefulset(name, namespace, spec)]
        if spec.router.spool is not None
        else [router.deployment(name, namespace, spec)]
    )
    return [
        router.service_account(name, namespace),
        router.role(name, namespace),
        router.role_binding(name, namespace),
        _map_configmap(name, namespace, map_data),
        gateway.service(name, namespace, spec),
        gateway.statefulset(name, namespace, spec, gateway_replicas),
        *policies,
        pod_disruption_budget(statefulset_name(name), name, namespace, "gateway"),
        *routers,
        pod_disruption_budget(router_name(name), name, namespace, "router"),
        router.service(name, namespace, spec),
        *autoscalers,
    ]


def optional_children(name: str) -> list[tuple[str, str]]:
    """Return (kind, name) of the children a spec may leave out, which are then deleted.

    The NetworkPolicies go with ``spec.networkPolicy.enabled: false``, the
    HorizontalPodAutoscaler with ``spec.autoscaling``. The routers are either
    the Deployment or, with ``spec.router.spool``, the StatefulSet and its
    headless Service: the kind the spec no longer asks for goes once the
    other is ready (`router_workloads`; the plan decides when).
    """
    return [
        ("NetworkPolicy", statefulset_name(name)),
        ("NetworkPolicy", router_name(name)),
        ("HorizontalPodAutoscaler", autoscaler_name(name)),
        *router_workloads(name),
        ("Service", router_pods_service_name(name)),
    ]


def router_workloads(name: str) -> list[tuple[str, str]]:
    """Return (kind, name) of the two kinds the routers can run as: Deployment, StatefulSet."""
    return [("Deployment", router_name(name)), ("StatefulSet", router_name(name))]


def routers_configmap(*, name: str, namespace: str) -> dict[str, Any]:
    """Return the ``NAME-routers`` ConfigMap, empty: create it once, never overwrite it.

    Every router patches its own key (its pod name) with the map version it
    applied; an operator that replaced the ConfigMap would erase those
    reports and stall every handover, so the applier must only create it
    when it is missing.
    """
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(
            routers_configmap_name(name), namespace, labels(name, "router")
        ),
        "data": {},
    }


def _map_configmap(name: str, namespace: str, map_data: Mapping[str, str] | None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_metadata(map_configmap_name(name), namespace, labels(name, "map")),
        "data": dict(map_data or {}),
    }


SCALE_UP_POLICIES: Final = (
    {"type": "Percent", "value": 100, "periodSeconds": 15},
    {"type": "Pods", "value": 4, "periodSeconds": 15},
)
"""Scale up promptly: double the gateways, or add four, every 15 s, whichever is more."""


def _horizontal_pod_autoscaler(
    name: str, namespace: str, autoscaling: AutoscalingSpec
) -> dict[str, Any]:
    """The autoscaling/v2 HorizontalPodAutoscaler aimed at the pool's scale subresource.

    It writes ``spec.replicas`` of the GatewayPool, never the StatefulSet's:
    every step it takes goes through the bucket handover like a manual scale.
    Scale-down waits ``stabilization_seconds`` (never shorter than a handover
    may take) and removes at most one gateway per ``period_seconds``.
    """
    metrics: list[dict[str, Any]] = []
    if autoscaling.cpu_utilization is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": autoscaling.cpu_utilization,
                    },
                },
            }
        )
    if autoscaling.studies_in_flight is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": STUDIES_IN_FLIGHT_METRIC},
                    # A quantity: the API server stores it as a string.
                    "target": {
                        "type": "AverageValue",
                        "averageValue": str(autoscaling.studies_in_flight),
                    },
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": object_metadata(autoscaler_name(name), namespace, labels(name, "gateway")),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": metrics,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [dict(policy) for policy in SCALE_UP_POLICIES],
                    "selectPolicy": "Max",
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": autoscaling.stabilization_seconds,
                    "policies": [
                        {
                            "type": "Pods",
                            "value": 1,
                            "periodSeconds": autoscaling.period_seconds,
                        }
                    ],
                    "selectPolicy": "Min",
                },
            },
        },
    }
