"""Whether this operator replica is the active one, by kopf's peering records.

kopf pauses its own handlers when a live peer with a higher priority exists,
but the operator's resync loop runs outside kopf's handlers, so it reads the
same records and follows the same rule: work only while no live peer (last
seen within its lifetime) has a higher priority.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from gatewaypool.strict import parse_time

log = logging.getLogger(__name__)

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class Peering:
    """This replica's place in a kopf peering."""

    name: str
    identity: str
    priority: int


def outranked(status: Mapping[str, Any], *, me: Peering, now: datetime) -> bool:
    """Whether a live peer other than ``me`` has a higher priority.

    ``status`` is the peering object's status: identity -> {priority,
    lifetime, lastseen}, as kopf writes it. Unreadable entries are ignored.
    """
    for identity, info in status.items():
        if identity == me.identity or not isinstance(info, Mapping):
            continue
        try:
            priority = int(info.get("priority", 0))
            lifetime = timedelta(seconds=int(info.get("lifetime", 60)))
        except (TypeError, ValueError):
            continue
        lastseen = parse_time(info.get("lastseen"))
        if lastseen is None:
            continue
        if lastseen + lifetime >= now and priority > me.priority:
            return True
    return False


def is_active(custom_api: Any, *, me: Peering | None, namespace: str | None, now: datetime) -> bool:
    """Whether this replica should work: always when standalone (``me`` None).

    Cluster-wide operators share a ClusterKopfPeering; namespaced ones a
    KopfPeering in each namespace, as kopf itself does.
    """
    if me is None:
        return True
    from kubernetes.client.exceptions import ApiException

    try:
        if namespace is None:
            body = custom_api.get_cluster_custom_object(
                PEERING_GROUP, PEERING_VERSION, "clusterkopfpeerings", me.name
            )
        else:
            body = custom_api.get_namespaced_custom_object(
                PEERING_GROUP, PEERING_VERSION, namespace, "kopfpeerings", me.name
            )
    except ApiException as exc:
        if exc.status == 404:
            return True  # no peering object: kopf itself runs unpaused
        raise
    return not outranked(body.get("status") or {}, me=me, now=now)
