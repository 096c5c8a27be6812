"""The router report: what a router tells the operator, in one bounded wire format.

Each router pod writes one report under its pod name in the pool's
``NAME-routers`` ConfigMap; the operator reads them all to decide when a
moving bucket may change owner and when the gateway StatefulSet may shrink.
This module is the only place that knows the format; the router dumps with
`dump_report`, the operator parses with `parse_report`.

Wire format (JSON, one line, camelCase)::

    {"mapVersion": 7,
     "buckets": 4096,
     "startedAt": "2026-03-01T12:00:00.000000Z",
     "reportedAt": "2026-03-01T12:05:00.250000Z",
     "used": "eJzt...",
     "open": {"4": 2, "3": 1},
     "openTruncated": false,
     "spool": {"instances": 12, "bytes": 6291456, "oldestSeconds": 41.5,
               "refused": 0, "buckets": "eJzt..."}}

- ``mapVersion``: the bucket map version the router routes by; null before
  it applied any. ``buckets``: that map's bucket count (0 before any).
- ``startedAt``: when this router process started. It knows nothing of what
  it routed before, so it counts as active in every moving bucket until
  ``startedAt`` + quietSeconds.
- ``reportedAt``: when the report was written, by the router's clock. All
  ages in the report are relative to it, so the router's clock only matters
  through this one value.
- ``used``: when the router last routed an instance into each bucket that is
  moving in its map, as one 4-bit *age class* per bucket (bucket ``2k`` in
  the high half of byte ``k``), zlib-compressed and base64-encoded. Class 0:
  not used within `HORIZON_SECONDS` (or never since start); class ``c`` in
  1..15: the last use was at least ``AGE_CLASSES[c - 1]`` seconds before
  ``reportedAt``. The router rounds ages *down* to a class, so it may claim a
  more recent use than the real one, never an older one: the operator can
  only wait longer than needed, never too little. The classes include the
  round values people choose for quietSeconds (30 by default), for which the
  wait is exact; for another value it lasts until the next class boundary.
  ``"*"`` instead of the encoding means "every moving bucket was used just
  now": what a router sends when the exact encoding does not fit its budget
  (see below), which delays handovers but never misleads. ``""``: no moving
  bucket used within the horizon.
- ``open``: open upstream associations per gateway index of the applied map
  (only non-zero counts), at most `MAX_OPEN_ENTRIES` entries, those of the
  highest indices; ``openTruncated`` says lower indices were left out. The
  StatefulSet removes the highest ordinals first, so the highest index with
  an open association is exact, and that is what a scale-down needs.
- ``spool`` (optional; absent when the router runs without a spool, which is
  how every report written before the spool reads): what the router's spool
  holds. ``instances`` and ``bytes`` waiting to be forwarded (the refused
  ones not counted), ``oldestSeconds`` the age of the oldest of them at
  ``reportedAt`` (0 when none), ``refused`` the instances a gateway refused
  for good and that are kept aside, and ``buckets`` the set of buckets with
  instances waiting: one bit per bucket (bucket ``8k`` in the high bit of
  byte ``k``), zlib-compressed and base64-encoded like ``used``; ``""`` for
  none, ``"*"`` for "every bucket", what a router sends when the exact set
  does not fit its budget. A bucket in that set is not quiet, whatever
  ``used`` says (`RouterReport.quiet_seconds` is 0 for it): its instances
  must reach its owner before it may change owner.

Size bound. A report is at most `report_size_bound(buckets)` characters:
about 300 for the fixed fields, 560 for ``open``, for ``used`` the base64 of
zlib's worst case for ``ceil(buckets / 2)`` bytes (incompressible input grows
by a few bytes per 16 KiB), and for ``spool`` about 150 for its numbers plus
the same worst case for ``ceil(buckets / 8)`` bytes. With 4096 buckets that
is under 4.6 KB; with the 65536 maximum under 56 KB, so 18 routers' reports
with 253-character pod names take under 1015 KB of the ConfigMap's 1 MiB
(1048576 bytes, keys included), whatever the traffic. `report_budget` gives
the per-router share for more routers (the CRD allows 100); a router whose
exact report would exceed it sends ``"*"`` for ``used``, then if need be for
``spool.buckets`` too, so the whole ConfigMap stays under 1 MiB for any
number of buckets and routers the CRD accepts.

Staleness and safety. A report says what the router did up to
``reportedAt`` and nothing after. When the operator completes a handover on
the strength of a report of age ``a``, a study that *starts* in that bucket
on that router in the last ``a`` seconds before the decision, or before the
router applies the new map, has its first instances on the old owner and the
rest on the new one. No report can close that window (only a router that
refuses or holds instances of a closing bucket could), but its length is in
the operator's hands: it requires every report it relies on to be at most
``freshSeconds`` old (`gatewaypool_operator.handover.decide`), and routers report
every `PENDING_REPORT_SECONDS` while their map has moving buckets, so fresh
reports are always at hand. A stale report therefore never proves a bucket
quiet: the handover waits (and after maxDrainSeconds is forced and counted),
it is not completed on old news. A report much older than the operator's
report timeout excludes its router with an event instead of stalling every
handover; moves completed without that router's word are counted as forced.
Ages are relative to ``reportedAt``; the operator compares ``reportedAt`` with
its own clock only for freshness, so clock skew between nodes (NTP keeps it
well under a second) shortens or lengthens that window by the skew, nothing
else.

Every parse error is a `ReportError` naming the field (``used``,
``open["x"]``) and the offending value.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from gatewaypool.contract import MAX_BUCKETS
from gatewaypool.strict import (
    format_time,
    is_decimal_key,
    is_int,
    kind_of,
    parse_time,
    refuse_duplicate_keys,
    show,
)

__all__ = [
    "AGE_CLASSES",
    "ALL_USED",
    "CONFIGMAP_LIMIT",
    "HORIZON_SECONDS",
    "MAX_OPEN_ENTRIES",
    "PENDING_REPORT_SECONDS",
    "ReportError",
    "RouterReport",
    "SpoolSummary",
    "age_class",
    "build_report",
    "dump_report",
    "parse_report",
    "report_budget",
    "report_size_bound",
]

HORIZON_SECONDS: Final = 3600
"""Uses older than this are not reported: the CRD's largest quietSeconds."""

