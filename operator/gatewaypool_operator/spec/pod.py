"""Readers of the pod-level parts of a spec: pod template, scheduling, image, env, resources.

``spec.gateway.podTemplate`` (labels, annotations, node selector,
tolerations, affinity, priority class, service account, topology spread)
and the container fields the gateway and router sections share (``image``,
``env``, ``resources``, ``topologySpreadConstraints``): free-form
Kubernetes fields, kept frozen and checked as far as the API server would
refuse them, so that a bad value is reported against the pool's field rather
than as a StatefulSet the API server rejects. Called by the section readers
of `gatewaypool_operator.spec.parse`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from gatewaypool.strict import is_int, kind_of
from gatewaypool_operator.spec.fields import (
    QUANTITY,
    SpecError,
    SpecObject,
    check_subdomain,
    thaw,
)
from gatewaypool_operator.spec.types import PodTemplateSpec

__all__ = [
    "RESERVED_LABELS",
    "env",
    "image",
    "pod_template",
    "resources",
    "spread",
]

RESERVED_LABELS: Final = frozenset(
    {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/component",
    }
)
"""Label keys the operator sets on every child; a pod template may not override them,
since the selectors of the StatefulSet, Services, NetworkPolicy and PDB rely on them."""

_RESOURCE_KEYS: Final = ("limits", "requests", "claims")
_TOLERATION_KEYS: Final = ("key", "operator", "value", "effect", "tolerationSeconds")
_TOLERATION_OPERATORS: Final = ("Exists", "Equal")
_TAINT_EFFECTS: Final = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
_AFFINITY_KEYS: Final = ("nodeAffinity", "podAffinity", "podAntiAffinity")
_SPREAD_KEYS: Final = (
    "maxSkew",
    "topologyKey",
    "whenUnsatisfiable",
    "labelSelector",
    "minDomains",
    "nodeAffinityPolicy",
    "nodeTaintsPolicy",
    "matchLabelKeys",
)
_WHEN_UNSATISFIABLE: Final = ("DoNotSchedule", "ScheduleAnyway")


def pod_template(section: SpecObject, *, with_service_account: bool = True) -> PodTemplateSpec:
    """``spec.gateway.podTemplate`` or ``spec.router.podTemplate``.

    Its labels may not override `RESERVED_LABELS`. ``with_service_account``
    False (the router's) refuses ``serviceAccountName``: routers run as the
    account whose Role lets them read their map.
    """
    section.keys(
        "labels",
        "annotations",
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        *(["serviceAccountName"] if with_service_account else []),
        "topologySpreadConstraints",
    )
    labels = section.string_map("labels", values="label")
    for key in labels:
        if key in RESERVED_LABELS:
            raise SpecError(
                f"{section.path('labels')}[{key!r}]",
                labels[key],
                "would override a label the pool's selectors rely on (set by the operator)",
            )
    priority_class = section.string("priorityClassName", default="")
    if priority_class:
        check_subdomain(section.path("priorityClassName"), priority_class)
    service_account = section.string("serviceAccountName", default="")
    if service_account:
        check_subdomain(section.path("serviceAccountName"), service_account)
    return PodTemplateSpec(
        labels=labels,
        annotations=section.string_map("annotations", values="any"),
        node_selector=section.string_map("nodeSelector", values="label"),
        tolerations=_tolerations(section),
        affinity=_affinity(section),
        priority_class_name=priority_class,
        service_account_name=service_account,
        topology_spread_constraints=spread(section),
    )


def _tolerations(section: SpecObject) -> tuple[Mapping[str, Any], ...]:
    tolerations = section.objects("tolerations")
    for index, toleration in enumerate(tolerations):
        item = SpecObject(toleration, f"{section.path('tolerations')}[{index}]")
        item.keys(*_TOLERATION_KEYS)
        operator = item.choice("operator", _TOLERATION_OPERATORS, "Equal")
        item.choice("effect", _TAINT_EFFECTS, "")
        item.string("key", default="")
        item.string("value", default="")
        if operator == "Exists" and item.data.get("value"):
            raise SpecError(item.path("value"), item.data["value"], "must be empty with Exists")
        if item.data.get("tolerationSeconds") is not None:
            item.integer("tolerationSeconds", default=0, low=-(2**63), high=2**63 - 1)
    return tolerations


def _affinity(section: SpecObject) -> Mapping[str, Any]:
    affinity = section.free_object("affinity")
    SpecObject(affinity, section.path("affinity")).keys(*_AFFINITY_KEYS)
    for key, value in affinity.items():
        if not isinstance(value, Mapping):
            raise SpecError(f"{section.path('affinity')}.{key}", value, "is not an object")
    return affinity


def spread(section: SpecObject) -> tuple[Mapping[str, Any], ...] | None:
    """``topologySpreadConstraints``: None when not set (the default spread applies)."""
    if section.data.get("topologySpreadConstraints") is None:
        return None
    constraints = section.objects("topologySpreadConstraints")
    seen: set[tuple[str, str]] = set()
    for index, constraint in enumerate(constraints):
        item = SpecObject(constraint, f"{section.path('topologySpreadConstraints')}[{index}]")
        item.keys(*_SPREAD_KEYS)
        if item.data.get("maxSkew") is None:
            raise SpecError(item.path("maxSkew"), SpecError.MISSING, "is required")
        item.integer("maxSkew", default=1, low=1, high=None)
        key = item.string("topologyKey", default=None)
        if not key:
            raise SpecError(item.path("topologyKey"), key, "is empty")
        if item.data.get("whenUnsatisfiable") is None:
            raise SpecError(item.path("whenUnsatisfiable"), SpecError.MISSING, "is required")
        when = item.choice("whenUnsatisfiable", _WHEN_UNSATISFIABLE, "ScheduleAnyway")
        if (key, when) in seen:
            raise SpecError(
                item.path("topologyKey"),
                key,
                f"appears twice with whenUnsatisfiable {when} (the pair must be unique)",
            )
        seen.add((key, when))
        if item.data.get("labelSelector") is not None:
            item.child("labelSelector")
    return constraints


def image(section: SpecObject, key: str, *, default: str | None) -> str:
    """An image reference at `key`; `default` None makes it required (and not empty)."""
    image = section.string(key, default=default)
    if default is None and not image:
        raise SpecError(section.path(key), image, "is empty (an image reference is required)")
    if any(char.isspace() for char in image):
        raise SpecError(section.path(key), image, "is not an image reference (whitespace)")
    return image


def env(section: SpecObject) -> tuple[Mapping[str, Any], ...]:
    """``env``: variables with a name, each once, and a string ``value`` (a YAML number is refused).

    A container's ``env`` is a list map keyed by name: server-side apply of a
    StatefulSet with one name twice fails (500, "duplicate entries for key").
    """
    env = section.objects("env")
    seen: dict[str, int] = {}
    for index, variable in enumerate(env):
        path = f"{section.path('env')}[{index}].name"
        name = variable.get("name")
        if name is None:
            raise SpecError(path, SpecError.MISSING, "is required (every variable has a name)")
        if not isinstance(name, str) or not name:
            raise SpecError(path, name, "is not a variable name (a non-empty string)")
        if name in seen:
            raise SpecError(
                path, name, f"is env[{seen[name]}].name too (each variable name at most once)"
            )
        seen[name] = index
        value = variable.get("value")
        if value is not None and not isinstance(value, str):
            # A YAML number here is the usual slip; the StatefulSet would be refused.
            raise SpecError(
                f"{section.path('env')}[{index}].value",
                value,
                f'is not a string ({kind_of(value)}; quote it: "{value}")',
            )
        source = variable.get("valueFrom")
        if source is not None and not isinstance(source, Mapping):
            raise SpecError(f"{section.path('env')}[{index}].valueFrom", source, "is not an object")
    return env


def resources(section: SpecObject, key: str) -> Mapping[str, Any]:
    """Resource requirements at `key`: ``limits`` and ``requests`` of non-negative quantities."""
    resources = section.free_object(key)
    path = section.path(key)
    for name, value in resources.items():
        if name not in _RESOURCE_KEYS:
            raise SpecError(
                f"{path}.{name}",
                value,
                f"is not a known field (expected {', '.join(_RESOURCE_KEYS)})",
            )
        if name == "claims":
            if value:
                raise SpecError(
                    f"{path}.{name}",
                    thaw(value),
                    "must be empty: a container's claims name the pod's resourceClaims, "
                    "which a GatewayPool does not set (the API server would refuse such "
                    "pods, or drop the field)",
                )
            continue
        if not isinstance(value, Mapping):
            raise SpecError(
                f"{path}.{name}", value, "is not an object that maps resources to quantities"
            )
        for resource, quantity in value.items():
            if is_int(quantity) or isinstance(quantity, float):
                ok = math.isfinite(quantity) and quantity >= 0
            else:
                ok = (
                    isinstance(quantity, str)
                    and bool(QUANTITY.match(quantity))
                    and not quantity.startswith("-")
                )
            if not ok:
                raise SpecError(
                    f"{path}.{name}[{resource!r}]",
                    quantity,
                    "is not a quantity (e.g. 500m, 1Gi)",
                )
    return resources
