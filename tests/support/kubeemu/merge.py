"""Strategic merge patch, for built-in kinds, by the schemas' patch strategies.

A list whose schema says ``x-kubernetes-patch-strategy: merge`` is merged:
items of objects matched by ``x-kubernetes-patch-merge-key``, scalars
unioned; any other list is replaced, as are scalars. ``null`` deletes a key.
Directives understood, as the API server's ``strategicpatch`` package reads
them:

- ``$patch: replace`` in an object (replace it whole) or as a list item
  (replace the list with the other items); ``$patch: delete`` in an object
  (remove it) or in a list item (remove the item with that merge key);
  ``$patch: merge`` (the default);
- ``$retainKeys: [...]`` (keep only these keys, where the schema's strategy
  has ``retainKeys``);
- ``$setElementOrder/<list>: [...]`` (the order of a merged list);
- ``$deleteFromPrimitiveList/<list>: [...]`` (remove scalars from a merged list).

Anything else starting with ``$`` is refused with 400, as is a directive
where it cannot apply.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from .errors import error
from .schemas import Schema

__all__ = ["strategic_merge"]

_ORDER: Final = "$setElementOrder/"
_DELETE_FROM: Final = "$deleteFromPrimitiveList/"


class _Deleted:
    """A patch said ``$patch: delete`` for this object."""


_DELETED: Final = _Deleted()


def _bad(message: str) -> Exception:
    return error(400, "BadRequest", f"invalid strategic merge patch: {message}")


def _strip(value: Any) -> Any:
    """A patch value with its directives taken out (what a replace stores)."""
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return _strip_items(value)
    return copy.deepcopy(value)


def _strip_items(items: list[Any]) -> list[Any]:
    return [_strip(v) for v in items if not (isinstance(v, Mapping) and "$patch" in v)]


def strategic_merge(original: Any, patch: Any, schema: Schema) -> Any:
    """``patch`` applied to ``original`` (neither is changed).

    Raises
    ------
    kmock.KubernetesError
        400 for a directive the API server would refuse.
    """
    result = _merge_object(original if isinstance(original, Mapping) else {}, patch, schema)
    if result is _DELETED:
        raise _bad("$patch: delete at the top level")
    return result


def _merge_object(original: Mapping[str, Any], patch: Mapping[str, Any], schema: Schema) -> Any:
    directive = patch.get("$patch", "merge")
    if directive == "replace":
        return _strip(patch)
    if directive == "delete":
        return _DELETED
    if directive != "merge":
        raise _bad(f"unknown $patch value {directive!r}")
    result = copy.deepcopy(dict(original))
    orders: dict[str, list[Any]] = {}
    deletions: dict[str, list[Any]] = {}
    retain: list[str] | None = None
    for key, value in patch.items():
        if key == "$patch":
            continue
        if key == "$retainKeys":
            if not schema.retain_keys or not isinstance(value, list):
                raise _bad("$retainKeys where the schema has no retainKeys strategy")
            retain = [str(k) for k in value]
        elif key.startswith(_ORDER):
            orders[key.removeprefix(_ORDER)] = _as_list(key, value)
        elif key.startswith(_DELETE_FROM):
            deletions[key.removeprefix(_DELETE_FROM)] = _as_list(key, value)
        elif key.startswith("$"):
            raise _bad(f"unknown directive {key!r}")
        elif value is None:
            result.pop(key, None)
        else:
            merged = _merge_value(result.get(key), value, schema.field(key))
            if merged is _DELETED:
                result.pop(key, None)
            else:
                result[key] = merged
    for key, values in deletions.items():
        if isinstance(result.get(key), list):
            result[key] = [item for item in result[key] if item not in values]
    for key, order in orders.items():
        if isinstance(result.get(key), list):
            result[key] = _ordered(result[key], order, schema.field(key))
    if retain is not None:
        result = {key: value for key, value in result.items() if key in retain}
    return result


def _as_list(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(f"{key} must be a list")
    return value


def _merge_value(original: Any, patch: Any, schema: Schema) -> Any:
    if isinstance(patch, Mapping):
        return _merge_object(original if isinstance(original, Mapping) else {}, patch, schema)
    if isinstance(patch, list):
        return _merge_list(original if isinstance(original, list) else [], patch, schema)
    return copy.deepcopy(patch)


def _merge_list(original: list[Any], patch: list[Any], schema: Schema) -> list[Any]:
    directives = [item for item in patch if isinstance(item, Mapping) and "$patch" in item]
    if any(item.get("$patch") == "replace" for item in directives):
        return _strip_items(patch)
    if not schema.patch_merge:
        if directives:
            raise _bad("$patch in a list that is not merged")
        return _strip_items(patch)
    key = schema.patch_merge_key
    if key is None:  # a set of scalars
        return copy.deepcopy(original) + [
            copy.deepcopy(item) for item in patch if item not in original
        ]
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, Mapping) or key not in item:
            raise _bad(f"an item of a list merged by {key!r} lacks it: {item!r}")
        index = next((i for i, old in enumerate(result) if old.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_strip(item))
        else:
            result[index] = _merge_object(result[index], item, schema.items)
    return result


def _ordered(items: list[Any], order: list[Any], schema: Schema) -> list[Any]:
    key = schema.patch_merge_key

    def identity(item: Any) -> Any:
        return item.get(key) if key is not None and isinstance(item, Mapping) else item

    wanted = [identity(entry) for entry in order]
    ranked = sorted(
        (wanted.index(identity(item)) if identity(item) in wanted else len(wanted), position)
        for position, item in enumerate(items)
    )
    return [items[position] for _, position in ranked]
