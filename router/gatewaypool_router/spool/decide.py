"""The spool's decisions, as functions of data: no files, no sockets, no clock of their own.

- :func:`spool_first`: does an instance go to the spool, or straight on?
- :func:`judge`: what a forwarding attempt's outcome means for the entry.
- :func:`retry_delay`: how long a gateway lane waits after failures.
- :class:`Availability`: which gateways a worker sends to the spool at once,
  without trying them, because they just failed.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

from gatewaypool_router.statuses import Status, outcome, retryable

#: The first wait after a failed forwarding attempt; it doubles up to `RETRY_MAX`.
RETRY_FIRST = 0.5
RETRY_MAX = 5.0
#: After a gateway failed an instance, a worker spools its instances at once
#: for this long instead of trying it (and waiting on its connect timeout).
UNAVAILABLE_SECONDS = 2.0


class Verdict(enum.Enum):
    """What a forwarding attempt means for the entry."""

    DELIVERED = "delivered"  # the gateway took it (success or warning): forget it
    RETRY = "retry"  # the gateway could not take it now: try again later
    REFUSED = "refused"  # the gateway refused it for good: move it aside


#: Failures that concern the router's association, not the instance: a
#: configuration fix makes them pass, so the instance waits instead of being
#: moved aside.
_ASSOCIATION_REFUSALS = frozenset({Status.GATEWAY_REJECTED, Status.GATEWAY_REFUSED_CALLER})


def spool_first(
    *, always: bool, bucket_waiting: bool, gateway_available: bool, gateway_ready: bool = True
) -> bool:
    """Whether an instance goes to the spool before (instead of) its gateway.

    Always with ``--spool-when Always``; otherwise when its bucket already
    has instances waiting in the spool (they go first: a study stays in
    order), its gateway failed a moment ago, or the map source marks it not
    Ready (`gatewaypool.bucketmap.Readiness`).
    """
    return always or bucket_waiting or not gateway_available or not gateway_ready


def judge(status: int) -> Verdict:
    """Classify a forwarding attempt by the status it ended with (the gateway's, or ours)."""
    if outcome(status) != "failure":
        return Verdict.DELIVERED
    if retryable(status) or status in _ASSOCIATION_REFUSALS:
        return Verdict.RETRY
    return Verdict.REFUSED


def diverts(status: int) -> bool:
    """Whether a status met on the way to the gateway sends the instance to the spool instead.

    Retryable (0xA7xx) ones do: the gateway cannot take it now. Any other
    status is the gateway's word on the instance and goes to the sender.
    """
    return retryable(status)


def retry_delay(failures: int) -> float:
    """The wait after `failures` consecutive failed attempts (0 after none)."""
    if failures <= 0:
        return 0.0
    return float(min(RETRY_MAX, RETRY_FIRST * 2.0 ** min(failures - 1, 16)))


class Availability:
    """Gateways that failed an instance a moment ago, per process; thread-safe."""

    def __init__(self, *, clock: Callable[[], float], hold: float = UNAVAILABLE_SECONDS) -> None:
        self._clock = clock
        self._hold = hold
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def failed(self, gateway: str) -> None:
        with self._lock:
            self._until[gateway] = self._clock() + self._hold

    def available(self, gateway: str) -> bool:
        with self._lock:
            until = self._until.get(gateway)
            if until is None:
                return True
            if self._clock() >= until:
                del self._until[gateway]
                return True
            return False
