"""Fields the API server refuses to change: 422 Invalid, worded as the real server words it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import kmock

from .kinds import ResourceKind
from .objects import JSONObject

__all__ = ["check_update"]

#: The only StatefulSet spec fields an update may change (ValidateStatefulSetUpdate).
_STATEFULSET_MUTABLE: Final = (
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
)
_STATEFULSET_MESSAGE: Final = (
    "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', "
    "'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' "
    "are forbidden"
)


def _invalid(kind: ResourceKind, name: str, causes: list[tuple[str, str, str]]) -> Exception:
    """A 422 whose message reads ``StatefulSet.apps "x" is invalid: spec: Forbidden: ...``."""
    qualified = f"{kind.kind}.{kind.group}" if kind.group else kind.kind
    described = "; ".join(f"{field}: {text}" for field, _, text in causes)
    message = f'{qualified} "{name}" is invalid: {described}'
    details = {
        "name": name,
        "group": kind.group,
        "kind": kind.kind,
        "causes": [
            {"reason": reason, "message": text, "field": field} for field, reason, text in causes
        ],
    }
    return kmock.KubernetesError(status=422, reason="Invalid", message=message, details=details)


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def check_update(kind: ResourceKind, old: JSONObject, new: JSONObject) -> None:
    """Refuse an update of an immutable field (call after defaulting).

    Raises
    ------
    kmock.KubernetesError
        422 Invalid.
    """
    name = str(new.get("metadata", {}).get("name", ""))
    before, after = _spec(old), _spec(new)
    causes: list[tuple[str, str, str]] = []
    match (kind.api_version, kind.kind):
        case ("apps/v1", "StatefulSet"):
            fixed_before = {k: v for k, v in before.items() if k not in _STATEFULSET_MUTABLE}
            fixed_after = {k: v for k, v in after.items() if k not in _STATEFULSET_MUTABLE}
            if fixed_before != fixed_after:
                causes.append(("spec", "FieldValueForbidden", f"Forbidden: {_STATEFULSET_MESSAGE}"))
        case ("apps/v1", "Deployment"):
            if before.get("selector") != after.get("selector"):
                causes.append(
                    (
                        "spec.selector",
                        "FieldValueInvalid",
                        f"Invalid value: {after.get('selector')!r}: field is immutable",
                    )
                )
        case ("v1", "Service"):
            old_ip, new_ip = before.get("clusterIP"), after.get("clusterIP")
            if old_ip and new_ip != old_ip:
                causes.append(
                    (
                        "spec.clusterIPs[0]",
                        "FieldValueInvalid",
                        f"Invalid value: [{new_ip!r}]: may not change once set",
                    )
                )
        case _:
            pass
    if causes:
        raise _invalid(kind, name, causes)
