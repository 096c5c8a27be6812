"""The apply step of a pass: carry out the plan's writes, prune and deletions, in order.

What to write is decided before (:func:`gatewaypool_operator.plan.plan`,
without I/O); how each object is written -- server-side apply, conditional
writes, re-creation of an immutable field, retries -- is
:class:`~gatewaypool_operator.kubeapply.Cluster`'s. What the writes did goes
to :func:`gatewaypool_operator.plan.finish`.
"""

from __future__ import annotations

from gatewaypool_operator.kubeapply import Applied, Cluster, RefusedError
from gatewaypool_operator.passdata import ApplyResult, Plan

__all__ = ["apply"]


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