AGE_CLASSES: Final = (0, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800)
"""Lower bounds, in seconds, of age classes 1..15 of the ``used`` encoding."""

ALL_USED: Final = "*"
"""``used`` value meaning every moving bucket counts as used at ``reportedAt``."""

MAX_OPEN_ENTRIES: Final = 32
"""At most this many gateways in ``open`` (the highest indices)."""

PENDING_REPORT_SECONDS: Final = 2.0
"""How often a router reports while its map has moving buckets (and on every new map)."""

CONFIGMAP_LIMIT: Final = 1048576
"""The API server's limit on a ConfigMap's data, keys and values together."""

_MAX_KEY = 253  # a pod name's length
_FIXED_FIELDS = 300  # keys, punctuation, two timestamps, version, counts, openTruncated
_OPEN_ENTRY = 17  # "65535":2147483647,
_MAX_OPEN_COUNT = 2**31 - 1
_SPOOL_FIELDS = 150  # "spool":{...} with its four numbers at their longest and the keys
_MAX_COUNT = 2**63 - 1
_KEYS = (
    "mapVersion",
    "buckets",
    "startedAt",
    "reportedAt",
    "used",
    "open",
    "openTruncated",
    "spool",
)
_SPOOL_KEYS = ("instances", "bytes", "oldestSeconds", "refused", "buckets")
_REQUIRED = ("mapVersion", "buckets", "startedAt", "reportedAt", "used")


