"""One reconcile of a pool at a time, from a fresh read, with its results written.

Two things start a pass: kopf's change handlers (sync functions, run in
kopf's thread pool) and the periodic drift check (:mod:`.resync`, in a
thread of its own). Unchecked, both could reconcile one pool at once from
different snapshots, and the older one could publish an older map or
shrink the StatefulSet back. So every pass goes through :func:`run_pass`:

- it holds the pool's lock (:class:`PoolLocks`, one ``threading.Lock`` per
  pool, kept in kopf's memo) for the whole pass, reads and writes included;
- inside the lock it reads the pool afresh: a pass that waited for the lock
  works from the newest spec, never from the snapshot it was started with;
- the map and the StatefulSet are written conditionally on the versions the
  pass read (:class:`~.kubeapply.ConflictError` on a 409): a writer outside this
  process (a second operator during a peering handover, a person) makes the
  pass start again from a fresh read, at most :data:`MAX_ATTEMPTS` times.

Status, the accepted-spec annotation and Events are written here too, inside
the lock, so a slower pass cannot overwrite a newer status afterwards.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from gatewaypool.contract import API_GROUP as GROUP
from gatewaypool.contract import API_VERSION as VERSION
from gatewaypool.contract import PLURAL
from gatewaypool.strict import format_time
from gatewaypool_operator.children.names import DEFAULT_CLUSTER_DOMAIN
from gatewaypool_operator.events import Event, EventType
from gatewaypool_operator.kubeapply import Cluster, ConflictError
from gatewaypool_operator.metrics import OperatorMetrics
from gatewaypool_operator.passdata import Outcome
from gatewaypool_operator.plan import ACCEPTED_SPEC_ANNOTATION
from gatewaypool_operator.poolstatus import merge_patch
from gatewaypool_operator.reconcile import reconcile

log = logging.getLogger(__name__)


MAX_ATTEMPTS: Final = 5
"""Passes tried when conditional writes keep conflicting; the next trigger retries."""


class PoolLocks:
    """One lock per pool (namespace, name), made on first use."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[tuple[str, str], threading.Lock] = {}

    @contextmanager
    def hold(self, namespace: str, name: str) -> Iterator[None]:
        """Hold the pool's lock: no other pass of this pool runs meanwhile."""
        with self._guard:
            lock = self._locks.setdefault((namespace, name), threading.Lock())
        with lock:
            yield

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted pool's lock (a later pool of the same name makes a new one)."""
        with self._guard:
            lock = self._locks.get((namespace, name))
            if lock is not None and not lock.locked():
                del self._locks[(namespace, name)]


def read_pool(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    """The pool as the API holds it now, or None if it is gone."""
    from kubernetes.client.exceptions import ApiException

    try:
        body: Any = cluster.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(body)


def run_pass(
    cluster: Cluster,
    locks: PoolLocks,
    *,
    namespace: str,
    name: str,
    router_image: str,
    metrics: OperatorMetrics | None = None,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
) -> Outcome | None:
    """Reconcile one pool under its lock and write status, annotation and Events.

    Returns the outcome, or None when the pool is gone or being deleted.

    Raises
    ------
    ConflictError
        If every one of :data:`MAX_ATTEMPTS` passes met a concurrent write.
    """
    with locks.hold(namespace, name):
        for attempt in range(1, MAX_ATTEMPTS + 1):
            body = read_pool(cluster, namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return None
            try:
                outcome = reconcile(
                    cluster,
                    body=body,
                    default_router_image=router_image,
                    now=datetime.now(UTC),
                    cluster_domain=cluster_domain,
                )
            except ConflictError as exc:
                if attempt == MAX_ATTEMPTS:
                    raise
                log.info("%s/%s: %s; reading again (attempt %d)", namespace, name, exc, attempt)
                continue
            write_results(cluster, body, outcome)
            plan = outcome.plan
            if metrics is not None and plan is not None:
                metrics.record(
                    namespace=namespace,
                    pool=name,
                    completed=len(plan.completed),
                    forced=len(plan.forced),
                    moving=plan.moving,
                    oldest_move_seconds=plan.oldest_move_seconds,
                )
            return outcome
    raise AssertionError("unreachable")  # pragma: no cover


def write_results(cluster: Cluster, body: dict[str, Any], outcome: Outcome) -> None:
    """Write a pass's status, accepted spec and Events through the API.

    The status is written only when it differs from the pool's: a write
    with nothing new would still change the pool's resourceVersion and make
    an autoscaler's ``/scale`` write, made at the version it read, conflict.
    """
    metadata = body["metadata"]
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
        level = logging.WARNING if event.type is EventType.WARNING else logging.INFO
        log.log(level, "%s/%s %s: %s", namespace, name, event.reason, event.message)
    changed = [f"{a.kind}/{a.name} {a.action}" for a in outcome.applied if a.action != "unchanged"]
    if changed:
        log.info("%s/%s children: %s", namespace, name, ", ".join(changed))


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
        "type": event.type.value,
        "reason": event.reason.value,
        "message": event.message[:1024],
        "source": {"component": "gatewaypool-operator"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    client.CoreV1Api(cluster.api_client).create_namespaced_event(
        metadata["namespace"], event_body, _preload_content=False
    )
