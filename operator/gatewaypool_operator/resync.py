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
import threading
import time
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from gatewaypool.contract import API_GROUP as GROUP
from gatewaypool.contract import API_VERSION as VERSION
from gatewaypool.contract import PLURAL
from gatewaypool_operator.children.names import DEFAULT_CLUSTER_DOMAIN
from gatewaypool_operator.kubeapply import Cluster
from gatewaypool_operator.metrics import OperatorMetrics
from gatewaypool_operator.passdata import Outcome
from gatewaypool_operator.peering import Peering, is_active
from gatewaypool_operator.runner import PoolLocks, run_pass

log = logging.getLogger(__name__)


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


#: While a pool is mid-change (buckets moving, gateways starting), it is passed
#: again this soon: a handover advances only on passes, and routers report
#: every 2 s meanwhile (`gatewaypool.reports.PENDING_REPORT_SECONDS`).
PENDING_SECONDS = 2.0


class Schedule:
    """When each pool is next due for a pass (monotonic seconds); thread-safe.

    Kopf's handlers and the resync both run passes; each records here when
    the pool wants the next one: soon while it is mid-change, at the drift
    check's interval otherwise.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._due: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def after(self, key: tuple[str, str], outcome: Outcome | None) -> None:
        """Record a pass's outcome: when the pool is due next (None: it is gone)."""
        with self._lock:
            if outcome is None:
                self._due.pop(key, None)
            else:
                delay = PENDING_SECONDS if outcome.pending else self.interval
                self._due[key] = time.monotonic() + min(delay, self.interval)

    def due(self, now: float) -> list[tuple[str, str]]:
        with self._lock:
            return [key for key, moment in self._due.items() if moment <= now]

    def forget_all_but(self, keys: Collection[tuple[str, str]]) -> None:
        with self._lock:
            for key in [k for k in self._due if k not in keys]:
                del self._due[key]


async def resync_forever(
    cluster: Cluster,
    *,
    namespaces: Sequence[str],
    interval: float,
    router_image: str,
    locks: PoolLocks,
    schedule: Schedule,
    peering: Peering | None = None,
    metrics: OperatorMetrics | None = None,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> None:
    """Pass every pool every ``interval`` seconds, and pools mid-change every 2 s.

    Errors are logged, never fatal. With peering, only while this replica is
    the active one (see :mod:`gatewaypool_operator.peering`).
    """
    next_listing = 0.0
    while True:
        # The loop's tick (a schedule, not a wait for a condition).
        await asyncio.sleep(min(1.0, interval))
        now = time.monotonic()
        targets = schedule.due(now)
        listing = now >= next_listing
        if not targets and not listing:
            continue
        try:
            scope = await asyncio.to_thread(
                active_namespaces, cluster, namespaces=namespaces, peering=peering
            )
            if scope == []:
                log.debug("resync: standing by, a peer with a higher priority is active")
                continue
            if listing:
                pools = await asyncio.to_thread(list_pools, cluster, scope or ())
                keys = [
                    (str(p["metadata"]["namespace"]), str(p["metadata"]["name"]))
                    for p in pools
                    if not (p.get("metadata") or {}).get("deletionTimestamp")
                ]
                schedule.forget_all_but(keys)
                targets = keys
                next_listing = now + interval
        except Exception:
            log.exception("resync: cannot list pools")
            continue
        for namespace, name in targets:
            if scope is not None and namespace not in scope:
                continue
            try:
                outcome = await asyncio.to_thread(
                    run_pass,
                    cluster,
                    locks,
                    namespace=namespace,
                    name=name,
                    router_image=router_image,
                    metrics=metrics,
                    cluster_domain=cluster_domain,
                )
            except Exception:
                log.exception("resync of %s/%s failed", namespace, name)
                schedule.after((namespace, name), None)
                continue
            schedule.after((namespace, name), outcome)
        if listing:
            log.info("resync: %d pools checked", len(targets))