class ReportError(ValueError):
    """A router report that is malformed; the message reads ``"<field>: <problem>"``.

    Attributes
    ----------
    path
        The field as spelled in the wire format (``""`` for the document).
    problem
        What is wrong with it, quoting the offending value.
    """

    def __init__(self, problem: str, *, path: str = "") -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class SpoolSummary:
    """What a router's spool holds at ``reportedAt``; valid by construction.

    Attributes
    ----------
    instances, bytes
        Instances waiting to be forwarded, and their size on disk (refused
        ones not counted).
    oldest_seconds
        The age of the oldest waiting instance (0 when none).
    refused
        Instances a gateway refused for good, kept aside.
    buckets
        The buckets with instances waiting. Ignored when `all_buckets`.
    all_buckets
        Every bucket counts as holding spooled instances (the ``"*"`` form).
    """

    instances: int = 0
    bytes: int = 0
    oldest_seconds: float = 0.0
    refused: int = 0
    buckets: frozenset[int] = frozenset()
    all_buckets: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", frozenset(self.buckets))
        for name, wire in (("instances", "instances"), ("bytes", "bytes"), ("refused", "refused")):
            value = getattr(self, name)
            if not is_int(value) or not 0 <= value <= _MAX_COUNT:
                raise ReportError(f"{show(value)} is not a count", path=f"spool.{wire}")
        age = self.oldest_seconds
        if isinstance(age, bool) or not isinstance(age, int | float) or not 0 <= age < math.inf:
            raise ReportError(f"{show(age)} is not an age in seconds", path="spool.oldestSeconds")
        for bucket in self.buckets:
            if not is_int(bucket) or not 0 <= bucket < MAX_BUCKETS:
                raise ReportError(f"{show(bucket)} is not a bucket", path="spool.buckets")

    def holds(self, bucket: int) -> bool:
        """Whether `bucket` has instances waiting in this spool."""
        return self.all_buckets or bucket in self.buckets


@dataclass(frozen=True, slots=True, repr=False)
class RouterReport:
    """One router's report; valid by construction.

    Attributes
    ----------
    map_version
        The applied map's version; None before the router applied any.
    buckets
        The applied map's bucket count; 0 before any map.
    started_at, reported_at
        Timezone-aware; ``started_at <= reported_at``.
    used
        Bucket → age class (1..15) of its last use; buckets not listed were
        not used within `HORIZON_SECONDS` (or since start). Ignored when
        `all_used`.
    all_used
        Every moving bucket counts as used at `reported_at` (the ``"*"``
        form).
    open_associations
        Gateway index → open upstream associations (positive counts only).
    open_truncated
        Gateways below the lowest index in `open_associations` were left out.
    spool
        What the router's spool holds; None when it runs without one.
    """

    map_version: int | None
    buckets: int
    started_at: datetime
    reported_at: datetime
    used: Mapping[int, int] = field(default_factory=dict, hash=False)
    all_used: bool = False
    open_associations: Mapping[int, int] = field(default_factory=dict, hash=False)
    open_truncated: bool = False
    spool: SpoolSummary | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "used", MappingProxyType(dict(sorted(self.used.items()))))
        object.__setattr__(
            self,
            "open_associations",
            MappingProxyType(dict(sorted(self.open_associations.items()))),
        )
        _check_applied(self.map_version, self.buckets)
        for name in ("started_at", "reported_at"):
            moment = getattr(self, name)
            if not isinstance(moment, datetime) or moment.tzinfo is None:
                raise ReportError(f"{moment!r} is not a timezone-aware time", path=_camel(name))
        if self.reported_at < self.started_at:
            raise ReportError(
                f"{format_time(self.reported_at)} "
                f"is before startedAt {format_time(self.started_at)}",
                path="reportedAt",
            )
        for bucket, cls in self.used.items():
            if not is_int(bucket) or not 0 <= bucket < self.buckets:
                raise ReportError(f"bucket {bucket!r} is not in 0..{self.buckets - 1}", path="used")
            if not is_int(cls) or not 1 <= cls <= len(AGE_CLASSES):
                raise ReportError(f"age class {cls!r} of bucket {bucket} is not 1..15", path="used")
        if len(self.open_associations) > MAX_OPEN_ENTRIES:
            raise ReportError(
                f"{len(self.open_associations)} entries (at most {MAX_OPEN_ENTRIES})", path="open"
            )
        for gateway, count in self.open_associations.items():
            path = f'open["{gateway}"]'
            if not is_int(gateway) or not 0 <= gateway < MAX_BUCKETS:
                raise ReportError(f"{gateway!r} is not a gateway index", path="open")
            if not is_int(count) or not 1 <= count <= _MAX_OPEN_COUNT:
                raise ReportError(f"{count!r} is not a positive association count", path=path)
        if self.spool is not None and not self.spool.all_buckets:
            beyond = [b for b in self.spool.buckets if b >= self.buckets]
            if beyond:
                raise ReportError(
                    f"bucket {min(beyond)} is not in 0..{self.buckets - 1}", path="spool.buckets"
                )

    def __repr__(self) -> str:
        return (
            f"RouterReport(map_version={self.map_version}, "
            f"reported_at={format_time(self.reported_at)}, used={len(self.used)} buckets"
            f"{', all used' if self.all_used else ''}, open={dict(self.open_associations)}"
            f"{'' if self.spool is None else f', spool={self.spool.instances} instances'})"
        )

    def quiet_seconds(self, bucket: int) -> float:
        """Return a lower bound of how long, at `reported_at`, the router had not used `bucket`.

        Counts only the time since the router started (before that it knows
        nothing), is 0 for every bucket in the ``"*"`` form and for a bucket
        with instances in the router's spool, and at most `HORIZON_SECONDS`
        for a bucket not used within it.
        """
        known = (self.reported_at - self.started_at).total_seconds()
        if self.all_used or self.spooled(bucket):
            return 0.0
        cls = self.used.get(bucket)
        age = float(HORIZON_SECONDS) if cls is None else float(AGE_CLASSES[cls - 1])
        return min(age, known)

    def spooled(self, bucket: int) -> bool:
        """Whether the router's spool holds instances of `bucket` (never without a spool)."""
        return self.spool is not None and self.spool.holds(bucket)

    def highest_open_gateway(self) -> int | None:
        """Return the highest gateway index with an open association, or None."""
        return max(self.open_associations, default=None)


