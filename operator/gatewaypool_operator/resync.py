"""The periodic drift check, outside kopf's timers.

kopf puts a finalizer on every object that has a timer, so that it can stop
the timer before the object goes; a pool could then not be deleted while the
operator is down, and a lost finalizer update leaves a pool stuck in
deletion. The drift check needs none of that: every ``interval`` seconds it
lists the pools and runs the same reconcile pass the handlers run, writing
status, annotation and Events through the API itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from gatewaypool_operator.kubeapply import Cluster
from gatewaypool_operator.peering import Peering, is_active
from gatewaypool_operator.reconcile import (
    ACCEPTED_SPEC_ANNOTATION,
    Event,
    reconcile,
)
from gatewaypool_operator.status import format_time, merge_patch

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


def post_event(cluster: Cluster, body: dict[str, Any], event: Event) -> None:
    """A core/v1 Event about the pool, as kopf posts them."""
    from kubernetes import client

    metadata = body["metadata"]
    now = format_time(datetime.now(UTC))
    # A plain dict body: the client sends it as is (typed as CoreV1Event).
    event_body: Any = {
        "metadata": {"generateName": "gatewaypool-", "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GatewayPool",
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata.get("uid"),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:1024],
        "source": {"component": "gatewaypool-operator"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    client.CoreV1Api(cluster.api_client).create_namespaced_event(
        metadata["namespace"], event_body, _preload_content=False
    )


def resync_pool(cluster: Cluster, body: dict[str, Any], *, router_image: str) -> None:
    """One reconcile pass for one pool, its results written through the API."""
    metadata = body["metadata"]
    if metadata.get("deletionTimestamp"):
        return
    outcome = reconcile(
        cluster, body=body, default_router_image=router_image, now=datetime.now(UTC)
    )
    name, namespace = metadata["name"], metadata["namespace"]
    current = body.get("status") or {}
    if merge_patch(old={}, new=outcome.status) != current:
        cluster.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": merge_patch(old=current, new=outcome.status)},
        )
    if outcome.accepted_spec is not None:
        cluster.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"metadata": {"annotations": {ACCEPTED_SPEC_ANNOTATION: outcome.accepted_spec}}},
        )
    for event in outcome.events:
        post_event(cluster, body, event)
        level = logging.WARNING if event.type == "Warning" else logging.INFO
        log.log(level, "%s/%s %s: %s", namespace, name, event.reason, event.message)


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
            try:
                await asyncio.to_thread(resync_pool, cluster, body, router_image=router_image)
            except Exception:
                meta = body.get("metadata") or {}
                log.exception("resync of %s/%s failed", meta.get("namespace"), meta.get("name"))
        log.info("resync: %d pools checked", len(pools))
