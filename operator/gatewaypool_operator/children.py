"""Everything a GatewayPool owns, built as plain data from its spec.

Desired state is built here and applied elsewhere: these functions return
the objects as ``kubectl get -o json`` would show them, minus what the API
server fills in, so that a test can check a StatefulSet without a cluster
and the applier only compares and writes. Nothing here talks to the API.

The objects are built without an ownerReference: the pass's plan
(`gatewaypool_operator.plan`) adds `owner_reference` to each object it
writes (the pool's uid is known only from the live object), which makes the
garbage collector delete them with the pool.

This module holds the list (`build_children`), the two ConfigMaps and the
HorizontalPodAutoscaler; the other objects are built in modules of their
own, and their public names are re-exported here:

- `gatewaypool_operator.childnames`: names, labels, selectors, metadata and
  the ownerReference, which follow the shared contract;
- `gatewaypool_operator.gatewaychildren`: the gateway StatefulSet, its
  headless Service and NetworkPolicy;
- `gatewaypool_operator.routerchildren`: the router Deployment, Service,
  RBAC, NetworkPolicy and TLS Secret mounts;
- `gatewaypool_operator.podparts`: what both pod templates share, and the
  PodDisruptionBudget of each (`pod_disruption_budget`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gatewaypool.contract import API_GROUP, KIND, MAP_KEY
from gatewaypool_operator import gatewaychildren, routerchildren
from gatewaypool_operator.childnames import (
    API_VERSION,
    autoscaler_name,
    gateway_dns_name,
    gateway_pod_name,
    labels,
    map_configmap_name,
    object_metadata,
    owner_reference,
    router_name,
    routers_configmap_name,
    selector_labels,
    selector_string,
    statefulset_name,
)
from gatewaypool_operator.gatewaychildren import FS_GROUP, gateway_secret_mounts
from gatewaypool_operator.podparts import (
    SECRET_FILE_MODE,
    TLS_DIRECTORY,
    SecretMount,
    pod_disruption_budget,
    topology_spread,
)
from gatewaypool_operator.routerchildren import (
    ROUTER_DICOM_PORT,
    ROUTER_HTTP_PORT,
    ROUTER_TLS_PORT,
    RUN_AS_USER,
    router_secret_mounts,
)
from gatewaypool_operator.spectypes import AutoscalingSpec, PoolSpec

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "FS_GROUP",
    "KIND",
    "MAP_KEY",
    "ROUTER_DICOM_PORT",
    "ROUTER_HTTP_PORT",
    "ROUTER_TLS_PORT",
    "RUN_AS_USER",
    "SECRET_FILE_MODE",
    "STUDIES_IN_FLIGHT_METRIC",
    "TLS_DIRECTORY",
    "SecretMount",
    "autoscaler_name",
    "build_children",
    "gateway_dns_name",
    "gateway_pod_name",
    "gateway_secret_mounts",
    "labels",
    "map_configmap_name",
    "optional_children",
    "owner_reference",
    "router_name",
    "router_secret_mounts",
    "routers_configmap",
    "routers_configmap_name",
    "selector_labels",
    "selector_string",
    "statefulset_name",
    "topology_spread",
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
        (see `gatewaypool_operator.handover`).

    Returns
    -------
    list[dict]
        StatefulSet, headless Service, router Deployment, router Service,
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
            gatewaychildren.network_policy(name, namespace, spec),
            routerchildren.router_network_policy(name, namespace, spec),
        ]
        if spec.network_policy.enabled
        else []
    )
    autoscalers = (
        [_horizontal_pod_autoscaler(name, namespace, spec.autoscaling)]
        if spec.autoscaling is not None
        else []
    )
    return [
        routerchildren.service_account(name, namespace),
        routerchildren.role(name, namespace),
        routerchildren.role_binding(name, namespace),
        _map_configmap(name, namespace, map_data),
        gatewaychildren.headless_service(name, namespace, spec),
        gatewaychildren.statefulset(name, namespace, spec, gateway_replicas),
        *policies,
        pod_disruption_budget(statefulset_name(name), name, namespace, "gateway"),
        routerchildren.router_deployment(name, namespace, spec),
        pod_disruption_budget(router_name(name), name, namespace, "router"),
        routerchildren.router_service(name, namespace, spec),
        *autoscalers,
    ]


def optional_children(name: str) -> list[tuple[str, str]]:
    """Return (kind, name) of the children a spec may leave out, which are then deleted.

    The NetworkPolicies go with ``spec.networkPolicy.enabled: false``, the
    HorizontalPodAutoscaler with ``spec.autoscaling``.
    """
    return [
        ("NetworkPolicy", statefulset_name(name)),
        ("NetworkPolicy", router_name(name)),
        ("HorizontalPodAutoscaler", autoscaler_name(name)),
    ]


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
