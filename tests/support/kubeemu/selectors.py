"""Label and field selectors for lists and watches (kmock ignores them)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Final

from .errors import error

_LABEL_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_LABEL_VALUE = r"[-A-Za-z0-9_.]*"
_REQUIREMENT = re.compile(
    rf"""\s*(?:
        (?P<set_key>{_LABEL_KEY})\s+(?P<set_op>in|notin)\s*\((?P<set_values>[^)]*)\)
      | (?P<eq_key>{_LABEL_KEY})\s*(?P<eq_op>==|=|!=)\s*(?P<eq_value>{_LABEL_VALUE})
      | !\s*(?P<absent_key>{_LABEL_KEY})
      | (?P<present_key>{_LABEL_KEY})
    )\s*(?:,|$)""",
    re.VERBOSE,
)


@dataclasses.dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        match self.op:
            case "in":
                return self.key in labels and labels[self.key] in self.values
            case "notin":
                return self.key not in labels or labels[self.key] not in self.values
            case "exists":
                return self.key in labels
            case _:
                return self.key not in labels


def _parse_label_selector(text: str) -> list[_Requirement]:
    requirements: list[_Requirement] = []
    position = 0
    text = text.strip()
    while position < len(text):
        match = _REQUIREMENT.match(text, position)
        if match is None or match.end() == position:
            raise error(400, "BadRequest", f"unable to parse labelSelector {text!r}")
        position = match.end()
        if match["set_key"]:
            values = frozenset(v.strip() for v in match["set_values"].split(",") if v.strip())
            requirements.append(_Requirement(match["set_key"], match["set_op"], values))
        elif match["eq_key"]:
            op = "notin" if match["eq_op"] == "!=" else "in"
            requirements.append(_Requirement(match["eq_key"], op, frozenset({match["eq_value"]})))
        elif match["absent_key"]:
            requirements.append(_Requirement(match["absent_key"], "!exists"))
        else:
            requirements.append(_Requirement(match["present_key"], "exists"))
    return requirements


_FIELD_REQUIREMENT = re.compile(r"\s*(?P<field>[A-Za-z.]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^,]*)")
_SELECTABLE_FIELDS: Final = {"metadata.name": "name", "metadata.namespace": "namespace"}


@dataclasses.dataclass(frozen=True)
class Selector:
    """The ``labelSelector`` and ``fieldSelector`` of one list or watch."""

    labels: tuple[_Requirement, ...] = ()
    fields: tuple[tuple[str, bool, str], ...] = ()  # (metadata key, equal?, value)

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> Selector:
        labels = _parse_label_selector(params.get("labelSelector", ""))
        fields: list[tuple[str, bool, str]] = []
        for part in filter(None, params.get("fieldSelector", "").split(",")):
            match = _FIELD_REQUIREMENT.fullmatch(part)
            if match is None or match["field"] not in _SELECTABLE_FIELDS:
                raise error(
                    400,
                    "BadRequest",
                    f"fieldSelector {part!r}: the emulator selects on "
                    f"{sorted(_SELECTABLE_FIELDS)} only",
                )
            fields.append(
                (_SELECTABLE_FIELDS[match["field"]], match["op"] != "!=", match["value"].strip())
            )
        return cls(tuple(labels), tuple(fields))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        metadata = obj.get("metadata") or {}
        labels = metadata.get("labels") or {}
        if not all(requirement.matches(labels) for requirement in self.labels):
            return False
        return all((metadata.get(key) == value) == equal for key, equal, value in self.fields)
