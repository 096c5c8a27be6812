"""Whether a pool's DICOM endpoint is open to any address: the ``RouterExposed`` decision.

A ``LoadBalancer`` router Service admits whatever addresses its load
balancer admits. On several clouds that is the internet unless an
annotation makes the load balancer internal, and the operator cannot read
a cloud's annotations reliably. What it can read is whether the pool
restricts the sources itself, in one of the two places Kubernetes enforces:

- ``spec.router.service.loadBalancerSourceRanges``, which the load balancer
  (or kube-proxy) enforces, or
- ``spec.networkPolicy.routerFrom``, which the network plugin enforces on
  the router pods (with ``spec.networkPolicy.enabled``).

A list with one entry that admits every address of its family (a ``/0``
range, such as ``0.0.0.0/0`` or ``::/0``; a peer of that ``ipBlock`` with no
``except``) is no restriction: whatever else it lists, that entry lets
everyone in.

With neither, the pool's ``RouterExposed`` condition is True and a Warning
Event of that reason is posted when it becomes so. A ``ClusterIP`` or
``NodePort`` router is never "exposed" here: a NodePort is reached through
the nodes' own network, which the site's firewalls already guard. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from gatewaypool_operator.conditions import ConditionReason
from gatewaypool_operator.spec.types import PoolSpec

__all__ = ["router_exposure"]


def router_exposure(spec: PoolSpec) -> tuple[bool, ConditionReason, str]:
    """Return (exposed, reason, message) for the ``RouterExposed`` condition of `spec`."""
    service = spec.router.service
    if service.type != "LoadBalancer":
        return (
            False,
            ConditionReason.NOT_A_LOAD_BALANCER,
            f"the router Service is of type {service.type}",
        )
    ranges = service.load_balancer_source_ranges
    if ranges and not any(map(_everywhere, ranges)):
        return (
            False,
            ConditionReason.SOURCES_RESTRICTED,
            "the load balancer admits only spec.router.service.loadBalancerSourceRanges",
        )
    policy = spec.network_policy
    if policy.enabled and policy.router_from and not any(map(_admits_all, policy.router_from)):
        return (
            False,
            ConditionReason.SOURCES_RESTRICTED,
            "the routers' NetworkPolicy admits only spec.networkPolicy.routerFrom",
        )
    return (
        True,
        ConditionReason.ANY_SOURCE_ADMITTED,
        "the router Service is a LoadBalancer whose sources neither spec.router.service."
        "loadBalancerSourceRanges nor spec.networkPolicy.routerFrom restrict: its DICOM port "
        "is reachable from any address the load balancer admits (on several clouds, the "
        "internet, unless an annotation makes it internal)",
    )


def _everywhere(cidr: object) -> bool:
    """Whether `cidr` is a range of every address of its family (a /0)."""
    if not isinstance(cidr, str):
        return False
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return False


def _admits_all(peer: Mapping[str, Any]) -> bool:
    block = peer.get("ipBlock")
    return (
        isinstance(block, Mapping)
        and _everywhere(block.get("cidr"))
        and not block.get("except")
        and "podSelector" not in peer
        and "namespaceSelector" not in peer
    )
