"""What the routers' spools hold, for the pool's status: ``status.spool`` and ``SpoolBacklog``.

With ``spec.router.spool`` every router reports its spool
(`gatewaypool.reports.SpoolSummary`: instances and bytes waiting, the age of
the oldest, instances a gateway refused for good). The pool's status sums
them over the live router pods, as ``kubectl get gwp -o yaml`` shows them,
and sets the condition ``SpoolBacklog``:

- True, reason ``RetentionExceeded``: an instance has waited longer than
  ``spec.router.spool.retentionSeconds``. It is never dropped; a gateway
  has been unable to take its bucket's instances for that long.
- True, reason ``SpoolFilling``: a router's spool holds
  `FILLING_PERCENT` % of what it may hold (``--spool-max-bytes``); when it
  is full it answers 0xA700 and the senders' retries are back.
- True, reason ``InstancesRefused``: a gateway refused spooled instances
  for good; they are kept aside on the router's volume for a person.
- False, reason ``SpoolDraining`` while instances wait within those
  limits, ``SpoolEmpty`` when none does.

The oldest instance is shown as a time (``oldestSince``: the report's time
less the oldest's age, to the second), never as an age, so the status does
not change with the clock alone. A router that is gone reports nothing: the
claim it leaves holds its spool until a router with that volume starts and
reports it again. Pure: the reports are the routers' text, parsed here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from gatewaypool.reports import ReportError, parse_report
from gatewaypool.strict import format_time
from gatewaypool_operator.children.router import SPOOL_VOLUME, spool_max_bytes
from gatewaypool_operator.conditions import ConditionReason
from gatewaypool_operator.spec.types import SpoolSpec

__all__ = ["FILLING_PERCENT", "SpoolTotals", "backlog", "idle_claims", "spool_totals"]

FILLING_PERCENT: Final = 90
"""A router's spool this full (of its ``--spool-max-bytes``) sets ``SpoolBacklog``."""


@dataclass(frozen=True, slots=True)
class SpoolTotals:
    """The live routers' spools, summed.

    Attributes
    ----------
    instances, bytes, refused
        Summed over the routers' reports.
    oldest_since
        When the oldest waiting instance was spooled (to the second); None
        when none waits.
    routers
        Routers whose reports have a spool.
    largest_bytes
        The most bytes one router's spool holds, and whose it is.
    """

    instances: int = 0
    bytes: int = 0
    refused: int = 0
    oldest_since: datetime | None = None
    routers: int = 0
    largest_bytes: tuple[int, str] = (0, "")

    def status(self) -> dict[str, Any]:
        """``status.spool``; ``oldestSince`` only while an instance waits."""
        result: dict[str, Any] = {
            "instances": self.instances,
            "bytes": self.bytes,
            "refused": self.refused,
            "routers": self.routers,
        }
        if self.oldest_since is not None:
            result["oldestSince"] = format_time(self.oldest_since)
        return result


def spool_totals(reports: Mapping[str, str], live_router_pods: Collection[str]) -> SpoolTotals:
    """Sum the spools of the reports of `live_router_pods`; an unusable report counts nothing."""
    instances = size = refused = routers = 0
    oldest: datetime | None = None
    largest = (0, "")
    for pod in sorted(live_router_pods):
        text = reports.get(pod)
        if not text:
            continue
        try:
            report = parse_report(text)
        except ReportError:
            continue
        spool = report.spool
        if spool is None:
            continue
        routers += 1
        instances += spool.instances
        size += spool.bytes
        refused += spool.refused
        largest = max(largest, (spool.bytes, pod))
        if spool.instances:
            since = report.reported_at - timedelta(seconds=spool.oldest_seconds)
            since = since.replace(microsecond=0)
            oldest = since if oldest is None else min(oldest, since)
    return SpoolTotals(instances, size, refused, oldest, routers, largest)


def idle_claims(
    claims: Iterable[Mapping[str, Any]], routers: str, live_router_pods: Collection[str]
) -> tuple[str, ...]:
    """The spool claims (``spool-ROUTERS-<i>``) whose router pod (``ROUTERS-<i>``) is not live.

    A claim outlives its router (scaled away, or the spool removed): what it
    holds is forwarded only when a router mounts it again. The pool's status
    names these claims meanwhile, since no report can say what they hold.
    """
    prefix = f"{SPOOL_VOLUME}-{routers}-"
    idle = []
    for claim in claims:
        name = str((claim.get("metadata") or {}).get("name") or "")
        ordinal = name.removeprefix(prefix)
        pod = f"{routers}-{ordinal}"
        if name.startswith(prefix) and ordinal.isdigit() and pod not in live_router_pods:
            idle.append(name)
    return tuple(sorted(idle, key=lambda one: int(one.removeprefix(prefix))))


def backlog(
    spool: SpoolSpec, totals: SpoolTotals, *, now: datetime
) -> tuple[str, ConditionReason, str]:
    """The ``SpoolBacklog`` condition: status, reason and message (see the module docstring)."""
    problems: list[tuple[ConditionReason, str]] = []
    if totals.oldest_since is not None:
        waited = (now - totals.oldest_since).total_seconds()
        if waited > spool.retention_seconds:
            problems.append(
                (
                    ConditionReason.RETENTION_EXCEEDED,
                    f"the oldest spooled instance has waited since "
                    f"{format_time(totals.oldest_since)}, longer than retentionSeconds "
                    f"({spool.retention_seconds}): its gateway has not taken it",
                )
            )
    most, router = totals.largest_bytes
    limit = spool_max_bytes(spool.size)
    if most * 100 >= limit * FILLING_PERCENT:
        problems.append(
            (
                ConditionReason.SPOOL_FILLING,
                f"router {router} spools {most} of its {limit} bytes; a full spool answers "
                "0xA700 (out of resources)",
            )
        )
    if totals.refused:
        problems.append(
            (
                ConditionReason.INSTANCES_REFUSED,
                f"{totals.refused} spooled instances were refused for good by their gateway "
                "and are kept aside on the routers' volumes",
            )
        )
    if problems:
        return "True", problems[0][0], "; ".join(message for _, message in problems)
    if totals.instances:
        return (
            "False",
            ConditionReason.SPOOL_DRAINING,
            f"{totals.instances} instances ({totals.bytes} bytes) wait in {totals.routers} "
            "routers' spools, within the limits",
        )
    return "False", ConditionReason.SPOOL_EMPTY, f"{totals.routers} routers' spools are empty"