def age_class(age_seconds: float) -> int:
    """Return the class of a last use `age_seconds` before the report: 0 if beyond the horizon.

    Rounds down: the class's lower bound is at most the real age.
    """
    if age_seconds >= HORIZON_SECONDS:
        return 0
    cls = 1
    for index, bound in enumerate(AGE_CLASSES):
        if age_seconds >= bound:
            cls = index + 1
    return cls


def build_report(
    *,
    map_version: int | None,
    buckets: int,
    started_at: datetime,
    reported_at: datetime,
    ages: Mapping[int, float],
    open_associations: Mapping[int, int],
    spool: SpoolSummary | None = None,
) -> RouterReport:
    """Return a router's report from what it tracks.

    Parameters
    ----------
    ages
        For every bucket that is moving in the applied map and was used since
        the router started: seconds from that last use to `reported_at`
        (negative values count as 0). Buckets not moving may be left out.
    open_associations
        Gateway index → open upstream associations; zero counts are dropped,
        and only the `MAX_OPEN_ENTRIES` highest indices are kept.
    spool
        What the router's spool holds; None without a spool.
    """
    used = {bucket: cls for bucket, age in ages.items() if (cls := age_class(max(0.0, age)))}
    open_now = sorted((g, n) for g, n in open_associations.items() if n > 0)
    kept = dict(open_now[-MAX_OPEN_ENTRIES:])
    return RouterReport(
        map_version=map_version,
        buckets=buckets,
        started_at=started_at,
        reported_at=reported_at,
        used=used,
        open_associations=kept,
        open_truncated=len(kept) < len(open_now),
        spool=spool,
    )


def report_size_bound(buckets: int) -> int:
    """Return the most characters a report of a map with `buckets` buckets can take."""
    used = _base64_bound(math.ceil(buckets / 2))
    spooled = _base64_bound(math.ceil(buckets / 8))
    return _FIXED_FIELDS + MAX_OPEN_ENTRIES * _OPEN_ENTRY + used + _SPOOL_FIELDS + spooled


def _base64_bound(packed: int) -> int:
    """The most characters the base64 of `packed` bytes zlib-compressed can take."""
    # zlib's compressBound: stored blocks cost 5 bytes per 16 KiB, plus header and trailer.
    compressed = packed + (packed >> 12) + (packed >> 14) + (packed >> 25) + 13
    return 4 * math.ceil(compressed / 3)


def report_budget(routers: int) -> int:
    """Return the characters each of `routers` reports may take so that all fit one ConfigMap.

    Leaves 4 KiB of the limit unused and counts each key at its longest.
    """
    if routers < 1:
        raise ValueError(f"routers: {routers!r} is not a router count (at least 1)")
    return (CONFIGMAP_LIMIT - 4096) // routers - _MAX_KEY


