"""The bucket map the operator publishes: which map a spec wants, and when it changes.

The operator is the only writer of the map, and routers apply whatever
version is newest, so two rules decide everything here:

- a new version only when something changed. An operator that restarts, or
  reconciles the same spec again, must compute the map it already published
  and publish nothing, or every restart would send all routers a new map;
- when the number of gateways changes, `gatewaypool.assignment.rebalance`
  moves the fewest buckets, starting from the owners that are published now
  (not from a fresh round robin), so only the buckets that must move do.

Handover of moving buckets (publishing ``from → to`` first, the new owner
only once a bucket is quiet) is a later step; for now a change of owner is
published at once and ``moving`` stays empty.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gatewaypool.assignment import rebalance
from gatewaypool.bucketmap import BucketMap, Gateway, MapError, balanced_map, dump_map, parse_map
from gatewaypool_operator.children import MAP_KEY, gateway_dns_name, gateway_pod_name
from gatewaypool_operator.spec import PoolSpec

__all__ = [
    "PublishedMap",
    "desired_gateways",
    "next_map",
    "parse_published",
    "publish",
    "read_published",
]


def desired_gateways(
    *, name: str, namespace: str, spec: PoolSpec, count: int
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
            host=gateway_dns_name(name, namespace, ordinal),
            port=spec.gateway.port,
            ae_title=spec.gateway.ae_title,
        )
        for ordinal in range(count)
    )


def next_map(
    current: BucketMap | None,
    *,
    gateways: Sequence[Gateway],
    buckets: int,
    version_floor: int = 0,
) -> BucketMap | None:
    """Return the map to publish next, or None if `current` is already what is wanted.

    Parameters
    ----------
    current
        The published map, or None if there is none (or it is unreadable).
    gateways
        The gateways the map should list, in ordinal order
        (`desired_gateways`).
    buckets
        The pool's bucket count.
    version_floor
        A version known to have been published before, e.g.
        ``status.mapVersion``: every new map's version is greater. Routers
        refuse a map older than the one they applied, so if the published
        map was lost or overwritten by hand, a republished one must still be
        newer than anything a router may hold. A `current` older than this
        is republished even if it is otherwise what is wanted.

    Returns
    -------
    BucketMap or None
        None if nothing changed (no spurious version bump), and also when
        `gateways` is empty: no map can list zero gateways, so the last one
        stays published (routers answer failure until gateways return).
        Otherwise:

        - with no usable `current` (none, or another bucket count): the
          balanced round robin over `gateways`, version 1 (or one above the
          floor);
        - else owners rebalanced from ``current.owners`` with the fewest
          moves, version + 1. A current gateway is matched to a wanted one by
          name; one that is not wanted (a higher ordinal after a scale-down)
          is leaving and its buckets move. A change of port or AE title only
          keeps the owners.

    Raises
    ------
    ValueError
        If there are more gateways than buckets.
    gatewaypool.bucketmap.MapError
        If the gateways are not unique.
    """
    wanted = tuple(gateways)
    if not wanted:
        return None
    if len(wanted) > buckets:
        raise ValueError(f"{len(wanted)} gateways for {buckets} buckets: each needs a bucket")
    if current is None or current.buckets != buckets:
        after = max(current.version if current is not None else 0, version_floor)
        return balanced_map(wanted, buckets=buckets, version=after + 1)
    owners = tuple(rebalance(_owners_by_name(current, wanted), len(wanted)))
    unchanged = (
        wanted == current.gateways
        and owners == current.owners
        and not current.moving
        and current.version >= version_floor
    )
    if unchanged:
        return None
    return BucketMap(
        version=max(current.version, version_floor) + 1,
        buckets=buckets,
        gateways=wanted,
        owners=owners,
    )


def _owners_by_name(current: BucketMap, wanted: Sequence[Gateway]) -> list[int]:
    """Return `current`'s owners as indices into `wanted`; ``>= len(wanted)`` for those leaving.

    For the operator's own maps, where gateway ``i`` is pod ``i``, this is
    the identity on surviving gateways; matching by name keeps a map that
    was reordered by hand from moving buckets needlessly.
    """
    position = {gateway.name: index for index, gateway in enumerate(wanted)}
    translate = [
        position.get(gateway.name, len(wanted) + index)
        for index, gateway in enumerate(current.gateways)
    ]
    return [translate[owner] for owner in current.owners]


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


def parse_published(configmap_data: Mapping[str, str] | None) -> BucketMap | None:
    """Return the published map, or None if there is none or it is unusable.

    See `read_published` for the reason a map is unusable.
    """
    return read_published(configmap_data).bucket_map


def publish(bucket_map: BucketMap) -> dict[str, str]:
    """Return the ``NAME-map`` ConfigMap's data for `bucket_map`.

    The text is canonical (`gatewaypool.bucketmap.dump_map`), so comparing
    it with what the ConfigMap holds tells whether a write is needed.
    """
    return {MAP_KEY: dump_map(bucket_map)}
