"""What reads the raw spec: the field-reader class, `SpecError` and the value checks.

`SpecObject` wraps one mapping of a GatewayPool's ``spec`` with its field
path, and reads each field checked and defaulted: wrong types, unknown
fields and out-of-range values become a `SpecError` that names the field as
a user writes it in ``kubectl edit``. The checks of single values (AE
titles, DNS names, label keys and values, quantities) and the frozen form of
free-form fields (`thaw` undoes it) live here too, beside the readers that
use them. The section readers are in `gatewaypool_operator.spec.parse` and
`gatewaypool_operator.spec.pod`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final

from gatewaypool.contract import ae_title_problem
from gatewaypool.strict import is_int, kind_of, show

__all__ = [
    "DNS_LABEL",
    "QUANTITY",
    "SpecError",
    "SpecObject",
    "check_ae_title",
    "check_subdomain",
    "is_qualified_name",
    "thaw",
]

QUANTITY: Final = re.compile(
    r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))?$"
)
"""A Kubernetes quantity (``10Gi``, ``500m``, ``1e3``), sign allowed: callers refuse ``-``."""
DNS_LABEL: Final = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
"""An RFC 1035 label (a letter first), as Service names need."""

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


class SpecError(ValueError):
    """A GatewayPool spec the operator refuses.

    ``str(error)`` reads ``"<field path>: <value> <problem>"``, e.g.
    ``"spec.replicas: 5000 exceeds spec.buckets (4096)"``, or
    ``"<field path>: <problem>"`` when the field is missing.

    Parameters
    ----------
    field_path
        The field as written in the resource, from ``spec`` down
        (``spec.gateway.storage.size``, ``spec.gateway.env[2].name``).
    value
        The offending value, or `SpecError.MISSING` for a missing field.
    problem
        What is wrong, phrased to follow the value.
    """

    MISSING: Final = object()
    """Stands for the value of a required field that is absent."""

    def __init__(self, field_path: str, value: object, problem: str) -> None:
        if value is SpecError.MISSING:
            message = f"{field_path}: {problem}"
        else:
            message = f"{field_path}: {show(value)} {problem}"
        super().__init__(message)
        self.field_path = field_path
        self.value = value
        self.problem = problem


def thaw(value: Any) -> Any:
    """Return a frozen value as plain, mutable ``dict``\\ s and ``list``\\ s.

    The spec keeps free-form fields (``env``, ``resources``, ``affinity``,
    ...) read-only; a Kubernetes object built from them needs plain JSON
    types, and a fresh copy each time so that the object can be changed
    without touching the spec.
    """
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value


# --- field readers ------------------------------------------------------------


class SpecObject:
    """One mapping of the spec, its path, and readers that check and default its fields.

    Each reader takes a field's key and returns its value checked, or the
    default when the field is absent or null (as the API server treats an
    explicit null); anything else raises `SpecError` with the field's path
    (`path`). `keys` refuses fields the section does not know; `child` and
    the list readers wrap nested mappings in a `SpecObject` of their own.

    Parameters
    ----------
    data
        The mapping; anything else is refused.
    path
        Its field path, from ``spec`` down (``spec.gateway``).
    keys
        If given, the only fields `data` may hold.
    """

    def __init__(self, data: object, path: str, *, keys: Sequence[str] | None = None) -> None:
        if not isinstance(data, Mapping):
            raise SpecError(path, data, f"is not an object ({kind_of(data)})")
        for key in data:
            if not isinstance(key, str):
                raise SpecError(path, key, "is not a field name (a string)")
        self.data: Mapping[str, Any] = data
        self._path = path
        if keys is not None:
            self.keys(*keys)

    def path(self, key: str) -> str:
        return f"{self._path}.{key}"

    def keys(self, *known: str) -> None:
        for key in self.data:
            if key not in known:
                raise SpecError(
                    self.path(key),
                    self.data[key],
                    f"is set, but {self._path} has no field {key!r} "
                    f"(its fields: {', '.join(known)})",
                )

    def _get(self, key: str) -> Any:
        # An explicit null is "not set", as the API server treats it.
        return self.data.get(key)

    def child(self, key: str, *, required: bool = False, optional: bool = False) -> Any:
        value = self._get(key)
        if value is None:
            if required:
                raise SpecError(self.path(key), SpecError.MISSING, "is required")
            if optional:
                return None
            value = {}
        return SpecObject(value, self.path(key))

    def optional_integer(self, key: str, *, low: int, high: int | None) -> int | None:
        """The integer at `key` in its range, or None when it is not set."""
        if self._get(key) is None:
            return None
        return self.integer(key, default=0, low=low, high=high)

    def integer(self, key: str, *, default: int, low: int, high: int | None) -> int:
        value = self._get(key)
        if value is None:
            return default
        if not is_int(value):
            raise SpecError(self.path(key), value, f"is not an integer ({kind_of(value)})")
        if value < low:
            raise SpecError(self.path(key), value, f"is less than {low}")
        if high is not None and value > high:
            raise SpecError(self.path(key), value, f"is more than {high}")
        return int(value)

    def string(self, key: str, *, default: str | None) -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                raise SpecError(self.path(key), SpecError.MISSING, "is required")
            return default
        if not isinstance(value, str):
            raise SpecError(self.path(key), value, f"is not a string ({kind_of(value)})")
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(self.path(key), value, f"is not a boolean ({kind_of(value)})")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.string(key, default=default)
        if value not in choices:
            raise SpecError(self.path(key), value, f"is not one of {', '.join(choices)}")
        return value

    def ae_title(self, key: str, *, default: str) -> str:
        value = self.string(key, default=default)
        check_ae_title(self.path(key), value)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise SpecError(self.path(key), value, f"is not a list of strings ({kind_of(value)})")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise SpecError(f"{self.path(key)}[{index}]", item, "is not a string")
        return tuple(value)

    def objects(self, key: str) -> tuple[Mapping[str, Any], ...]:
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise SpecError(self.path(key), value, f"is not a list of objects ({kind_of(value)})")
        result = []
        for index, item in enumerate(value):
            result.append(SpecObject(item, f"{self.path(key)}[{index}]").frozen())
        return tuple(result)

    def free_object(self, key: str) -> Mapping[str, Any]:
        value = self._get(key)
        if value is None:
            return MappingProxyType({})
        return SpecObject(value, self.path(key)).frozen()

    def string_map(self, key: str, *, values: str) -> Mapping[str, str]:
        """Read a map of string to string; keys are qualified names, as labels need."""
        value = self._get(key)
        if value is None:
            return MappingProxyType({})
        section = SpecObject(value, self.path(key))
        for name, item in section.data.items():
            item_path = f"{self.path(key)}[{name!r}]"
            if not isinstance(item, str):
                raise SpecError(item_path, item, f"is not a string ({kind_of(item)})")
            _check_qualified_name(self.path(key), name)
            if values == "label" and not (item == "" or _is_label_name(item)):
                raise SpecError(
                    item_path,
                    item,
                    "is not a label value (up to 63 letters, digits, '-', '_', '.'; "
                    "alphanumeric at both ends)",
                )
        return section.frozen()

    def frozen(self) -> Mapping[str, Any]:
        frozen: Mapping[str, Any] = _freeze(self.data)
        return frozen


# --- value checks -------------------------------------------------------------


def check_ae_title(path: str, value: str) -> None:
    """Refuse `value`, at field `path`, unless it is an AE title by the shared contract's rule."""
    problem = ae_title_problem(value)
    if problem is not None:
        raise SpecError(path, value, f"is not an AE title ({problem})")


def check_subdomain(path: str, value: str) -> None:
    """Refuse `value`, at field `path`, unless it is a DNS subdomain, as object names must be."""
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise SpecError(path, value, "is not a DNS subdomain (lower-case, as object names are)")


def is_qualified_name(value: str) -> bool:
    """Whether `value` is a qualified name, as label keys and ``loadBalancerClass`` are:
    an optional DNS-subdomain prefix and ``/``, then a name of up to 63 characters."""
    prefix, slash, name = value.rpartition("/")
    return not (
        slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))
    ) and _is_label_name(name)


def _check_qualified_name(path: str, key: str) -> None:
    if not is_qualified_name(key):
        raise SpecError(
            path,
            key,
            "is not a valid key (an optional DNS-subdomain prefix and '/', then up to 63 "
            "letters, digits, '-', '_', '.'; alphanumeric at both ends)",
        )


def _is_label_name(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_NAME.match(value))


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value
