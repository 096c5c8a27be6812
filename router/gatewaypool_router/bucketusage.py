"""Bucket usage: what the operator needs to know of a router's traffic, to move buckets safely.

Three facts, kept for every association thread of the router at the cost of
one store per routed instance (:class:`BucketUsage`):

- when each bucket was last routed into (a bucket may change owner only
  once it has been quiet on every router for ``quietSeconds``);
- how many upstream associations are open to each gateway (a gateway may be
  removed only once no router holds one to it);
- which buckets have an instance held (its bucket is closing): a held
  instance is a study in progress, reported as a use now, which makes the
  operator take the bucket out of closing rather than complete its move.

A replica with several worker processes reports them merged over its
workers (:class:`ReplicaBucketUsage`). The operator moves a bucket only once
it is quiet on every router replica; it knows nothing of workers. So the
report must say a bucket was used if *any* worker used it: for each bucket,
the most recent use over all workers (the smallest age), and the open
upstream associations summed over them. Two cases where a worker cannot
say, both answered on the safe side:

- a worker that does not answer in time (busy, stuck): every bucket asked
  about counts as used now;
- a worker that died (crashed, killed by the OOM killer): what it used is
  lost with it, so every bucket counts as used at the moment it was lost.
  This is what a restarted router reports too (it counts as active from its
  start), narrowed to the time of the loss.

The reporter turns them into the router report (:mod:`gatewaypool.reports`).
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

#: Open associations are counted by the gateway's name in the map (its pod name).
GatewayKey = str


class BucketUsageView(Protocol):
    """What the reporter reads: a :class:`BucketUsage`, or one merged over workers."""

    def ages(self, buckets: Iterable[int], *, now: float | None = None) -> dict[int, float]: ...

    def open_associations(self) -> Mapping[GatewayKey, int]: ...

    def subscribe(self, listener: Callable[[], None]) -> None: ...


class BucketUsage:
    """Last use per bucket (monotonic seconds) and open associations per gateway."""

    def __init__(self) -> None:
        self._last: array[float] = array("d")
        self._open: Counter[GatewayKey] = Counter()
        self._lock = threading.Lock()
        self._held: Counter[int] = Counter()
        self._on_hold: list[Callable[[], None]] = []

    def routed(self, bucket: int, buckets: int) -> None:
        """An instance was routed into `bucket` (of a map with `buckets` buckets) now."""
        last = self._last
        if len(last) != buckets:
            with self._lock:
                if len(self._last) != buckets:  # a new pool's bucket count: start over
                    self._last = array("d", bytes(8 * buckets))
                last = self._last
        last[bucket] = time.monotonic()

    def ages(self, buckets: Iterable[int], *, now: float | None = None) -> dict[int, float]:
        """Seconds since the last use of each of `buckets` used since start (0 while held)."""
        moment = time.monotonic() if now is None else now
        last = self._last
        with self._lock:
            held = {b for b, n in self._held.items() if n > 0}
        ages = {b: moment - last[b] for b in buckets if b < len(last) and last[b]}
        ages.update({b: 0.0 for b in buckets if b in held})
        return ages

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever an instance starts being held (to report it at once)."""
        self._on_hold.append(listener)

    def hold(self, bucket: int) -> None:
        """An instance for `bucket` is held (its bucket is closing): the bucket is in use."""
        with self._lock:
            self._held[bucket] += 1
        for listener in self._on_hold:
            listener()

    def release(self, bucket: int) -> None:
        with self._lock:
            self._held[bucket] -= 1
            if self._held[bucket] <= 0:
                del self._held[bucket]

    def opened(self, gateway: GatewayKey) -> None:
        with self._lock:
            self._open[gateway] += 1

    def closed(self, gateway: GatewayKey) -> None:
        with self._lock:
            self._open[gateway] -= 1
            if self._open[gateway] <= 0:
                del self._open[gateway]

    def open_associations(self) -> Mapping[GatewayKey, int]:
        with self._lock:
            return dict(self._open)


def merge_ages(
    buckets: Iterable[int],
    replies: Sequence[Mapping[int, float] | None],
    *,
    now: float,
    lost_at: float | None = None,
) -> dict[int, float]:
    """Return the age of the last use of each of `buckets`, over all workers.

    Parameters
    ----------
    buckets
        The buckets asked about (the moving buckets of the applied map).
    replies
        Per live worker: seconds from its last use of each bucket to `now`
        (buckets it never used left out), or None for a worker that did not
        answer: every bucket then counts as used at `now`.
    now
        Monotonic seconds the ages are measured to.
    lost_at
        Monotonic time a worker of this replica was last lost, or None: every
        bucket counts as used then.

    Returns
    -------
    dict
        Bucket → smallest age; buckets no worker used (and none lost since
        start) are absent, as in :meth:`BucketUsage.ages`.
    """
    wanted = list(buckets)
    merged: dict[int, float] = {}
    if lost_at is not None:
        merged = dict.fromkeys(wanted, max(0.0, now - lost_at))
    for reply in replies:
        ages = dict.fromkeys(wanted, 0.0) if reply is None else reply
        for bucket in wanted:
            age = ages.get(bucket)
            if age is not None and (bucket not in merged or age < merged[bucket]):
                merged[bucket] = age
    return merged


def merge_open(replies: Iterable[Mapping[GatewayKey, int]]) -> dict[GatewayKey, int]:
    """Return the open upstream associations per gateway, summed over the workers."""
    total: dict[GatewayKey, int] = {}
    for reply in replies:
        for gateway, count in reply.items():
            total[gateway] = total.get(gateway, 0) + count
    return {gateway: count for gateway, count in total.items() if count > 0}


class Workers(Protocol):
    """How :class:`ReplicaBucketUsage` asks the live workers (the supervisor answers)."""

    def ask_ages(self, buckets: list[int], now: float) -> list[dict[int, float] | None]: ...

    def ask_open(self) -> list[dict[GatewayKey, int]]: ...


class ReplicaBucketUsage:
    """A :class:`BucketUsageView` over a replica's workers.

    Parameters
    ----------
    workers
        Asks every live worker; called from the reporter's thread.
    clock
        Monotonic seconds, the same clock the workers' ages are measured on
        (it is the machine's, shared by all processes).
    """

    def __init__(self, workers: Workers, *, clock: Callable[[], float]) -> None:
        self._workers = workers
        self._clock = clock
        self._lock = threading.Lock()
        self._lost_at: float | None = None
        self._listeners: list[Callable[[], None]] = []

    def ages(self, buckets: Iterable[int], *, now: float | None = None) -> dict[int, float]:
        moment = self._clock() if now is None else now
        wanted = list(buckets)
        replies = self._workers.ask_ages(wanted, moment) if wanted else []
        with self._lock:
            lost_at = self._lost_at
        return merge_ages(wanted, replies, now=moment, lost_at=lost_at)

    def open_associations(self) -> Mapping[GatewayKey, int]:
        return merge_open(self._workers.ask_open())

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` when a worker starts holding an instance (see :meth:`held`)."""
        self._listeners.append(listener)

    def held(self) -> None:
        """A worker holds an instance of a closing bucket: report at once."""
        for listener in self._listeners:
            listener()

    def worker_lost(self) -> None:
        """A worker died: count every bucket as used now, and report at once."""
        with self._lock:
            self._lost_at = self._clock()
        self.held()
