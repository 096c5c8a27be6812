"""The OpenAPI schemas that say how the server merges each field.

Built-in kinds use the real schemas shipped inside ``kubernetes-validate``
(``kubernetes-json-schema/v<newest>-local/_definitions.json``); custom
resources use their CRD's ``openAPIV3Schema``. From them come, per field:

- list semantics: ``x-kubernetes-list-type`` (``atomic``, ``set``, ``map``)
  with ``x-kubernetes-list-map-keys``, else ``x-kubernetes-patch-merge-key``
  (a map keyed by it), else atomic -- what server-side apply merges by;
- ``x-kubernetes-map-type: atomic`` (a label selector is replaced whole);
- whether a value is a ``resource.Quantity`` (canonicalized on write).

No table of fields is written here by hand: a field the schema does not know
is treated as the API server treats untyped data (maps merge, lists are
atomic).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any, Final

__all__ = ["Schema", "builtin_schema", "custom_schema"]

_QUANTITY: Final = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_OBJECT_META: Final = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_VERSION_DIR: Final = re.compile(r"v(\d+)\.(\d+)\.(\d+)-local")


@functools.cache
def _definitions() -> Mapping[str, Any]:
    """The newest non-strict schema set shipped in kubernetes-validate."""
    root = resources.files("kubernetes_validate") / "kubernetes-json-schema"
    versions = [
        (tuple(int(part) for part in match.groups()), entry)
        for entry in root.iterdir()
        if (match := _VERSION_DIR.fullmatch(entry.name))
    ]
    _, newest = max(versions, key=lambda pair: pair[0])
    loaded = json.loads((newest / "_definitions.json").read_text(encoding="utf-8"))
    definitions: Mapping[str, Any] = loaded["$defs"]
    return definitions


@functools.cache
def _by_kind() -> Mapping[tuple[str, str], str]:
    """``(apiVersion, kind)`` -> definition name, from ``x-kubernetes-group-version-kind``."""
    index: dict[tuple[str, str], str] = {}
    for name, definition in _definitions().items():
        for gvk in definition.get("x-kubernetes-group-version-kind") or []:
            group, version = gvk.get("group", ""), gvk["version"]
            index[(f"{group}/{version}" if group else version, gvk["kind"])] = name
    return index


class Schema:
    """One node of an OpenAPI schema, ``$ref``s followed.

    An empty node (``Schema({})``) is untyped: dicts under it are maps of
    untyped values, lists atomic.
    """

    __slots__ = ("name", "node")

    def __init__(self, node: Mapping[str, Any], name: str | None = None) -> None:
        # A field's own extensions (``x-kubernetes-list-type`` next to a
        # ``$ref``) apply to it, over those of the referenced type.
        extensions: dict[str, Any] = {}
        while True:
            extensions = {
                **{k: v for k, v in node.items() if k.startswith("x-kubernetes-")},
                **extensions,
            }
            ref = node.get("$ref")
            if ref is None and len(node.get("allOf") or []) == 1:
                ref = node["allOf"][0].get("$ref")
            if not isinstance(ref, str):
                break
            name = ref.rsplit("/", 1)[-1]
            node = _definitions().get(name, {})
        self.node = {**node, **extensions} if extensions else node
        self.name = name

    def __repr__(self) -> str:
        return f"Schema({self.name or sorted(self.node)})"

    @property
    def is_quantity(self) -> bool:
        """A ``resource.Quantity`` (stored in canonical form)."""
        return self.name == _QUANTITY

    @property
    def is_struct(self) -> bool:
        """An object with named fields (their absence is not a value)."""
        return "properties" in self.node

    @property
    def atomic_map(self) -> bool:
        """An object replaced whole by apply (``x-kubernetes-map-type: atomic``)."""
        return self.node.get("x-kubernetes-map-type") == "atomic"

    def field(self, key: str) -> Schema:
        """The schema of one key of an object (untyped if unknown)."""
        properties = self.node.get("properties") or {}
        if key in properties:
            return Schema(properties[key])
        extra = self.node.get("additionalProperties")
        if isinstance(extra, Mapping):
            return Schema(extra)
        return Schema({})

    def is_map_entry(self, key: str) -> bool:
        """Whether ``key`` is an entry of a map (labels, data), not a named field."""
        return key not in (self.node.get("properties") or {})

    @property
    def items(self) -> Schema:
        """The schema of a list's items."""
        items = self.node.get("items")
        return Schema(items) if isinstance(items, Mapping) else Schema({})

    @property
    def list_type(self) -> str:
        """How apply merges this list: ``atomic``, ``set`` or ``map``."""
        declared = self.node.get("x-kubernetes-list-type")
        if declared in {"atomic", "set", "map"}:
            return str(declared)
        if self.node.get("x-kubernetes-patch-merge-key"):
            return "map"
        return "atomic"

    @property
    def map_keys(self) -> tuple[str, ...]:
        """The keys that identify an item of a ``map`` list."""
        keys = self.node.get("x-kubernetes-list-map-keys")
        if keys:
            return tuple(keys)
        merge_key = self.node.get("x-kubernetes-patch-merge-key")
        return (merge_key,) if merge_key else ()


def builtin_schema(api_version: str, kind: str) -> Schema | None:
    """The real schema of a built-in kind, or ``None`` if kubernetes-validate has none."""
    name = _by_kind().get((api_version, kind))
    return Schema({"$ref": f"#/$defs/{name}"}) if name else None


def custom_schema(open_api_v3: Mapping[str, Any] | None) -> Schema:
    """A custom resource's schema from its CRD; ``metadata`` is the real ``ObjectMeta``."""
    node = dict(open_api_v3 or {})
    node["properties"] = {
        **(node.get("properties") or {}),
        "metadata": {"$ref": f"#/$defs/{_OBJECT_META}"},
    }
    return Schema(node)
