"""Pure helpers on stored objects: paths, the ``Scale`` view, patches, one write's result."""

from __future__ import annotations

import copy
import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kmock

from .errors import error
from .kinds import ResourceKind, ScalePaths

JSONObject = dict[str, Any]


def now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_path(obj: Mapping[str, Any], path: Iterable[str]) -> Any:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def set_path(obj: JSONObject, path: tuple[str, ...], value: Any) -> None:
    target = obj
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = value


def render_label_selector(selector: Any) -> str:
    if not isinstance(selector, Mapping):
        return ""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression.get("key"), expression.get("operator")
        values = ",".join(expression.get("values") or [])
        parts.append(
            {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})", "Exists": key}.get(
                operator, f"!{key}"
            )
        )
    return ",".join(parts)


def scale_of(kind: ResourceKind, obj: Mapping[str, Any]) -> JSONObject:
    """The ``autoscaling/v1`` Scale a GET on ``/scale`` answers."""
    paths = kind.scale or ScalePaths()
    selector: Any = None
    if paths.selector_path is not None:
        selector = get_path(obj, paths.selector_path)
        if paths.selector_is_label_selector:
            selector = render_label_selector(selector)
    metadata = obj.get("metadata") or {}
    status: JSONObject = {"replicas": get_path(obj, paths.status_replicas) or 0}
    if selector:
        status["selector"] = selector
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            key: metadata[key]
            for key in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
            if key in metadata
        },
        "spec": {"replicas": get_path(obj, paths.spec_replicas) or 0},
        "status": status,
    }


def without(obj: Mapping[str, Any], *keys: str) -> JSONObject:
    return {key: value for key, value in obj.items() if key not in keys}


def apply_patch(target: Mapping[str, Any], patch: Any, content_type: str) -> JSONObject:
    """Apply a JSON patch (a list) or a JSON merge patch (a dict) to a copy of ``target``.

    kmock's own implementations are used, so the results are the ones kmock
    would store. Anything that fails to apply -- a failed ``test`` op, a
    missing path, a dict patched onto a scalar -- is a 422, as kopf expects
    for its optimistic ``test`` on ``resourceVersion``.
    """
    if not isinstance(patch, list | dict):
        raise error(400, "BadRequest", "the patch is not a JSON object or array")
    if ("json-patch" in content_type) != isinstance(patch, list):
        raise error(400, "BadRequest", f"the patch does not suit {content_type!r}")
    scratch = kmock.Object(copy.deepcopy(dict(target)))
    try:
        # kmock annotates patch() for merge patches, but applies JSON patches (lists) too.
        scratch.patch(cast(Mapping[str, Any], patch))
    except Exception as exc:  # jsonpatch/jsonpointer/kmock raise their own types
        raise error(422, "Invalid", f"the patch does not apply: {exc}") from exc
    return copy.deepcopy(scratch.raw)


@dataclasses.dataclass
class Write:
    """What one write did: the object to answer with, and the watch events to send."""

    answer: JSONObject
    events: list[tuple[kmock.resource, JSONObject]] = dataclasses.field(default_factory=list)
