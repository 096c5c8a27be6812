"""What the handover remembers between passes, and its text beside the map.

`HandoverState` is all `gatewaypool_operator.handover.decide.plan_handover` needs
besides what it observes; the operator stores `dump_state`'s text under
`STATE_KEY` in the ``NAME-map`` ConfigMap, in the same update as the map.
`parse_state` names the field of a malformed state, which the caller treats
as missing (safe: every moving bucket then counts as started now).
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, TypeGuard

from gatewaypool.strict import format_time, is_int, parse_time, show

__all__ = [
    "MAX_BATCHES",
    "STATE_KEY",
    "HandoverState",
    "MoveBatch",
    "StateError",
    "dump_state",
    "parse_state",
]

STATE_KEY: Final = "handover.json"
"""The key of `HandoverState` in the ``NAME-map`` ConfigMap, beside ``map.json``."""

MAX_BATCHES: Final = 8
"""At most this many move records; older ones merge (conservatively) beyond it."""


class StateError(ValueError):
    """A stored `HandoverState` that is malformed; names the field."""


@dataclass(frozen=True, slots=True)
class MoveBatch:
    """Buckets that started moving together: marked in `version` at `started_at`."""

    version: int
    started_at: datetime
    buckets: frozenset[int]


@dataclass(frozen=True, slots=True)
class HandoverState:
    """What the operator must remember across passes, stored beside the map.

    Attributes
    ----------
    batches
        The moves under way, by the version that marked them; at most
        `MAX_BATCHES`.
    span, span_since
        One more than the highest owner index of the published map, and the
        first version with that value: a router on `span_since` or newer
        sends to no gateway at or above `span`.
    excluded
        Routers excluded at the last pass (to post the Event once).
    routers
        The router pods that existed at the last pass, to notice one that is
        gone even if it never reported.
    hold_until
        No move completes quietly before this: a router pod went away, and
        whatever study it was receiving may go on through another router,
        which has not seen that bucket in use yet. Like a router that
        started, one that left counts as active in every bucket for
        ``quietSeconds``.
    """

    batches: tuple[MoveBatch, ...] = ()
    span: int = 0
    span_since: int = 0
    excluded: frozenset[str] = field(default_factory=frozenset)
    routers: frozenset[str] = field(default_factory=frozenset)
    hold_until: datetime | None = None


def dump_state(state: HandoverState, *, buckets: int) -> str:
    """Return `state` as compact, canonical JSON (bucket sets as compressed bitmaps).

    With 65536 buckets a batch takes at most about 11 KB, so the state stays
    under 100 KB next to a map of about 400 KB.
    """
    data = {
        "batches": [
            {
                "version": batch.version,
                "startedAt": format_time(batch.started_at),
                "buckets": _encode_set(batch.buckets, buckets),
            }
            for batch in state.batches
        ],
        "span": state.span,
        "spanSince": state.span_since,
        "excluded": sorted(state.excluded),
        "routers": sorted(state.routers),
        "holdUntil": format_time(state.hold_until) if state.hold_until else None,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def parse_state(text: str, *, buckets: int) -> HandoverState:
    """Parse `dump_state`'s text.

    Raises
    ------
    StateError
        Naming the field, if anything is malformed.
    """
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as error:
        raise StateError(f"not JSON ({error})") from None
    if not isinstance(data, dict):
        raise StateError("the handover state must be an object")
    batches = []
    raw_batches = data.get("batches")
    if not isinstance(raw_batches, list):
        raise StateError("batches: not a list")
    for index, raw in enumerate(raw_batches):
        path = f"batches[{index}]"
        if not isinstance(raw, dict):
            raise StateError(f"{path}: not an object")
        version = raw.get("version")
        if not _is_count(version):
            raise StateError(f"{path}.version: {show(version)} is not a version")
        started = parse_time(raw.get("startedAt"))
        if started is None:
            raise StateError(f"{path}.startedAt: {show(raw.get('startedAt'))} is not a time")
        batches.append(
            MoveBatch(
                version=version,
                started_at=started,
                buckets=_decode_set(raw.get("buckets"), buckets, f"{path}.buckets"),
            )
        )
    span, since, excluded = data.get("span"), data.get("spanSince"), data.get("excluded")
    if not _is_count(span):
        raise StateError(f"span: {show(span)} is not a count")
    if not _is_count(since):
        raise StateError(f"spanSince: {show(since)} is not a version")
    if not isinstance(excluded, list) or not all(isinstance(name, str) for name in excluded):
        raise StateError(f"excluded: {show(excluded)} is not a list of names")
    routers, raw_hold = data.get("routers"), data.get("holdUntil")
    if not isinstance(routers, list) or not all(isinstance(name, str) for name in routers):
        raise StateError(f"routers: {show(routers)} is not a list of names")
    hold = parse_time(raw_hold)
    if raw_hold is not None and hold is None:
        raise StateError(f"holdUntil: {show(raw_hold)} is not a time")
    return HandoverState(tuple(batches), span, since, frozenset(excluded), frozenset(routers), hold)


def _encode_set(members: frozenset[int], buckets: int) -> str:
    bitmap = bytearray(math.ceil(buckets / 8))
    for bucket in members:
        bitmap[bucket // 8] |= 1 << (bucket % 8)
    return base64.b64encode(zlib.compress(bytes(bitmap), 9)).decode("ascii")


def _decode_set(text: object, buckets: int, path: str) -> frozenset[int]:
    if not isinstance(text, str):
        raise StateError(f"{path}: {show(text)} is not a string")
    size = math.ceil(buckets / 8)
    try:
        inflate = zlib.decompressobj()
        bitmap = inflate.decompress(base64.b64decode(text, validate=True), size + 1)
    except (ValueError, zlib.error) as error:
        raise StateError(f"{path}: not a compressed bitmap ({error})") from None
    if len(bitmap) != size:
        raise StateError(f"{path}: {len(bitmap)} bytes, {size} expected")
    members = frozenset(
        8 * index + bit for index, byte in enumerate(bitmap) for bit in range(8) if byte >> bit & 1
    )
    if any(bucket >= buckets for bucket in members):
        raise StateError(f"{path}: names a bucket beyond {buckets}")
    return members


def _is_count(value: object) -> TypeGuard[int]:
    return is_int(value) and value >= 0
