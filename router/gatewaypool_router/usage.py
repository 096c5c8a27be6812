"""What the operator needs to know of this router's traffic, to move buckets safely.

Two facts, kept for every association thread of the router at the cost of
one store per routed instance:

- when each bucket was last routed into (a bucket may change owner only
  once it has been quiet on every router for ``quietSeconds``);
- how many upstream associations are open to each gateway (a gateway may be
  removed only once no router holds one to it).

The reporter turns them into the router report (:mod:`gatewaypool.reports`).
"""

from __future__ import annotations

import threading
import time
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping

#: Open associations are counted by the gateway's name in the map (its pod name).
GatewayKey = str


class Usage:
    """Last use per bucket (monotonic seconds) and open associations per gateway."""

    def __init__(self) -> None:
        self._last: array[float] = array("d")
        self._open: Counter[GatewayKey] = Counter()
        self._lock = threading.Lock()

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
        """Seconds since the last use of each of `buckets` used since start."""
        moment = time.monotonic() if now is None else now
        last = self._last
        return {b: moment - last[b] for b in buckets if b < len(last) and last[b]}

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
