"""What the gateway and router pod templates share: security context, resources, spread.

Both the gateway StatefulSet (`gatewaypool_operator.gatewaychildren`) and
the router Deployment (`gatewaypool_operator.routerchildren`) run locked-down
containers with a writable ``/tmp`` only, take their resource requirements
from the spec, and spread over zones and nodes unless the spec says
otherwise; the parts they build alike are built here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from gatewaypool_operator.childnames import selector_labels
from gatewaypool_operator.specfields import thaw

__all__ = [
    "DEFAULT_SPREAD_KEYS",
    "TMP_VOLUME",
    "container_resources",
    "container_security_context",
    "spread_field",
    "topology_spread",
]

TMP_VOLUME: Final = "tmp"
"""The emptyDir volume every pod mounts at ``/tmp``, its only writable folder."""


def container_resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """Resource requirements without empty ``requests``/``limits``.

    The API server drops an empty map (``omitempty``), so one sent would
    never be seen again and would read as drift on every pass.
    """
    return {key: value for key, value in thaw(resources).items() if value}


def container_security_context() -> dict[str, Any]:
    """Return the ``securityContext`` of every container: non-root, read-only, no privileges."""
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


DEFAULT_SPREAD_KEYS: Final = ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
"""Gateways and routers spread over zones, then nodes, unless the spec says otherwise."""


def topology_spread(
    name: str, component: str, constraints: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """Return a component's ``topologySpreadConstraints``.

    Not set in the spec (None): one constraint per key of
    `DEFAULT_SPREAD_KEYS`, ``maxSkew: 1``, ``ScheduleAnyway`` -- a preference
    that never keeps a pod from starting (on a one-node cluster, in a cluster
    without zone labels). Set: the spec's constraints, where one without a
    ``labelSelector`` gets the component's selector (without one it would
    count no pods). ``[]``: none.
    """
    if constraints is None:
        constraints = [
            {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway"}
            for key in DEFAULT_SPREAD_KEYS
        ]
    result = []
    for constraint in constraints:
        item = thaw(constraint)
        item.setdefault("labelSelector", {"matchLabels": selector_labels(name, component)})
        result.append(item)
    return result


def spread_field(
    name: str, component: str, constraints: Sequence[Mapping[str, Any]] | None
) -> dict[str, Any]:
    """Return `topology_spread` as a pod spec's field, or no field at all when it is empty."""
    spread = topology_spread(name, component, constraints)
    return {"topologySpreadConstraints": spread} if spread else {}
