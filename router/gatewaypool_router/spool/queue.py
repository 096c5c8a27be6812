"""The entries waiting in the spool, per bucket, first in first out; no I/O.

One :class:`SpoolQueue` lives in the process that forwards (the router, or
the supervisor of its workers). It learns entries from the folder scan, and
hands each gateway lane the next entry it may send: the head of one of the
buckets its gateway owns, never a bucket another lane is sending from, the
oldest head first. A bucket's entries therefore leave strictly in order,
one at a time, whichever lane sends them, even while the map moves the
bucket from one gateway to another.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gatewaypool_router.spool.store import Entry


@dataclass(slots=True)
class GatewayBacklog:
    """What waits for one gateway (the current owner of the buckets)."""

    instances: int = 0
    bytes: int = 0
    oldest: float | None = None  # spooledAt of the oldest, wall clock


@dataclass(slots=True)
class Backlog:
    """What waits in the whole spool."""

    instances: int = 0
    bytes: int = 0
    oldest: float | None = None
    buckets: frozenset[int] = frozenset()
    by_gateway: dict[str, GatewayBacklog] = field(default_factory=dict)


class SpoolQueue:
    """Waiting entries by bucket; a condition wakes lanes when something changes."""

    def __init__(self) -> None:
        self._buckets: dict[int, deque[Entry]] = {}
        self._known: set[int] = set()
        self._busy: set[int] = set()
        self.changed = threading.Condition()

    def known(self, seq: int) -> bool:
        with self.changed:
            return seq in self._known

    def add(self, entries: Iterable[Entry]) -> int:
        """Add entries not known yet, in sequence order; how many were new."""
        added = 0
        with self.changed:
            for entry in sorted(entries, key=lambda e: e.seq):
                if entry.seq in self._known:
                    continue
                queue = self._buckets.setdefault(entry.meta.bucket, deque())
                if queue and queue[-1].seq > entry.seq:
                    # Commits are renamed in sequence order, so a later scan
                    # never finds an older entry; keep the order regardless.
                    items = sorted([*queue, entry], key=lambda e: e.seq)
                    queue.clear()
                    queue.extend(items)
                else:
                    queue.append(entry)
                self._known.add(entry.seq)
                added += 1
            if added:
                self.changed.notify_all()
        return added

    def take(self, owner_of: Callable[[int], str | None], gateway: str) -> Entry | None:
        """The next entry for `gateway`: the oldest head among its buckets not being sent."""
        with self.changed:
            best: Entry | None = None
            for bucket, queue in self._buckets.items():
                if bucket in self._busy or not queue or owner_of(bucket) != gateway:
                    continue
                if best is None or queue[0].seq < best.seq:
                    best = queue[0]
            if best is not None:
                self._busy.add(best.meta.bucket)
            return best

    def done(self, entry: Entry) -> None:
        """`entry` left the spool (delivered or moved aside): its bucket's next may go."""
        with self.changed:
            bucket = entry.meta.bucket
            queue = self._buckets.get(bucket)
            if queue and queue[0].seq == entry.seq:
                queue.popleft()
            if queue is not None and not queue:
                del self._buckets[bucket]
            self._busy.discard(bucket)
            self._known.discard(entry.seq)
            self.changed.notify_all()

    def again(self, entry: Entry) -> None:
        """`entry` stays at its bucket's head, to be tried again."""
        with self.changed:
            self._busy.discard(entry.meta.bucket)
            self.changed.notify_all()

    def entries(self) -> dict[int, list[Entry]]:
        """A snapshot: bucket -> its waiting entries, in order."""
        with self.changed:
            return {bucket: list(queue) for bucket, queue in self._buckets.items()}

    def empty(self) -> bool:
        with self.changed:
            return not self._buckets

    def gateways(self, owner_of: Callable[[int], str | None]) -> set[str]:
        """The gateways that own a bucket with waiting entries."""
        with self.changed:
            owners = {owner_of(bucket) for bucket in self._buckets}
        return {owner for owner in owners if owner is not None}

    def backlog(self, owner_of: Callable[[int], str | None]) -> Backlog:
        """Counts for metrics and the report."""
        result = Backlog()
        with self.changed:
            result.buckets = frozenset(self._buckets)
            for bucket, queue in self._buckets.items():
                owner = owner_of(bucket) or "-"
                mine = result.by_gateway.setdefault(owner, GatewayBacklog())
                for entry in queue:
                    for tally in (result, mine):
                        tally.instances += 1
                        tally.bytes += entry.size
                        when = entry.meta.spooled_at
                        tally.oldest = when if tally.oldest is None else min(tally.oldest, when)
        return result
