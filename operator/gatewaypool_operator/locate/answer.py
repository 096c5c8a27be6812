"""Where a study went: the map's answer joined with every router's record (pure).

The map says where a study's instances *should* go now: its bucket
(:func:`gatewaypool.hashing.study_bucket`), the bucket's owner, and whether
the bucket is being handed over. The routers' records say where they
*actually* went, when, on which map version and how each ended. A study
that arrived on both sides of a handover shows two gateways; a study no
router remembers still shows its bucket and owner, which is where it would
go now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from gatewaypool.bucketmap import BucketMap, Gateway
from gatewaypool.contract import study_uid_problem
from gatewaypool.hashing import study_bucket
from gatewaypool.strict import format_time
from gatewaypool.studyrecord import StudyEntry, dump_entry

__all__ = ["Location", "Move", "RouterAnswer", "UidError", "check_uid", "locate", "render_text"]


class UidError(ValueError):
    """The UID asked about cannot be a StudyInstanceUID the router routes."""


def check_uid(study_uid: str) -> str:
    """Return `study_uid` if a router could have routed it, else raise :class:`UidError`."""
    problem = study_uid_problem(study_uid)
    if problem is not None:
        shown = study_uid if len(study_uid) <= 80 else study_uid[:77] + "..."
        raise UidError(f"{shown!r} is not a StudyInstanceUID: {problem} (e.g. 1.2.840.10008.1)")
    return study_uid


@dataclass(frozen=True, slots=True)
class Move:
    """The study's bucket is being handed over from `source` to `target`."""

    source: Gateway
    target: Gateway
    #: When the move started (the handover state's record, else the pool's oldest move).
    since: datetime | None
    #: In its last step: routers hold new instances until the next map.
    closing: bool


@dataclass(frozen=True, slots=True)
class RouterAnswer:
    """One router's record of the study, or why it could not be read."""

    router: str
    entry: StudyEntry | None = None
    error: str | None = None

    @property
    def seen(self) -> bool:
        return self.entry is not None and self.entry.seen


@dataclass(frozen=True, slots=True)
class Location:
    """Everything ``locate`` prints."""

    study_uid: str
    bucket: int
    buckets: int
    map_version: int
    owner: Gateway
    move: Move | None
    routers: tuple[RouterAnswer, ...]
    #: Gateways are pods of a pool (their name is the pod's), not local processes.
    in_pool: bool

    @property
    def went_to(self) -> dict[str, int]:
        """Instances per gateway over every router (``-`` for those no gateway got).

        In the order the gateways got their first instance of the study.
        """
        totals: dict[str, int] = {}
        first: dict[str, float] = {}
        for answer in self.routers:
            if answer.entry is None:
                continue
            for name, use in answer.entry.uses.items():
                if not use.instances:  # only the spool's deliveries: counted where routed
                    continue
                key = name or "-"
                totals[key] = totals.get(key, 0) + use.instances
                first[key] = min(first.get(key, use.first_at), use.first_at)
        return {key: totals[key] for key in sorted(totals, key=lambda k: (first[k], k))}

    @property
    def seen(self) -> bool:
        return any(answer.seen for answer in self.routers)

    def to_json(self) -> dict[str, Any]:
        move = self.move
        return {
            "studyInstanceUID": self.study_uid,
            "bucket": self.bucket,
            "buckets": self.buckets,
            "mapVersion": self.map_version,
            "owner": self._gateway_json(self.owner),
            "moving": None
            if move is None
            else {
                "from": move.source.name,
                "to": move.target.name,
                "since": format_time(move.since) if move.since is not None else None,
                "closing": move.closing,
            },
            "seen": self.seen,
            "wentTo": self.went_to,
            "routers": [
                {
                    "router": answer.router,
                    "seen": answer.seen,
                    "error": answer.error,
                    "record": dump_entry(answer.entry) if answer.entry is not None else None,
                }
                for answer in self.routers
            ],
        }

    def _gateway_json(self, gateway: Gateway) -> dict[str, Any]:
        return {
            "gateway": gateway.name,
            "pod": gateway.name if self.in_pool else None,
            "host": gateway.host,
            "port": gateway.port,
            "aeTitle": gateway.ae_title,
        }


