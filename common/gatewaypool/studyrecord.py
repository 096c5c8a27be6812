"""A router's record of one study: where its instances went, on which map, how it ended.

Each router keeps such a record of the studies it routed (bounded, see
``gatewaypool_router.studyrecorder``) and serves it at ``GET
/studies/{StudyInstanceUID}``; ``gatewaypool locate`` reads it from every
router and joins it with the map. This module owns the format both sides
share, with its strict parser, and the merge of a replica's workers'
records into one.

Wire format (JSON)::

    {"studyInstanceUID": "1.2.826.0.1.3680043.8.498.1",
     "seen": true,
     "bucket": 17,
     "gateways": [
       {"gateway": "gw-0", "instances": 48,
        "firstAt": "2026-12-07T23:01:02.250000Z", "lastAt": "2026-12-07T23:01:04.000000Z",
        "mapVersions": [3, 4],
        "acknowledged": 47, "spooled": 0, "held": 1, "failed": 1,
        "failures": [{"status": "0xA702", "count": 1}],
        "spoolDelivered": 0, "spoolRefused": 0}]}

One entry per gateway the study's instances were routed to (``gateway`` is
null for instances that failed before any gateway was chosen, with no map
loaded). ``acknowledged`` counts instances the gateway answered with success
or a warning, ``spooled`` those answered Success from the spool, ``failed``
those answered a failure status (by status in ``failures``); ``held`` counts
instances held while their bucket was closing, whatever their outcome.
``spoolDelivered`` and ``spoolRefused`` count what the router's spool later
did with spooled instances of the study: delivered to this gateway, or
refused by it for good (kept aside on the router's volume); the gateway is
the one the spool sent them to, so a gateway may appear with no
``instances`` of its own. A study not seen has ``"seen": false``, no bucket
and no gateways.

Only the UID identifies a study here: no patient attribute is ever kept.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from gatewaypool.contract import study_uid_problem
from gatewaypool.strict import format_time, is_int, kind_of, parse_time, show

__all__ = [
    "OUTCOMES",
    "SPOOL_OUTCOMES",
    "GatewayUse",
    "RecordError",
    "StudyEntry",
    "dump_entry",
    "merge_entries",
    "parse_entry",
]

OUTCOMES: Final = ("acknowledged", "spooled", "failed")
"""How an instance ended, as counted per gateway."""

_ENTRY_KEYS: Final = frozenset({"studyInstanceUID", "seen", "bucket", "gateways"})
#: What the spool did later with spooled instances, counted per gateway it sent them to.
SPOOL_OUTCOMES: Final = ("spoolDelivered", "spoolRefused")
_USE_KEYS: Final = frozenset(
    {
        "gateway",
        "instances",
        "firstAt",
        "lastAt",
        "mapVersions",
        "held",
        "failures",
        *OUTCOMES,
        *SPOOL_OUTCOMES,
    }
)


class RecordError(ValueError):
    """A study record that is malformed; the message names the field."""


@dataclass(slots=True)
class GatewayUse:
    """What one router sent one gateway of one study (times are Unix seconds)."""

    gateway: str | None
    instances: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    map_versions: set[int] = field(default_factory=set)
    acknowledged: int = 0
    spooled: int = 0
    held: int = 0
    #: Failure status -> instances answered with it.
    failures: dict[int, int] = field(default_factory=dict)
    #: Spooled instances the spool later delivered to this gateway.
    spool_delivered: int = 0
    #: Spooled instances this gateway refused for good (kept aside in the spool).
    spool_refused: int = 0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def events(self) -> int:
        """Instances answered to senders, and spooled ones the spool settled here."""
        return self.instances + self.spool_delivered + self.spool_refused

    def add(self, other: GatewayUse) -> None:
        """Count `other` (the same gateway, seen by another process) into this one."""
        if other.events:
            self.first_at = min(self.first_at, other.first_at) if self.events else other.first_at
            self.last_at = max(self.last_at, other.last_at)
        self.spool_delivered += other.spool_delivered
        self.spool_refused += other.spool_refused
        self.instances += other.instances
        self.map_versions |= other.map_versions
        self.acknowledged += other.acknowledged
        self.spooled += other.spooled
        self.held += other.held
        for status, count in other.failures.items():
            self.failures[status] = self.failures.get(status, 0) + count


@dataclass(slots=True)
class StudyEntry:
    """One study's record: the bucket it falls in, and its use of each gateway."""

    study_uid: str
    bucket: int | None = None
    uses: dict[str | None, GatewayUse] = field(default_factory=dict)

    @property
    def seen(self) -> bool:
        return bool(self.uses)


def merge_entries(study_uid: str, entries: Iterable[StudyEntry | None]) -> StudyEntry:
    """One record of `study_uid` over several workers' (None: a worker that never saw it)."""
    merged = StudyEntry(study_uid)
    for entry in entries:
        if entry is None:
            continue
        if entry.bucket is not None:
            merged.bucket = entry.bucket
        for name, use in entry.uses.items():
            into = merged.uses.setdefault(name, GatewayUse(name))
            into.add(use)
    return merged


