"""The bucket map's gateways and its published form, as the operator reads them.

Which buckets move, and when, is the handover's decision
(`gatewaypool_operator.handover.decide`); this module names the gateways a map
lists (one per StatefulSet pod, by its stable DNS name), says which of them
are not Ready (`readiness`, published beside the map, see
`gatewaypool.bucketmap.Readiness`) and reads what the ``NAME-map`` ConfigMap
holds without ever crashing on it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gatewaypool.bucketmap import BucketMap, Gateway, MapError, Readiness, parse_map
from gatewaypool.contract import MAP_KEY
from gatewaypool_operator.children.names import (
    DEFAULT_CLUSTER_DOMAIN,
    gateway_dns_name,
    gateway_pod_name,
)
from gatewaypool_operator.handover.decide import GatewayPod
from gatewaypool_operator.spec.types import PoolSpec

__all__ = [
    "PublishedMap",
    "desired_gateways",
    "owners_not_ready",
    "read_published",
    "readiness",
]


def desired_gateways(
    *,
    name: str,
    namespace: str,
    spec: PoolSpec,
    count: int,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> tuple[Gateway, ...]:
    """Return the map's entries for gateway pods ``0 .. count - 1`` of pool `name`.

    Each gateway is named after its pod (``NAME-gw-<i>``), so status, logs
    and ``kubectl get pods`` agree, and is reached at the pod's stable DNS
    name, which survives the pod's restarts and moves between nodes.

    Parameters
    ----------
    name, namespace
        The pool's.
    spec
        Gives the gateways' DICOM port and AE title, the same for all.
    cluster_domain
        The cluster's DNS domain (``--cluster-domain``), the end of every host name.
    count
        How many gateways; the caller decides (the StatefulSet may hold more
        pods than the spec wants while buckets move away).

    Raises
    ------
    ValueError
        If `count` is negative.
    """
    if count < 0:
        raise ValueError(f"count: {count!r} is negative")
    return tuple(
        Gateway(
            name=gateway_pod_name(name, ordinal),
            host=gateway_dns_name(name, namespace, ordinal, cluster_domain=cluster_domain),
            port=spec.gateway.port,
            ae_title=spec.gateway.ae_title,
        )
        for ordinal in range(count)
    )


@dataclass(frozen=True, slots=True)
class PublishedMap:
    """What the ``NAME-map`` ConfigMap holds.

    Attributes
    ----------
    bucket_map
        The map, or None if none is published or it is unusable.
    problem
        Why a published map is unusable (for an Event or a log line), or None
        if it is fine or there is none.
    """

    bucket_map: BucketMap | None
    problem: str | None = None


def read_published(configmap_data: Mapping[str, str] | None) -> PublishedMap:
    """Read the map from the ``NAME-map`` ConfigMap's data, tolerating anything.

    A broken map (edited by hand, truncated) must not crash the operator:
    it is reported and then replaced by a new one, which `next_map`, given a
    version floor, makes newer than anything routers applied.

    Parameters
    ----------
    configmap_data
        The ConfigMap's ``data``; None if the ConfigMap does not exist or
        has no data.
    """
    if not configmap_data or MAP_KEY not in configmap_data:
        return PublishedMap(None)
    text = configmap_data[MAP_KEY]
    if not isinstance(text, str):
        return PublishedMap(None, f"{MAP_KEY}: {type(text).__name__} is not text")
    try:
        return PublishedMap(parse_map(text))
    except MapError as error:
        return PublishedMap(None, f"{MAP_KEY}: {error}")


def readiness(bucket_map: BucketMap, pods: Sequence[GatewayPod]) -> Readiness:
    """Which of `bucket_map`'s gateways are not Ready, for routers to spool instead of trying.

    Gateway ``i`` is pod ``i`` (as `desired_gateways` names them). A gateway
    whose pod is not Ready -- starting, failing its probe, being deleted
    (`gatewaypool_operator.observe.gateway_pods`) -- or has no pod at all is
    not Ready. Every listed gateway is judged, owner or not: the record says
    what is, and a gateway that owns nothing is simply never sent to.
    """
    ready = {pod.ordinal for pod in pods if pod.ready}
    return Readiness(
        not_ready=frozenset(
            gateway.name for index, gateway in enumerate(bucket_map.gateways) if index not in ready
        )
    )


def owners_not_ready(bucket_map: BucketMap, readiness: Readiness) -> tuple[str, ...]:
    """The gateways `readiness` marks not Ready that own a bucket in `bucket_map`, in map order.

    Routers send only to owners, so only these hold instances in spools.
    """
    owning = set(bucket_map.owners)
    return tuple(
        gateway.name
        for index, gateway in enumerate(bucket_map.gateways)
        if index in owning and not readiness.ready(gateway.name)
    )
