"""One pass of the control loop for one GatewayPool: observe, decide, apply.

Level-based, so the same pass serves creation, every spec change, an
operator restart, a deleted child and the periodic drift check. This module
holds the pass's I/O, through :class:`~gatewaypool_operator.kubeapply.Cluster`:
:func:`observe` reads what the pass decides from, once each;
:func:`gatewaypool_operator.plan.plan` decides, without I/O; :func:`apply`
writes what it decided, in order; :func:`gatewaypool_operator.plan.finish`
turns what the writes did into Events and the final status.

The bucket map and the StatefulSet are written conditionally on the
versions read at the start of the pass: if either changed meanwhile,
:class:`~gatewaypool_operator.kubeapply.ConflictError` ends the pass, and the
caller (:mod:`gatewaypool_operator.runner`, which also holds the pool's
lock) re-reads the pool and runs it again. A child the API server refuses
does not stop the others: the pool is ``Degraded`` with the server's
message, and one Warning Event says so (not one per pass).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from gatewaypool_operator import childnames, children
from gatewaypool_operator.kubeapply import Applied, Cluster, RefusedError
from gatewaypool_operator.plan import (
    ACCEPTED_SPEC_ANNOTATION,
    APPLY_REFUSED,
    ApplyResult,
    Observed,
    Outcome,
    Plan,
    finish,
    plan,
)

__all__ = [
    "ACCEPTED_SPEC_ANNOTATION",
    "APPLY_REFUSED",
    "Outcome",
    "apply",
    "observe",
    "reconcile",
]


def reconcile(
    cluster: Cluster,
    *,
    body: Mapping[str, Any],
    default_router_image: str,
    now: datetime,
    cluster_domain: str = childnames.DEFAULT_CLUSTER_DOMAIN,
) -> Outcome:
    """Bring the pool's children, map and status in line with its spec.

    Raises
    ------
    ConflictError
        If the map or the StatefulSet changed since this pass read them.
    """
    observed = observe(cluster, body=body)
    decided = plan(
        observed,
        default_router_image=default_router_image,
        now=now,
        cluster_domain=cluster_domain,
    )
    return finish(decided, apply(cluster, decided))


def observe(cluster: Cluster, *, body: Mapping[str, Any]) -> Observed:
    """Read everything a pass decides from, each object once.

    The pool itself is read by the caller, under the pool's lock, to learn
    whether it is being deleted before anything else is read; `body` is that
    read.

    All optional children are read, whether the spec wants them or not:
    which ones it wants is the plan's decision, made after the reads. The
    price is a second read of each one the spec wants, which
    :meth:`~gatewaypool_operator.kubeapply.Cluster.apply` reads again to
    compare: it cannot take this read as its ``base``, since a conditional
    write of an object others update (the autoscaler's status) would
    conflict again and again.
    """
    metadata = body.get("metadata") or {}
    name = str(metadata["name"])
    namespace = str(metadata["namespace"])
    optional: dict[tuple[str, str], Mapping[str, Any]] = {}
    for kind, child_name in children.optional_children(name):
        live = cluster.read(kind, namespace, child_name)
        if live is not None:
            optional[(kind, child_name)] = live
    return Observed(
        pool=body,
        map_configmap=cluster.read("ConfigMap", namespace, childnames.map_configmap_name(name)),
        statefulset=cluster.read("StatefulSet", namespace, childnames.statefulset_name(name)),
        gateway_pods=cluster.find(
            "Pod", namespace, labels=childnames.selector_labels(name, "gateway")
        ),
        router_pods=cluster.find(
            "Pod", namespace, labels=childnames.selector_labels(name, "router")
        ),
        reports_configmap=cluster.read(
            "ConfigMap", namespace, childnames.routers_configmap_name(name)
        ),
        optional_children=optional,
    )


def apply(cluster: Cluster, decided: Plan) -> ApplyResult:
    """Carry out `decided`'s writes, prune and deletions, in that order.

    A write the API server refuses (any 4xx but a conflict, or a 429 or 5xx
    that outlasts the retries) is recorded and the others go on: one bad
    child must not keep the rest from being repaired.

    Raises
    ------
    ConflictError
        If the map or the StatefulSet changed since the pass read them.
    """
    applied: list[Applied] = []
    refused: list[str] = []
    for write in decided.writes:
        try:
            if write.conditional:
                result = cluster.apply(
                    write.obj,
                    base=write.base,
                    exclusive=write.exclusive,
                    create_only=write.create_only,
                )
            else:
                result = cluster.apply(
                    write.obj, exclusive=write.exclusive, create_only=write.create_only
                )
        except RefusedError as exc:
            refused.append(str(exc))
        else:
            applied.append(result)
    if decided.prune is not None:
        try:
            cluster.merge_patch_data(
                "ConfigMap",
                decided.namespace,
                decided.prune.configmap,
                dict.fromkeys(decided.prune.keys),
            )
        except RefusedError as exc:
            refused.append(str(exc))
    for kind, name in decided.deletes:
        try:
            if cluster.delete(kind, decided.namespace, name):
                applied.append(Applied(kind, name, "deleted"))
        except RefusedError as exc:
            refused.append(str(exc))
    return ApplyResult(applied=tuple(applied), refused=tuple(refused))
