"""The event history watches resume from, bounded like the API server's watch cache.

Every event is kept with its resourceVersion, up to a limit; a watch from a
resourceVersion still covered gets the events after it, one from an older
one gets ``410 Gone`` (``Expired``: "too old resource version") and must
re-list, as from a real server whose watch cache moved on.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Mapping
from typing import Any

import kmock

from .objects import JSONObject

__all__ = ["EventHistory", "gone"]


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
