"""Server-side apply and the ``managedFields`` it keeps.

:func:`apply` merges an applied configuration into the live object the way
the API server does (structured-merge-diff): list items matched by their
list-map keys, sets unioned, atomic lists and maps replaced; it refuses to
change a field another manager owns with a different value (409 Conflict,
naming the manager and the field) unless forced, which takes the field over;
and it removes what the same manager applied before and leaves out now,
unless another manager owns it too (then only the ownership goes).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Callable, Mapping
from typing import Any, Final

from . import fieldpath
from .errors import ApiError
from .fieldpath import FieldPath
from .schemas import Schema

__all__ = ["ManagedEntry", "apply", "managed_view", "merge_applied"]

JSONObject = dict[str, Any]

#: Metadata the field manager never tracks (set by the server, or identity).
_UNTRACKED_METADATA: Final = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
)


@dataclasses.dataclass
class ManagedEntry:
    """One ``metadata.managedFields`` entry."""

    manager: str
    operation: str  # "Apply" or "Update"
    api_version: str
    time: str
    fields: set[FieldPath]
    subresource: str | None = None

    @classmethod
    def read(cls, raw: Mapping[str, Any]) -> ManagedEntry:
        return cls(
            manager=str(raw.get("manager", "")),
            operation=str(raw.get("operation", "Update")),
            api_version=str(raw.get("apiVersion", "")),
            time=str(raw.get("time", "")),
            fields=fieldpath.decode(raw.get("fieldsV1") or {}),
            subresource=raw.get("subresource"),
        )

    def write(self) -> JSONObject:
        raw: JSONObject = {
            "manager": self.manager,
            "operation": self.operation,
            "apiVersion": self.api_version,
            "time": self.time,
            "fieldsType": "FieldsV1",
            "fieldsV1": fieldpath.encode(self.fields),
        }
        if self.subresource:
            raw["subresource"] = self.subresource
        return raw

    def same_writer(self, manager: str, operation: str, subresource: str | None) -> bool:
        return (self.manager, self.operation, self.subresource) == (
            manager,
            operation,
            subresource,
        )


def now() -> str:
    """A managed-fields entry's time: the server's clock, to the second."""
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _read_entries(obj: Mapping[str, Any] | None) -> list[ManagedEntry]:
    raw = ((obj or {}).get("metadata") or {}).get("managedFields") or []
    return [ManagedEntry.read(entry) for entry in raw if isinstance(entry, Mapping)]


def managed_view(
    obj: Mapping[str, Any] | None, *, subresource: str | None, status_apart: bool
) -> Any:
    """The part of an object managed fields are about.

    Identity and server-set metadata are left out; so is ``status`` for a
    write to the main resource of a kind whose status is a subresource, and
    everything but ``status`` for a ``/status`` write.
    """
    if obj is None:
        return {}
    view = {k: copy.deepcopy(v) for k, v in obj.items() if k not in {"apiVersion", "kind"}}
    if subresource == "status":
        return {"status": view["status"]} if "status" in view else {}
    if status_apart:
        view.pop("status", None)
    metadata = view.get("metadata")
    if isinstance(metadata, Mapping):
        trimmed = {k: v for k, v in metadata.items() if k not in _UNTRACKED_METADATA}
        if trimmed:
            view["metadata"] = trimmed
        else:
            view.pop("metadata")
    return view


def merge_applied(live: Any, applied: Any, schema: Schema) -> Any:
    """``applied`` merged into ``live`` as apply merges: by list type and map type."""
    if isinstance(applied, Mapping) and isinstance(live, Mapping) and not schema.atomic_map:
        merged = dict(copy.deepcopy(live))
        for key, value in applied.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = merge_applied(live.get(key), value, schema.field(key))
        return merged
    if isinstance(applied, list) and isinstance(live, list) and schema.list_type != "atomic":
        result = copy.deepcopy(live)
        position = {fieldpath.item_element(item, schema): i for i, item in enumerate(result)}
        for item in applied:
            element = fieldpath.item_element(item, schema)
            if element in position:
                index = position[element]
                result[index] = merge_applied(result[index], item, schema.items)
            else:
                position[element] = len(result)
                result.append(copy.deepcopy(item))
        return result
    return copy.deepcopy(applied)


def _conflict(conflicts: Mapping[str, tuple[str, set[FieldPath]]]) -> ApiError:
    count = sum(len(paths) for _, paths in conflicts.values())
    lines: list[str] = []
    causes: list[JSONObject] = []
    for manager, (api_version, paths) in conflicts.items():
        rendered = sorted(fieldpath.render(path) for path in paths)
        if count == 1:
            lines.append(f'conflict with "{manager}" using {api_version}: {rendered[0]}')
        else:
            lines.append(f'conflicts with "{manager}" using {api_version}:')
            lines.extend(f"- {field}" for field in rendered)
        causes.extend(
            {
                "reason": "FieldManagerConflict",
                "message": f'conflict with "{manager}" using {api_version}',
                "field": field,
            }
            for field in rendered
        )
    plural = "conflict" if count == 1 else "conflicts"
    message = f"Apply failed with {count} {plural}: " + "\n".join(lines)
    return ApiError(409, "Conflict", message, {"causes": causes})


def apply(
    live: JSONObject | None,
    applied: JSONObject,
    schema: Schema,
    *,
    manager: str,
    force: bool,
    api_version: str,
    subresource: str | None,
    status_apart: bool,
    finish: Callable[[JSONObject], JSONObject],
) -> JSONObject:
    """The object after applying ``applied`` as ``manager``, with its managed fields.

    Parameters
    ----------
    live
        The stored object, or ``None`` when apply creates it.
    finish
        What the server does to any written object (defaults, quantities,
        keeping server-set fields); run on the merged object before comparing.

    Raises
    ------
    ApiError
        409 Conflict for fields other managers own with other values.
    """
    entries = _read_entries(live)
    base: JSONObject = copy.deepcopy(live) if live is not None else {}

    def view(obj: Mapping[str, Any] | None) -> Any:
        return managed_view(obj, subresource=subresource, status_apart=status_apart)

    claimed = fieldpath.field_set(view(applied), schema)
    merged = finish(merge_applied(base, applied, schema))
    changed, _ = fieldpath.compare(view(live), view(merged), schema)

    mine = next((e for e in entries if e.same_writer(manager, "Apply", subresource)), None)
    others = [e for e in entries if e is not mine]
    conflicts: dict[str, tuple[str, set[FieldPath]]] = {}
    for entry in others:
        taken = entry.fields & changed
        if taken and entry.manager != manager:
            conflicts[entry.manager] = (entry.api_version, taken)
    if conflicts and not force:
        raise _conflict(conflicts)
    for entry in others:
        entry.fields -= changed

    # What this manager applied before and leaves out now goes, unless shared.
    if mine is not None:
        kept_by_others: set[FieldPath] = set().union(*(e.fields for e in others))
        dropped = sorted(mine.fields - claimed, key=len)
        for path in dropped:
            shared = any(owned[: len(path)] == path for owned in kept_by_others)
            if not shared:
                fieldpath.remove(merged, path, schema)
        merged = finish(merged)

    _, removed = fieldpath.compare(view(live), view(merged), schema)
    for entry in others:
        entry.fields -= removed
    unchanged = view(live) == view(merged)
    stamp = mine.time if mine is not None and unchanged and mine.fields == claimed else now()
    new_entry = ManagedEntry(manager, "Apply", api_version, stamp, claimed, subresource)
    result_entries = [new_entry if e is mine else e for e in entries if e is mine or e.fields]
    if mine is None:
        result_entries.append(new_entry)
    merged.setdefault("metadata", {})["managedFields"] = [e.write() for e in result_entries]
    return merged
