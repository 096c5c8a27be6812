"""One pass of the control loop for one GatewayPool: observe, plan, apply, finish.

Level-based, so the same pass serves creation, every spec change, an
operator restart, a deleted child and the periodic drift check. Each step
is a module of its own: :func:`gatewaypool_operator.observe.observe` reads
what the pass decides from, once each; :func:`gatewaypool_operator.plan.plan`
decides, without I/O; :func:`gatewaypool_operator.apply.apply` writes what it
decided, in order; :func:`gatewaypool_operator.plan.finish` turns what the
writes did into Events and the final status.

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

from gatewaypool_operator.apply import apply
from gatewaypool_operator.children.names import DEFAULT_CLUSTER_DOMAIN
from gatewaypool_operator.kubeapply import Cluster
from gatewaypool_operator.observe import observe
from gatewaypool_operator.passdata import Outcome
from gatewaypool_operator.plan import finish, plan

__all__ = ["reconcile"]


def reconcile(
    cluster: Cluster,
    *,
    body: Mapping[str, Any],
    default_router_image: str,
    now: datetime,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
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
