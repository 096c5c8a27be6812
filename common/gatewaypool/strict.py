"""The small checks every strict parser of GatewayPool shares.

The bucket map, the router report, the handover state and the pool's spec
and status are each parsed by the one module that owns the format; what
they have in common lives here, written once, so that they agree:

- times: `format_time` writes one form, `parse_time` reads it (and what
  Kubernetes and kopf write);
- integers: `is_int`, which refuses booleans;
- JSON: `refuse_duplicate_keys` and `is_decimal_key`;
- error messages: `show` quotes a value at most `SHOW_LIMIT` characters
  long, `kind_of` names its JSON type. A JSON object is called "an object",
  whether it came from JSON or YAML (which calls it a mapping), because
  Kubernetes and its schemas say "object".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard

__all__ = [
    "SHOW_LIMIT",
    "DuplicateKeyError",
    "format_time",
    "is_decimal_key",
    "is_int",
    "kind_of",
    "parse_time",
    "refuse_duplicate_keys",
    "show",
]

SHOW_LIMIT: Final = 80
"""The most characters `show` quotes of a value."""


def format_time(moment: datetime) -> str:
    """Return `moment` as RFC 3339 in UTC with microseconds: ``2026-03-01T12:00:00.250000Z``.

    Every time GatewayPool writes has this one form. The microseconds keep a
    round trip through `parse_time` exact, which the handover's age
    arithmetic needs; Kubernetes reads the fraction in its own times too
    (events, conditions, ``format: date-time``).

    Raises
    ------
    ValueError
        If `moment` is naive: whose clock it is on cannot be guessed here.
    """
    if moment.tzinfo is None:
        raise ValueError(f"{moment!r} has no time zone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: object) -> datetime | None:
    """Read an RFC 3339 time (``Z`` or an offset, with or without a fraction), or None.

    A time without a time zone is read as UTC, as kopf reads its peering
    records (which older kopf releases wrote without one, from
    ``utcnow()``); every other format we read writes ``Z``, so this is the
    one behaviour all callers can share. Anything that is not such a time, including a
    non-string, gives None, so each caller words its own error.
    """
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def is_int(value: object) -> TypeGuard[int]:
    """Whether `value` is an integer, and not a boolean."""
    # bool is an int subclass; a YAML "yes" must not pass as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def is_decimal_key(key: object) -> TypeGuard[str]:
    """Whether `key` is a JSON object key that writes a number ``>= 0`` canonically.

    ASCII digits only, no sign, no leading zero (``"17"``, ``"0"``; not
    ``"017"``, ``"+1"``, an Arabic-Indic digit): one number has one key, so two keys can
    never name it twice.
    """
    return isinstance(key, str) and key.isascii() and key.isdigit() and str(int(key)) == key


class DuplicateKeyError(ValueError):
    """A JSON object holds one key twice; ``key`` is that key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` for `json.loads` that refuses a key given twice.

    JSON lets the last one silently win, the same trap as a misspelt key.

    Raises
    ------
    DuplicateKeyError
        On the first repeated key.
    """
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def show(value: object) -> str:
    """Quote `value` for an error message: its ``repr``, cut to `SHOW_LIMIT` characters.

    A read-only mapping or a tuple (a frozen spec) is shown as the JSON
    object or list it came from.
    """
    text = repr(_plain(value))
    return text if len(text) <= SHOW_LIMIT else text[: SHOW_LIMIT - 3] + "..."


def kind_of(value: object) -> str:
    """Name `value`'s JSON type as an error message says it: ``"a string"``, ``"null"``."""
    if isinstance(value, Mapping):
        return "an object"
    return {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        tuple: "a list",
    }.get(type(value), type(value).__name__)


def _plain(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
