"""Whether applying a desired object would change the live one: decided locally.

The operator writes its children with server-side apply (field manager
``gatewaypool-operator``, forced). An apply that changes nothing is no write
on the API server either, but it still costs a request, and the operator
would post a ``ChildUpdated`` Event for it; so before writing, the operator
asks this module whether the apply would change anything. Pure: no I/O.

The comparison
--------------
An apply of ``desired`` changes the live object exactly when

1. a field ``desired`` sets is absent from the live object or holds another
   value there (a hand edit, another manager's write, a changed spec), or
2. a field the operator's manager owns in the live object (its ``Apply``
   entry of ``metadata.managedFields``) is not in ``desired`` any more: the
   apply would remove it (an env var, a toleration, a resource key the spec
   dropped), or
3. the live object has no ``Apply`` entry of ours at all (made by an older
   operator with create and patch): one apply takes ownership, so that 2.
   works from then on.

Everything else in the live object is ignored: server defaults
(``terminationMessagePath``, ``protocol``, ``sessionAffinity``...), fields of
other managers, status. This is the rule server-side apply itself follows,
so the local decision and the server's agree; comparing whole objects would
see every default as drift, and comparing only desired keys (what the
operator did before) never notices a removed field.

Values compare as the API server stores them: a quantity (under
``resources.requests``/``limits``, ``sizeLimit``) by value, so ``1``,
``"1"`` and ``"1000m"`` are equal and ``1024Mi`` equals ``1Gi``; an empty map
or list in ``desired`` equals an absent one (the server omits empty
collections), and so does an empty string: the core types' string fields
are ``omitempty``, so ``env: [{name: X, value: ""}]`` or a toleration with
``key: ""`` comes back without the field. Compared as present, such a field
would be re-applied, with a ``ChildUpdated`` Event, on every pass forever.
Lists merge as their Kubernetes type says: list-maps by their keys (a
container by ``name``, a container port by ``containerPort`` and ``protocol``;
:data:`LIST_MAP_KEYS`, checked against the real OpenAPI schemas in the unit
tests), other lists are atomic and compare item by item, each item only on
the fields ``desired`` sets (defaults inside atomic lists, such as a PVC
template's ``volumeMode``, are ignored too).

Paths use the ``FieldsV1`` encoding of ``managedFields`` (``f:spec``,
``k:{"name":"gateway"}``, ``v:"x"``), so what the server says the operator
owns and what ``desired`` sets are compared in one currency.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from gatewaypool import quantity

__all__ = [
    "IMMUTABLE_FIELDS",
    "LIST_MAP_KEYS",
    "MANAGER",
    "FieldPath",
    "apply_change",
    "duplicate_key",
    "immutable_change",
    "owned_paths",
    "render",
]

MANAGER: Final = "gatewaypool-operator"
"""The field manager of every apply the operator sends."""

FieldPath = tuple[str, ...]

LIST_MAP_KEYS: Final[Mapping[str, tuple[str, ...]]] = {
    # field name -> the keys that identify an item (x-kubernetes-list-map-keys).
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
    "ownerReferences": ("uid",),
    "hostAliases": ("ip",),
    "resourceClaims": ("name",),
    "schedulingGates": ("name",),
}
"""Lists merged by keys, by field name. ``ports`` depends on where it is (see `_keys`)."""

_CONTAINER_PORT_KEYS: Final = ("containerPort", "protocol")
_SERVICE_PORT_KEYS: Final = ("port", "protocol")
_CONTAINER_LISTS: Final = frozenset({"containers", "initContainers", "ephemeralContainers"})

#: Keys the server fills in when an item leaves them out (a port's protocol is TCP).
_KEY_DEFAULTS: Final[Mapping[str, Any]] = {"protocol": "TCP"}

#: Lists of strings that are sets (x-kubernetes-list-type: set) in what the operator writes.
_SET_LISTS: Final = frozenset({"finalizers"})

IMMUTABLE_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "StatefulSet": ("selector", "serviceName", "volumeClaimTemplates", "podManagementPolicy"),
    "Deployment": ("selector",),
}
"""``spec`` fields the API server refuses to change (422), by kind."""


def owned_paths(live: Mapping[str, Any], *, manager: str = MANAGER) -> set[FieldPath] | None:
    """The fields ``manager`` owns through server-side apply, or None if it never applied.

    Only ``Apply`` entries of the main resource count: what a manager wrote
    with another verb is not removed when it stops applying it.
    """
    entries = (live.get("metadata") or {}).get("managedFields") or []
    found: set[FieldPath] | None = None
    for entry in entries:
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Apply"
            and not entry.get("subresource")
        ):
            found = (found or set()) | _decode(entry.get("fieldsV1") or {}, ())
    return found


def apply_change(
    desired: Mapping[str, Any], live: Mapping[str, Any], *, manager: str = MANAGER
) -> str | None:
    """What applying ``desired`` would change in ``live``, or None if nothing.

    The answer names the first field found, for the log and the Event:
    ``".spec.replicas differs"``, ``".metadata.labels.team removed"``.
    ``apiVersion``, ``kind`` and ``metadata.resourceVersion`` of ``desired``
    are not compared (identity and a write precondition, not content).
    """
    owned = owned_paths(live, manager=manager)
    if owned is None:
        return f"not yet applied by {manager}"
    content = _content(desired)
    path = _first_difference(content, live, ())
    if path is not None:
        return f"{render(path)} differs"
    for owned_path in sorted(owned):
        if not _resolves(content, owned_path):
            return f"{render(owned_path)} removed"
    return None


def immutable_change(desired: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """Which immutable ``spec`` field applying ``desired`` would change, or None.

    Such a change the API server refuses; the operator recreates the object
    instead (see :mod:`gatewaypool_operator.kubeapply`). A field absent from
    ``desired`` but set in ``live`` counts as changed (``storage`` dropped
    from the spec), except where ``live`` holds only what the server defaults.
    """
    fields = IMMUTABLE_FIELDS.get(str(desired.get("kind")), ())
    wanted = desired.get("spec") or {}
    actual = live.get("spec") or {}
    if desired.get("kind") == "Service":
        return _service_immutable_change(wanted, actual)
    for name in fields:
        if name in wanted:
            path = _first_difference(wanted[name], actual.get(name), ("f:spec", f"f:{name}"))
            if path is not None:
                return f"{render(path)} differs"
        elif name in ("volumeClaimTemplates", "selector") and actual.get(name):
            return f".spec.{name} removed"
    return None


def _service_immutable_change(wanted: Mapping[str, Any], actual: Mapping[str, Any]) -> str | None:
    """A Service's fields the API server keeps once set: ``loadBalancerClass`` while the
    type stays LoadBalancer (another type clears it), and the primary IP family.

    The cluster IP and node ports are immutable too, but the operator never
    writes them unless fixed in the spec (a fixed node port may change).
    """
    both_load_balancers = wanted.get("type") == actual.get("type") == "LoadBalancer"
    if both_load_balancers and wanted.get("loadBalancerClass") != actual.get("loadBalancerClass"):
        return ".spec.loadBalancerClass differs"
    families, live_families = wanted.get("ipFamilies") or [], actual.get("ipFamilies") or []
    if families and live_families and families[0] != live_families[0]:
        return ".spec.ipFamilies[0] differs"
    return None


def duplicate_key(obj: Mapping[str, Any]) -> str | None:
    """The first item of a list map in `obj` whose keys an earlier item has, or None.

    Server-side apply refuses such an object outright (500, "duplicate
    entries for key"): an ``env`` name, a container port (``containerPort``
    and ``protocol``), a volume name or a mount path given twice. The answer
    names the field and the key: ``.spec.template.spec.containers[name=gateway].env[name=A]``.
    """
    return _duplicate(_content(obj), ())


def _duplicate(value: Any, path: FieldPath) -> str | None:
    if isinstance(value, Mapping):
        for key, child in value.items():
            found = _duplicate(child, (*path, f"f:{key}"))
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        keys = _keys(path)
        seen: set[str] = set()
        for item in value:
            element = _item_element(item, keys) if keys and _key_of(item, keys) else None
            if element is not None:
                if element in seen:
                    return f"{render((*path, element))} appears twice"
                seen.add(element)
            found = _duplicate(item, (*path, element) if element else path)
            if found is not None:
                return found
    return None


def render(path: FieldPath) -> str:
    """A path as people read it: ``.spec.template.spec.containers[name="gateway"].env``."""
    text = ""
    for element in path:
        kind, body = element[:2], element[2:]
        if kind == "f:":
            text += f".{body}"
        elif kind == "k:":
            key = json.loads(body)
            text += "[" + ",".join(f"{k}={_compact(v)}" for k, v in key.items()) + "]"
        else:
            text += f"[={body}]"
    return text


# --- desired against live ---------------------------------------------------------


def _content(desired: Mapping[str, Any]) -> dict[str, Any]:
    content = {key: value for key, value in desired.items() if key not in ("apiVersion", "kind")}
    metadata = dict(content.get("metadata") or {})
    metadata.pop("resourceVersion", None)
    content["metadata"] = metadata
    return content


def _empty(value: Any) -> bool:
    """Whether the server stores `value` as no value: None, ``{}``, ``[]`` or ``""``."""
    return value is None or value == "" or (isinstance(value, Mapping | list | tuple) and not value)


def _first_difference(
    desired: Any, live: Any, path: FieldPath, *, atomic: bool = False
) -> FieldPath | None:
    """The first path where ``live`` lacks or contradicts ``desired``.

    ``atomic``: inside an atomic list, where every nested list is atomic too.
    """
    if isinstance(desired, Mapping):
        return _mapping_difference(desired, live, path, atomic=atomic)
    if isinstance(desired, list | tuple):
        return _list_difference(desired, live, path, atomic=atomic)
    if desired == live and type(desired) is type(live):
        return None
    if _is_quantity(path):
        try:
            return None if quantity.same(desired, live) else path
        except quantity.QuantityError:
            return path
    return path


def _mapping_difference(
    desired: Mapping[str, Any], live: Any, path: FieldPath, *, atomic: bool
) -> FieldPath | None:
    if live is None and not desired:
        return None
    if not isinstance(live, Mapping):
        return path
    for key, value in desired.items():
        if key not in live or live[key] is None:
            if _empty(value):
                continue
            return (*path, f"f:{key}")
        found = _first_difference(value, live[key], (*path, f"f:{key}"), atomic=atomic)
        if found is not None:
            return found
    return None


def _list_difference(
    desired: Sequence[Any], live: Any, path: FieldPath, *, atomic: bool
) -> FieldPath | None:
    if live is None and not desired:
        return None
    if not isinstance(live, list):
        return path
    keys = () if atomic else _keys(path)
    if keys:  # a map list: each desired item against the live item of its keys
        for item in desired:
            element = _item_element(item, keys)
            match = next((other for other in live if _matches(other, item, keys)), None)
            if match is None:
                return (*path, element)
            found = _first_difference(item, match, (*path, element))
            if found is not None:
                return found
        return None
    if not atomic and _field(path) in _SET_LISTS:
        return None if set(map(_compact, desired)) <= set(map(_compact, live)) else path
    if len(desired) != len(live):
        return path
    for item, other in zip(desired, live, strict=True):
        if _first_difference(item, other, path, atomic=True) is not None:
            return path  # an atomic list is one field
    return None


def _field(path: FieldPath) -> str:
    return path[-1][2:] if path and path[-1].startswith("f:") else ""


def _keys(path: FieldPath) -> tuple[str, ...]:
    """The map keys of the list at ``path``; empty for an atomic list."""
    name = _field(path)
    if name == "ports":
        inside_container = len(path) >= 3 and path[-3][2:] in _CONTAINER_LISTS
        return _CONTAINER_PORT_KEYS if inside_container else _SERVICE_PORT_KEYS
    return LIST_MAP_KEYS.get(name, ())


def _is_quantity(path: FieldPath) -> bool:
    fields = [element[2:] for element in path if element.startswith("f:")]
    if fields and fields[-1] == "sizeLimit":
        return True
    return len(fields) >= 3 and fields[-2] in ("requests", "limits") and fields[-3] == "resources"


def _key_of(item: Any, keys: Sequence[str]) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        return {}
    key = {name: item.get(name, _KEY_DEFAULTS.get(name)) for name in keys}
    return {name: value for name, value in key.items() if value is not None}


def _matches(item: Any, wanted: Any, keys: Sequence[str]) -> bool:
    return bool(_key_of(item, keys)) and _key_of(item, keys) == _key_of(wanted, keys)


def _item_element(item: Any, keys: Sequence[str]) -> str:
    return f"k:{_compact(_key_of(item, keys))}"


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


# --- owned fields against desired -------------------------------------------------


def _decode(fields: Mapping[str, Any], prefix: FieldPath) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    for element, below in fields.items():
        if element == ".":
            paths.add(prefix)
            continue
        path = (*prefix, element)
        if below:
            paths |= _decode(below, path)
        else:
            paths.add(path)
    return paths


def _resolves(value: Any, path: Iterable[str]) -> bool:
    """Whether ``path`` names something in ``value`` (an apply of it keeps that field)."""
    for element in path:
        kind, body = element[:2], element[2:]
        if kind == "f:":
            if not isinstance(value, Mapping) or body not in value:
                return False
            value = value[body]
        elif kind == "k:":
            if not isinstance(value, list | tuple):
                return False
            key = json.loads(body)
            value = next(
                (
                    item
                    for item in value
                    if isinstance(item, Mapping)
                    and all(item.get(k, _KEY_DEFAULTS.get(k)) == v for k, v in key.items())
                ),
                None,
            )
            if value is None:
                return False
        elif kind == "v:":
            if not isinstance(value, list | tuple):
                return False
            wanted = json.loads(body)
            if wanted not in value:
                return False
            value = wanted
        else:
            return False
    return True
