"""Field sets, as server-side apply tracks ownership in ``metadata.managedFields``.

A path is a tuple of elements in the ``FieldsV1`` encoding: ``f:<field>``
for a named field or map entry, ``k:{"name":"gw"}`` for an item of a
``map`` list (its keys as compact JSON, sorted), ``v:"x"`` for an item of a
``set`` list. An atomic list or map is one leaf. :func:`encode` gives the
nested ``fieldsV1`` object (``"."`` marks a path that is owned and also has
owned children); :func:`decode` reads it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .defaults import key_defaults
from .schemas import Schema

__all__ = [
    "FieldPath",
    "compare",
    "decode",
    "duplicate_entries",
    "encode",
    "field_set",
    "item_element",
    "remove",
    "render",
]

FieldPath = tuple[str, ...]


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _is_leaf(value: Any, schema: Schema) -> bool:
    if isinstance(value, Mapping):
        return schema.atomic_map
    if isinstance(value, list):
        return schema.list_type == "atomic"
    return True


def item_element(item: Any, schema: Schema) -> str:
    """The path element of one item of a ``map`` or ``set`` list (``schema`` is the list's).

    A map key left out takes its server default (a port without ``protocol``
    is the ``TCP`` one), as the API server matches them.
    """
    if schema.list_type == "set" or not isinstance(item, Mapping):
        return f"v:{_compact(item)}"
    defaults = key_defaults(schema.items.name)
    key = {name: item.get(name, defaults.get(name)) for name in schema.map_keys}
    return f"k:{_compact({name: value for name, value in key.items() if value is not None})}"


def _children(value: Any, schema: Schema) -> Iterable[tuple[str, Any, Schema, bool]]:
    """(element, child value, child schema, is an entry rather than a named field)."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            yield f"f:{key}", child, schema.field(key), schema.is_map_entry(key)
    elif isinstance(value, list):
        for item in value:
            yield item_element(item, schema), item, schema.items, True


def field_set(value: Any, schema: Schema, prefix: FieldPath = ()) -> set[FieldPath]:
    """The fields a value sets: what an applied configuration claims.

    Leaves, list items and map entries are members; a named field is a member
    only when it is empty or null (it has no leaves to own).
    """
    if prefix and _is_leaf(value, schema):
        return {prefix}
    paths: set[FieldPath] = set()
    for element, child, child_schema, entry in _children(value, schema):
        path = (*prefix, element)
        paths |= field_set(child, child_schema, path)
        if entry or child is None or child == {}:
            paths.add(path)
    return paths


def _index(value: Any, schema: Schema) -> dict[str, tuple[Any, Schema, bool]]:
    return {element: (child, s, entry) for element, child, s, entry in _children(value, schema)}


def compare(
    old: Any, new: Any, schema: Schema, prefix: FieldPath = ()
) -> tuple[set[FieldPath], set[FieldPath]]:
    """The fields a write set or changed, and the fields it removed.

    Parameters
    ----------
    old, new
        The object before and after (with what managed fields ignore taken out).
    """
    changed: set[FieldPath] = set()
    removed: set[FieldPath] = set()
    if old == new:
        return changed, removed
    same_shape = isinstance(old, Mapping) == isinstance(new, Mapping) and isinstance(
        old, list
    ) == isinstance(new, list)
    if prefix and (not same_shape or _is_leaf(new, schema) or _is_leaf(old, schema)):
        changed.add(prefix)
        return changed, removed
    before, after = _index(old, schema), _index(new, schema)
    for element in before.keys() | after.keys():
        path = (*prefix, element)
        if element not in before:
            child, child_schema, entry = after[element]
            changed |= field_set(child, child_schema, path)
            if entry or not child or not child_schema.is_struct:
                changed.add(path)  # a new item, map or list is owned itself
        elif element not in after:
            child, child_schema, entry = before[element]
            removed |= field_set(child, child_schema, path)
            removed.add(path)
        else:
            more_changed, more_removed = compare(
                before[element][0], after[element][0], after[element][1], path
            )
            changed |= more_changed
            removed |= more_removed
    return changed, removed


def remove(obj: Any, path: FieldPath, schema: Schema) -> None:
    """Remove the field at ``path`` from ``obj`` (in place), and containers it empties.

    A missing path is no error: a parent may have gone first.
    """
    trail: list[tuple[Any, Any]] = []  # (container, key or index)
    value, current = obj, schema
    for element in path:
        if isinstance(value, Mapping) and element.startswith("f:"):
            key: Any = element[2:]
            if key not in value:
                return
            trail.append((value, key))
            value, current = value[key], current.field(key)
        elif isinstance(value, list):
            index = next(
                (i for i, item in enumerate(value) if item_element(item, current) == element),
                None,
            )
            if index is None:
                return
            trail.append((value, index))
            value, current = value[index], current.items
        else:
            return
    while trail:
        container, key = trail.pop()
        del container[key]
        if container or not trail:
            return


def encode(paths: Iterable[FieldPath]) -> dict[str, Any]:
    """The ``fieldsV1`` object of a field set."""
    tree: dict[str, Any] = {}
    members: list[dict[str, Any]] = []
    for path in sorted(paths):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
        members.append(node)
    for node in members:
        if node:
            node["."] = {}
    return tree


def decode(fields: Mapping[str, Any], prefix: FieldPath = ()) -> set[FieldPath]:
    """The field set a ``fieldsV1`` object holds."""
    paths: set[FieldPath] = set()
    for element, below in fields.items():
        if element == ".":
            paths.add(prefix)
            continue
        path = (*prefix, element)
        if below:
            paths |= decode(below, path)
        else:
            paths.add(path)
    return paths


def duplicate_entries(value: Any, schema: Schema, prefix: FieldPath = ()) -> str | None:
    """The first ``map`` list holding two items of one key, as the server words it, or None.

    Server-side apply cannot build its typed object from such a
    configuration and answers 500: ``.spec.template.spec.containers[name="gw"].env:
    duplicate entries for key [name="A"]``.
    """
    if isinstance(value, list) and schema.list_type in {"map", "set"}:
        seen: set[str] = set()
        for item in value:
            element = item_element(item, schema)
            if element in seen:
                key = element[2:]
                if element.startswith("k:"):
                    pairs = json.loads(key).items()
                    key = ",".join(f"{name}={_compact(v)}" for name, v in pairs)
                    return f"{render(prefix)}: duplicate entries for key [{key}]"
                return f"{render(prefix)}: duplicate entries for value {key}"
            seen.add(element)
    if isinstance(value, Mapping | list) and not _is_leaf(value, schema):
        for element, child, child_schema, _entry in _children(value, schema):
            found = duplicate_entries(child, child_schema, (*prefix, element))
            if found is not None:
                return found
    return None


def render(path: FieldPath) -> str:
    """A path as the API server writes it in a conflict: ``.spec.ports[port=80,protocol="TCP"]``."""
    text = ""
    for element in path:
        kind, body = element[:2], element[2:]
        if kind == "f:":
            text += f".{body}"
        elif kind == "k:":
            key = json.loads(body)
            text += "[" + ",".join(f"{name}={_compact(v)}" for name, v in key.items()) + "]"
        else:
            text += f"[={body}]"
    return text