def dump_entry(entry: StudyEntry) -> dict[str, Any]:
    """Return `entry` as the JSON object served (gateways by their first instance)."""
    return {
        "studyInstanceUID": entry.study_uid,
        "seen": entry.seen,
        "bucket": entry.bucket,
        "gateways": [
            {
                "gateway": use.gateway,
                "instances": use.instances,
                "firstAt": _time_text(use.first_at),
                "lastAt": _time_text(use.last_at),
                "mapVersions": sorted(use.map_versions),
                "acknowledged": use.acknowledged,
                "spooled": use.spooled,
                "held": use.held,
                "failed": use.failed,
                "failures": [
                    {"status": f"0x{status:04X}", "count": count}
                    for status, count in sorted(use.failures.items())
                ],
                "spoolDelivered": use.spool_delivered,
                "spoolRefused": use.spool_refused,
            }
            for use in sorted(entry.uses.values(), key=lambda u: (u.first_at, u.gateway or ""))
        ],
    }


def parse_entry(data: object) -> StudyEntry:
    """Read `dump_entry`'s object (or its JSON text) back; strict.

    Raises
    ------
    RecordError
        Naming the field, if anything is malformed.
    """
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise RecordError(f"not JSON: {exc}") from None
    top = _object(data, "", _ENTRY_KEYS)
    uid = top.get("studyInstanceUID")
    if not isinstance(uid, str) or study_uid_problem(uid) is not None:
        raise RecordError(f"studyInstanceUID: {show(uid)} is not a StudyInstanceUID")
    bucket = top.get("bucket")
    if bucket is not None and not (is_int(bucket) and bucket >= 0):
        raise RecordError(f"bucket: {show(bucket)} is not a bucket number")
    gateways = top.get("gateways", [])
    if not isinstance(gateways, list):
        raise RecordError(f"gateways: {kind_of(gateways)}, not a list")
    entry = StudyEntry(uid, bucket=bucket)
    for index, item in enumerate(gateways):
        use = _parse_use(item, f"gateways[{index}]")
        if use.gateway in entry.uses:
            raise RecordError(f"gateways[{index}].gateway: {show(use.gateway)} listed twice")
        entry.uses[use.gateway] = use
    if top.get("seen", entry.seen) is not entry.seen:
        raise RecordError(f"seen: {show(top.get('seen'))} contradicts the gateways listed")
    return entry


def _parse_use(data: object, path: str) -> GatewayUse:
    item = _object(data, path, _USE_KEYS)
    name = item.get("gateway")
    if name is not None and not (isinstance(name, str) and name):
        raise RecordError(f"{path}.gateway: {show(name)} is not a gateway name")
    counts = {}
    for key in ("instances", "held", "failed", *OUTCOMES, *SPOOL_OUTCOMES):
        value = item.get(key, 0)
        if not (is_int(value) and value >= 0):
            raise RecordError(f"{path}.{key}: {show(value)} is not a count")
        counts[key] = value
    versions = item.get("mapVersions", [])
    if not isinstance(versions, list) or not all(is_int(v) and v >= 0 for v in versions):
        raise RecordError(f"{path}.mapVersions: {show(versions)} is not a list of versions")
    failures: dict[int, int] = {}
    raw_failures = item.get("failures", [])
    if not isinstance(raw_failures, list):
        raise RecordError(f"{path}.failures: {kind_of(raw_failures)}, not a list")
    for index, failure in enumerate(raw_failures):
        where = f"{path}.failures[{index}]"
        one = _object(failure, where, frozenset({"status", "count"}))
        status, count = one.get("status"), one.get("count")
        try:
            code = int(status, 16) if isinstance(status, str) and status[:2] == "0x" else -1
        except ValueError:
            code = -1
        if not 0 <= code <= 0xFFFF:
            raise RecordError(f"{where}.status: {show(status)} is not a status (0x0000..0xFFFF)")
        if not (is_int(count) and count > 0):
            raise RecordError(f"{where}.count: {show(count)} is not a count")
        failures[code] = count
    use = GatewayUse(
        name,
        instances=counts["instances"],
        first_at=_time_value(item.get("firstAt"), f"{path}.firstAt"),
        last_at=_time_value(item.get("lastAt"), f"{path}.lastAt"),
        map_versions=set(versions),
        acknowledged=counts["acknowledged"],
        spooled=counts["spooled"],
        held=counts["held"],
        failures=failures,
        spool_delivered=counts["spoolDelivered"],
        spool_refused=counts["spoolRefused"],
    )
    if counts["failed"] != use.failed:
        raise RecordError(f"{path}.failed: {counts['failed']} is not the sum of failures")
    return use


def _object(data: object, path: str, keys: frozenset[str]) -> Mapping[str, Any]:
    where = path or "the record"
    if not isinstance(data, Mapping):
        raise RecordError(f"{where}: {kind_of(data)}, not an object")
    unknown = sorted(set(data) - keys)
    if unknown:
        raise RecordError(f"{where}: unknown key {show(unknown[0])}")
    return data


def _time_text(moment: float) -> str:
    return format_time(datetime.fromtimestamp(moment, UTC))


def _time_value(value: object, path: str) -> float:
    moment = parse_time(value)
    if moment is None:
        raise RecordError(f"{path}: {show(value)} is not a time")
    return moment.timestamp()