def dump_report(report: RouterReport, *, budget: int | None = None) -> str:
    """Return the report as compact JSON with sorted keys.

    Parameters
    ----------
    budget
        The most characters the text may take (`report_budget` for the
        pool's router count); if the exact report does not fit, ``used`` is
        sent as ``"*"``, and then ``spool.buckets`` too if need be, which is
        safe. None: no limit beyond `report_size_bound`.
    """
    data: dict[str, Any] = {
        "mapVersion": report.map_version,
        "buckets": report.buckets,
        "startedAt": format_time(report.started_at),
        "reportedAt": format_time(report.reported_at),
        "used": ALL_USED if report.all_used else _encode_used(report.used, report.buckets),
        "open": {str(gateway): count for gateway, count in report.open_associations.items()},
        "openTruncated": report.open_truncated,
    }
    if report.spool is not None:
        data["spool"] = _spool_data(report.spool, report.buckets)
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if budget is not None and len(text) > budget and data["used"] != ALL_USED:
        data["used"] = ALL_USED
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    if budget is not None and len(text) > budget and "spool" in data:
        data["spool"]["buckets"] = ALL_USED
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return text


def _spool_data(spool: SpoolSummary, buckets: int) -> dict[str, Any]:
    return {
        "instances": spool.instances,
        "bytes": spool.bytes,
        "oldestSeconds": round(float(spool.oldest_seconds), 3),
        "refused": spool.refused,
        "buckets": ALL_USED if spool.all_buckets else _encode_bits(spool.buckets, buckets),
    }


def parse_report(text: str) -> RouterReport:
    """Parse and check a report written by `dump_report`.

    Raises
    ------
    ReportError
        Naming the field, for anything malformed; also for text far larger
        than any report can be, before decoding it.
    """
    data = _load(text)
    version, buckets = data["mapVersion"], data["buckets"]
    _check_applied(version, buckets)
    started = _time(data["startedAt"], "startedAt")
    reported = _time(data["reportedAt"], "reportedAt")
    raw_used = data["used"]
    if not isinstance(raw_used, str):
        raise ReportError(f"{show(raw_used)} is not a string", path="used")
    all_used = raw_used == ALL_USED
    used = {} if all_used else _decode_used(raw_used, buckets)
    truncated = data.get("openTruncated", False)
    if not isinstance(truncated, bool):
        raise ReportError(f"{show(truncated)} is not a boolean", path="openTruncated")
    return RouterReport(
        map_version=version,
        buckets=buckets,
        started_at=started,
        reported_at=reported,
        used=used,
        all_used=all_used,
        open_associations=_parse_open(data.get("open", {})),
        open_truncated=truncated,
        spool=_parse_spool(data["spool"], buckets) if "spool" in data else None,
    )


def _load(text: str) -> dict[str, Any]:
    """The report's JSON object, its keys checked; bounded before it is decoded."""
    if not isinstance(text, str):
        raise ReportError(f"{type(text).__name__} is not text")
    if len(text) > report_size_bound(MAX_BUCKETS):
        raise ReportError(f"{len(text)} characters, more than any report can take")
    try:
        data = json.loads(text, object_pairs_hook=refuse_duplicate_keys)
    except ValueError as error:
        raise ReportError(f"not JSON ({error})") from None
    if not isinstance(data, dict):
        raise ReportError(f"a report must be an object, not {kind_of(data)}: {show(data)}")
    for key in data:
        if key not in _KEYS:
            raise ReportError(f"{show(key)} is not a known key", path=str(key))
    for key in _REQUIRED:
        if key not in data:
            raise ReportError("required key is missing", path=key)
    return data


def _check_applied(version: object, buckets: object) -> None:
    """``mapVersion`` and ``buckets``: a version and its map's bucket count, or null and 0."""
    if version is not None and (not is_int(version) or version < 0):
        raise ReportError(
            f"{show(version)} is not a map version (integer >= 0 or null)", path="mapVersion"
        )
    if not is_int(buckets) or not 0 <= buckets <= MAX_BUCKETS:
        raise ReportError(
            f"{show(buckets)} is not a bucket count (0..{MAX_BUCKETS})", path="buckets"
        )
    if (version is None) != (buckets == 0):
        raise ReportError(
            f"{buckets} buckets with map version {version!r} "
            "(0 buckets exactly when no map is applied)",
            path="buckets",
        )


# --- encoding ------------------------------------------------------------------


