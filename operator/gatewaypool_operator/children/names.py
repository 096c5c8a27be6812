"""Names, labels and metadata of what a GatewayPool owns, and the ownerReference they carry.

Every child's name derives from the pool's (``NAME-gw``, ``NAME-router``,
``NAME-map``, ``NAME-routers``) and every child carries the same labels, so
that the operator, the routers and a user's ``kubectl get -l`` find them
without looking anything up. The objects themselves are built by the
other modules of `gatewaypool_operator.children`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from gatewaypool.contract import API_GROUP_VERSION, KIND

__all__ = [
    "API_VERSION",
    "DEFAULT_CLUSTER_DOMAIN",
    "MANAGED_BY",
    "autoscaler_name",
    "gateway_dns_name",
    "gateway_pod_name",
    "labels",
    "map_configmap_name",
    "object_metadata",
    "owner_reference",
    "router_name",
    "router_pods_service_name",
    "routers_configmap_name",
    "selector_labels",
    "selector_string",
    "statefulset_name",
]

API_VERSION: Final = API_GROUP_VERSION
"""The GatewayPool's ``apiVersion``, as an ownerReference and the HPA's scaleTargetRef name it."""

DEFAULT_CLUSTER_DOMAIN: Final = "cluster.local"
"""The cluster's DNS domain unless the operator is told another (``--cluster-domain``)."""
_NAME_LABEL: Final = "app.kubernetes.io/name"
_INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
_MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
#: The managed-by label's value on everything the operator makes.
MANAGED_BY: Final = "gatewaypool-operator"
_COMPONENT_LABEL: Final = "app.kubernetes.io/component"
_COMPONENTS: Final = ("gateway", "router", "map")


# --- names --------------------------------------------------------------------


def statefulset_name(name: str) -> str:
    """Return ``NAME-gw``: the gateway StatefulSet, its headless Service, NetworkPolicy, PDB."""
    return f"{name}-gw"


def router_name(name: str) -> str:
    """Return ``NAME-router``: the router Deployment, Service, ServiceAccount, Role, binding."""
    return f"{name}-router"


def router_pods_service_name(name: str) -> str:
    """Return ``NAME-router-pods``: the headless Service the router StatefulSet names.

    Only with ``spec.router.spool``. Modalities use the router Service
    ``NAME-router``; this one exists because a StatefulSet names a governing
    Service (``serviceName``, which older API servers require).
    """
    return f"{name}-router-pods"


def map_configmap_name(name: str) -> str:
    """Return ``NAME-map``: the ConfigMap holding the bucket map."""
    return f"{name}-map"


def routers_configmap_name(name: str) -> str:
    """Return ``NAME-routers``: the ConfigMap the routers report into."""
    return f"{name}-routers"


def autoscaler_name(name: str) -> str:
    """Return ``NAME``: the HorizontalPodAutoscaler, named like the pool it scales."""
    return name


def gateway_pod_name(name: str, ordinal: int) -> str:
    """Return ``NAME-gw-<ordinal>``, the StatefulSet's pod name and the gateway's map name."""
    return f"{statefulset_name(name)}-{ordinal}"


def gateway_dns_name(
    name: str, namespace: str, ordinal: int, *, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
) -> str:
    """Return a gateway pod's stable DNS name, which the bucket map lists.

    ``NAME-gw-<ordinal>.NAME-gw.NS.svc.<cluster_domain>``: the headless
    Service gives every StatefulSet pod this record, and publishes it before
    the pod is ready, so routers can resolve a gateway as soon as it starts.
    """
    pod = gateway_pod_name(name, ordinal)
    return f"{pod}.{statefulset_name(name)}.{namespace}.svc.{cluster_domain}"


# --- labels -------------------------------------------------------------------


def labels(name: str, component: str) -> dict[str, str]:
    """Return the labels every object of pool `name` carries, for one component.

    Parameters
    ----------
    name
        The pool's name.
    component
        ``gateway``, ``router`` or ``map``.

    Raises
    ------
    ValueError
        For any other component: a typo would build selectors matching nothing.
    """
    _check_component(component)
    return {
        _NAME_LABEL: "gatewaypool",
        _INSTANCE_LABEL: name,
        _MANAGED_BY_LABEL: MANAGED_BY,
        _COMPONENT_LABEL: component,
    }


def selector_labels(name: str, component: str) -> dict[str, str]:
    """Return the labels that select one component's pods: instance and component.

    Selectors of StatefulSets and Deployments are immutable, so they hold
    only what never changes for a pool.
    """
    _check_component(component)
    return {_INSTANCE_LABEL: name, _COMPONENT_LABEL: component}


def selector_string(name: str) -> str:
    """Return the gateway pods' label selector as a string, for ``status.selector``.

    The scale subresource (and so ``kubectl scale`` and an HPA) reads it to
    find the pods that `spec.replicas` counts.
    """
    return ",".join(f"{key}={value}" for key, value in selector_labels(name, "gateway").items())


def _check_component(component: str) -> None:
    if component not in _COMPONENTS:
        raise ValueError(f"component: {component!r} is not one of {', '.join(_COMPONENTS)}")


# --- owner reference ------------------------------------------------------------


def owner_reference(pool_body: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ownerReference every child of `pool_body` carries.

    ``controller: true`` makes the pool the one manager of the child;
    ``blockOwnerDeletion`` keeps foreground deletion of the pool waiting
    until its children are gone.

    Parameters
    ----------
    pool_body
        The GatewayPool as the API returns it; needs ``metadata.name`` and
        ``metadata.uid``.

    Raises
    ------
    ValueError
        If the body has no name or uid: a reference without a uid is refused
        by the API server, and must not be sent.
    """
    metadata = pool_body.get("metadata") or {}
    name = metadata.get("name")
    uid = metadata.get("uid")
    if not isinstance(name, str) or not name or not isinstance(uid, str) or not uid:
        raise ValueError(
            f"pool body needs metadata.name and metadata.uid, has name={name!r} uid={uid!r}"
        )
    return {
        "apiVersion": pool_body.get("apiVersion") or API_VERSION,
        "kind": pool_body.get("kind") or KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_metadata(
    object_name: str, namespace: str, object_labels: Mapping[str, str]
) -> dict[str, Any]:
    """Return a child's ``metadata``: its name, the pool's namespace, and `object_labels`."""
    return {"name": object_name, "namespace": namespace, "labels": dict(object_labels)}
