"""The event history watches resume from, bounded like the API server's watch cache.

Every event is kept with its resourceVersion, up to a limit; a watch from a
resourceVersion still covered gets the events after it, one from an older
one gets ``410 Gone`` (``Expired``: "too old resource version") and must
re-list, as from a real server whose watch cache moved on.

A watch that asks for ``allowWatchBookmarks`` gets BOOKMARK events when the
API server's watch cache sends them (:func:`next_bookmark`): they carry only
a resourceVersion, so that a client watching a quiet object can resume from a
version its server still remembers.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Mapping
from typing import Any

import kmock

from .objects import JSONObject

__all__ = ["BOOKMARK_BEFORE_END", "EventHistory", "bookmark", "gone", "next_bookmark"]

#: The API server sends a watch's last bookmark this long before its
#: ``timeoutSeconds`` ends it (``cacheWatcher.nextBookmarkTime``).
BOOKMARK_BEFORE_END = 2.0


class EventHistory:
    """The last ``size`` watch events of every resource, in resourceVersion order."""

    def __init__(self, size: int) -> None:
        self._events: collections.deque[tuple[int, kmock.resource, JSONObject]] = (
            collections.deque()
        )
        self._size = size
        #: Events at or below this revision are gone: a watch from below it is too old.
        self._floor = 0

    def record(self, resource: kmock.resource, event: Mapping[str, Any]) -> None:
        revision = int(event["object"]["metadata"]["resourceVersion"])
        self._events.append((revision, resource, copy.deepcopy(dict(event))))
        while len(self._events) > self._size:
            dropped, _, _ = self._events.popleft()
            self._floor = dropped

    def compact(self, revision: int) -> None:
        """Forget every event up to ``revision``, as an etcd compaction does."""
        while self._events and self._events[0][0] <= revision:
            self._events.popleft()
        self._floor = max(self._floor, revision)

    def since(self, resource: kmock.resource, revision: int) -> list[JSONObject] | None:
        """The events of ``resource`` after ``revision``; ``None`` if some are gone."""
        if revision < self._floor:
            return None
        return [
            copy.deepcopy(event)
            for at, where, event in self._events
            if at > revision and where == resource
        ]


def gone(revision: int, oldest: int) -> JSONObject:
    """The ERROR event a watch from a compacted resourceVersion gets."""
    return {
        "type": "ERROR",
        "object": {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": f"too old resource version: {revision} ({oldest})",
            "reason": "Expired",
            "code": 410,
        },
    }


def next_bookmark(now: float, deadline: float | None, interval: float) -> float | None:
    """When a watch gets its next bookmark, as the API server's watch cache decides it.

    Every ``interval`` seconds (the server's ``bookmarkFrequency``, a minute),
    but no later than :data:`BOOKMARK_BEFORE_END` before the watch's deadline;
    ``None`` once that moment has passed: a watch of 2 s or less gets none.
    """
    at = now + interval
    if deadline is None:
        return at
    at = min(at, deadline - BOOKMARK_BEFORE_END)
    return None if at < now else at


def bookmark(api_version: str, kind: str, resource_version: int) -> JSONObject:
    """A BOOKMARK event: the object's kind and a resourceVersion, nothing else."""
    return {
        "type": "BOOKMARK",
        "object": {
            "kind": kind,
            "apiVersion": api_version,
            "metadata": {"resourceVersion": str(resource_version)},
        },
    }