def _encode_used(used: Mapping[int, int], buckets: int) -> str:
    if not used:
        return ""
    packed = bytearray(math.ceil(buckets / 2))
    for bucket, cls in used.items():
        packed[bucket // 2] |= cls << 4 if bucket % 2 == 0 else cls
    return base64.b64encode(zlib.compress(bytes(packed), 9)).decode("ascii")


def _inflate(text: str, size: int, buckets: int, path: str) -> bytes:
    """The `size` bytes that `text` (base64 of zlib) holds, or a `ReportError` at `path`."""
    try:
        compressed = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ReportError(f"{show(text)} is not base64", path=path) from None
    inflate = zlib.decompressobj()
    try:
        # Never inflate more than the map can need: a hostile report cannot balloon.
        packed = inflate.decompress(compressed, size + 1)
    except zlib.error as error:
        raise ReportError(f"not zlib data ({error})", path=path) from None
    if len(packed) != size or not inflate.eof or inflate.unconsumed_tail:
        raise ReportError(
            f"holds {len(packed)}{'+' if inflate.unconsumed_tail else ''} bytes, "
            f"{size} expected for {buckets} buckets",
            path=path,
        )
    return packed


def _decode_used(text: str, buckets: int) -> dict[int, int]:
    if not text:
        return {}
    packed = _inflate(text, math.ceil(buckets / 2), buckets, "used")
    used: dict[int, int] = {}
    for index, byte in enumerate(packed):
        for bucket, cls in ((2 * index, byte >> 4), (2 * index + 1, byte & 0x0F)):
            if cls:
                if bucket >= buckets:
                    raise ReportError(
                        f"age class {cls} for bucket {bucket}, beyond {buckets} buckets",
                        path="used",
                    )
                used[bucket] = cls
    return used


def _encode_bits(members: frozenset[int], buckets: int) -> str:
    if not members:
        return ""
    packed = bytearray(math.ceil(buckets / 8))
    for bucket in members:
        packed[bucket // 8] |= 0x80 >> (bucket % 8)
    return base64.b64encode(zlib.compress(bytes(packed), 9)).decode("ascii")


def _decode_bits(text: str, buckets: int, path: str) -> frozenset[int]:
    if not text:
        return frozenset()
    packed = _inflate(text, math.ceil(buckets / 8), buckets, path)
    members = {
        8 * index + bit
        for index, byte in enumerate(packed)
        for bit in range(8)
        if byte & (0x80 >> bit)
    }
    beyond = [bucket for bucket in members if bucket >= buckets]
    if beyond:
        raise ReportError(f"bucket {min(beyond)} is beyond {buckets} buckets", path=path)
    return frozenset(members)


def _parse_spool(data: object, buckets: int) -> SpoolSummary:
    if not isinstance(data, Mapping):
        raise ReportError(f"{show(data)} is not an object", path="spool")
    for key in data:
        if key not in _SPOOL_KEYS:
            raise ReportError(f"{show(key)} is not a known key", path=f"spool.{key}")
    for key in _SPOOL_KEYS:
        if key not in data:
            raise ReportError("required key is missing", path=f"spool.{key}")
    raw = data["buckets"]
    if not isinstance(raw, str):
        raise ReportError(f"{show(raw)} is not a string", path="spool.buckets")
    every = raw == ALL_USED
    return SpoolSummary(
        instances=data["instances"],
        bytes=data["bytes"],
        oldest_seconds=data["oldestSeconds"],
        refused=data["refused"],
        buckets=frozenset() if every else _decode_bits(raw, buckets, "spool.buckets"),
        all_buckets=every,
    )


def _parse_open(data: object) -> dict[int, int]:
    if not isinstance(data, Mapping):
        raise ReportError(
            f"{show(data)} is not an object that maps gateway indices to counts", path="open"
        )
    result: dict[int, int] = {}
    for key, count in data.items():
        if not is_decimal_key(key):
            raise ReportError(f"key {show(key)} is not a gateway index", path="open")
        if not is_int(count) or not 1 <= count <= _MAX_OPEN_COUNT:
            raise ReportError(f"{show(count)} is not a positive count", path=f'open["{key}"]')
        result[int(key)] = count
    return result


def _time(value: object, path: str) -> datetime:
    moment = parse_time(value)
    if moment is None:
        raise ReportError(f"{show(value)} is not an RFC 3339 time", path=path)
    return moment


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