def locate(
    study_uid: str,
    bucket_map: BucketMap,
    *,
    routers: Sequence[RouterAnswer],
    move_since: datetime | None = None,
    in_pool: bool = False,
) -> Location:
    """Join the map and the routers' records for `study_uid` (checked by :func:`check_uid`).

    Parameters
    ----------
    move_since
        When the move of the study's bucket started, if it moves and that is known.
    """
    bucket = study_bucket(check_uid(study_uid), bucket_map.buckets)
    target = bucket_map.moving.get(bucket)
    move = (
        None
        if target is None
        else Move(
            source=bucket_map.gateway_for(bucket),
            target=bucket_map.gateways[target],
            since=move_since,
            closing=bucket in bucket_map.closing,
        )
    )
    return Location(
        study_uid=study_uid,
        bucket=bucket,
        buckets=bucket_map.buckets,
        map_version=bucket_map.version,
        owner=bucket_map.gateway_for(bucket),
        move=move,
        routers=tuple(routers),
        in_pool=in_pool,
    )


def render_text(location: Location, *, now: datetime | None = None) -> str:
    """The few lines a person on call reads."""
    moment = now or datetime.now(UTC)
    owner = location.owner
    where = f"{owner.host}:{owner.port}, AE {owner.ae_title}"
    lines = [
        f"study     {location.study_uid}",
        f"bucket    {location.bucket} of {location.buckets} (map version {location.map_version})",
        f"owner     {owner.name} ({'pod ' + owner.name + ', ' if location.in_pool else ''}{where})",
        f"moving    {_move_text(location.move, moment)}",
    ]
    went = location.went_to
    if went:
        parts = ", ".join(f"{name} ({count})" for name, count in went.items())
        seen_by = sum(1 for answer in location.routers if answer.seen)
        lines.append(f"went to   {parts}, by {seen_by} of {len(location.routers)} routers")
    elif location.routers:
        lines.append(f"went to   not seen by any router ({len(location.routers)} asked)")
    else:
        lines.append("went to   no router asked (give --router URL)")
    width = max((len(answer.router) for answer in location.routers), default=0)
    for answer in location.routers:
        head = f"  {answer.router:<{width}}  "
        for index, text in enumerate(_router_lines(answer)):
            lines.append((head if index == 0 else " " * len(head)) + text)
    return "\n".join(lines) + "\n"


def _move_text(move: Move | None, now: datetime) -> str:
    if move is None:
        return "no"
    text = f"{move.source.name} → {move.target.name}"
    if move.since is not None:
        text += f" since {_clock(move.since)} ({_age(now - move.since)} ago)"
    if move.closing:
        text += "; closing: new instances wait for the next map"
    return text


def _router_lines(answer: RouterAnswer) -> list[str]:
    if answer.error is not None:
        return [f"not asked: {answer.error}"]
    if answer.entry is None or not answer.entry.seen:
        return ["not seen"]
    lines = []
    for use in sorted(answer.entry.uses.values(), key=lambda u: (u.first_at, u.gateway or "")):
        first = datetime.fromtimestamp(use.first_at, UTC)
        last = datetime.fromtimestamp(use.last_at, UTC)
        versions = ", ".join(str(v) for v in sorted(use.map_versions)) or "none"
        plural = "s" if len(use.map_versions) > 1 else ""
        outcomes = [
            f"{count} {name}"
            for name, count in (("acknowledged", use.acknowledged), ("spooled", use.spooled))
            if count
        ]
        if use.failures:
            statuses = ", ".join(f"{n} x 0x{s:04X}" for s, n in sorted(use.failures.items()))
            outcomes.append(f"{use.failed} failed ({statuses})")
        if use.held:
            outcomes.append(f"{use.held} held while the bucket closed")
        if use.spool_delivered:
            outcomes.append(f"{use.spool_delivered} delivered from the spool")
        if use.spool_refused:
            outcomes.append(f"{use.spool_refused} refused from the spool (kept aside)")
        if use.instances:
            routed = (
                f"{use.instances} instance{'s' * (use.instances != 1)} {_span(first, last)}, "
                f"map version{plural} {versions}"
            )
        else:  # a gateway the spool delivered to, not the one the instances were routed to
            routed = f"from the spool {_span(first, last)}"
        lines.append(f"{use.gateway or 'no gateway'}: {routed}, {', '.join(outcomes)}")
    return lines


def _span(first: datetime, last: datetime) -> str:
    """``2026-12-07 23:04:28 to 23:04:29 UTC``: the date once when both are on one day,
    the time once when both are in one second."""
    if first.replace(microsecond=0) == last.replace(microsecond=0):
        return f"at {_clock(first)}"
    if first.date() == last.date():
        return f"{_clock(first)[:-4]} to {last.strftime('%H:%M:%S')} UTC"
    return f"{_clock(first)} to {_clock(last)}"


def _clock(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"
