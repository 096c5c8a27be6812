"""What the operator needs to know of this router's traffic, to move buckets safely.

Three facts, kept for every association thread of the router at the cost of
one store per routed instance:

- when each bucket was last routed into (a bucket may change owner only
  once it has been quiet on every router for ``quietSeconds``);
- how many upstream associations are open to each gateway (a gateway may be
  removed only once no router holds one to it);
- which buckets have an instance held (its bucket is closing): a held
  instance is a study in progress, reported as a use now, which makes the
  operator take the bucket out of closing rather than complete its move.

The reporter turns them into the router report (:mod:`gatewaypool.reports`).
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

#: Open associations are counted by the gateway's name in the map (its pod name).
GatewayKey = str


class UsageView(Protocol):
    """What the reporter reads: one process's :class:`Usage`, or a replica's workers merged."""

    def ages(self, buckets: Iterable[int], *, now: float | None = None) -> dict[int, float]: ...

    def open_associations(self) -> Mapping[GatewayKey, int]: ...

    def subscribe(self, listener: Callable[[], None]) -> None: ...


class Usage:
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
