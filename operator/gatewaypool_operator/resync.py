"""The periodic drift check, outside kopf's timers.

kopf puts a finalizer on every object that has a timer, so that it can stop
the timer before the object goes; a pool could then not be deleted while the
operator is down, and a lost finalizer update leaves a pool stuck in
deletion. The drift check needs none of that: every ``interval`` seconds it
lists the pools and runs the same reconcile pass the handlers run
(:func:`gatewaypool_operator.runner.run_pass`: under the pool's lock, from a
fresh read of the pool), writing status, annotation and Events through the
API itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gatewaypool_operator.kubeapply import Cluster
from gatewaypool_operator.peering import Peering, is_active
from gatewaypool_operator.runner import PoolLocks, run_pass

log = logging.getLogger(__name__)

GROUP = "gatewaypool.io"
VERSION = "v1alpha1"
PLURAL = "gatewaypools"


def list_pools(cluster: Cluster, namespaces: Sequence[str]) -> list[dict[str, Any]]:
    """Every pool in the watched namespaces (all when ``namespaces`` is empty)."""
    if not namespaces:
        listed: Any = cluster.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        return list(listed.get("items") or [])
    pools: list[dict[str, Any]] = []
    for namespace in namespaces:
        found: Any = cluster.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        pools.extend(found.get("items") or [])
    return pools


def active_namespaces(
    cluster: Cluster, *, namespaces: Sequence[str], peering: Peering | None
) -> list[str] | None:
    """The namespaces this replica may work in: None for all, [] for none (standing by)."""
    now = datetime.now(UTC)
    if not namespaces:
        return None if is_active(cluster.custom, me=peering, namespace=None, now=now) else []
    return [ns for ns in namespaces if is_active(cluster.custom, me=peering, namespace=ns, now=now)]


async def resync_forever(
    cluster: Cluster,
    *,
    namespaces: Sequence[str],
    interval: float,
    router_image: str,
    locks: PoolLocks,
    peering: Peering | None = None,
) -> None:
    """Every ``interval`` seconds, reconcile every pool; errors are logged, never fatal.

    With peering, only while this replica is the active one (see
    :mod:`gatewaypool_operator.peering`).
    """
    while True:
        await asyncio.sleep(interval)  # the schedule itself, not a wait for a condition
        try:
            scope = await asyncio.to_thread(
                active_namespaces, cluster, namespaces=namespaces, peering=peering
            )
            if scope == []:
                log.debug("resync: standing by, a peer with a higher priority is active")
                continue
            pools = await asyncio.to_thread(list_pools, cluster, scope or ())
        except Exception:
            log.exception("resync: cannot list pools")
            continue
        for body in pools:
            meta = body.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                continue
            try:
                await asyncio.to_thread(
                    run_pass,
                    cluster,
                    locks,
                    namespace=str(meta["namespace"]),
                    name=str(meta["name"]),
                    router_image=router_image,
                )
            except Exception:
                log.exception("resync of %s/%s failed", meta.get("namespace"), meta.get("name"))
        log.info("resync: %d pools checked", len(pools))
