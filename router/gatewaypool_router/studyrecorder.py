"""The router's record of the studies it routed, for ``GET /studies/{UID}``.

"Where did study X go?" is answered from this record (by ``gatewaypool
locate``), so it keeps, per study, what the map alone cannot say: which
gateways its instances actually reached, how many, when, on which map
version and how each ended (see :mod:`gatewaypool.studyrecord`).

It is bounded: at most ``--study-record-size`` studies, the least recently
routed forgotten first. Each instance's outcome costs one dictionary look-up
and a few additions under a lock, once the instance is answered. A replica
with several workers keeps one record per worker, and its supervisor one
more for what its spool forwarder settles; the supervisor asks them all at
request time and merges (:func:`gatewaypool.studyrecord.merge_entries`), so
it is one record from outside.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from copy import deepcopy

from gatewaypool.studyrecord import GatewayUse, StudyEntry
from gatewaypool_router.statuses import outcome


class StudyRecorder:
    """The last `capacity` studies routed; thread-safe.

    Parameters
    ----------
    capacity
        Studies kept; 0 keeps none.
    clock
        Unix seconds (wall time: the record is read by people, and merged
        across processes).
    """

    def __init__(self, *, capacity: int, clock: Callable[[], float] = time.time) -> None:
        if capacity < 0:
            raise ValueError(f"capacity: {capacity} is negative")
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._studies: OrderedDict[str, StudyEntry] = OrderedDict()

    def answered(
        self,
        study_uid: str,
        *,
        gateway: str | None,
        bucket: int | None,
        map_version: int | None,
        status: int,
        spooled: bool = False,
        held: bool = False,
    ) -> None:
        """An instance of `study_uid` was answered `status` (routed to `gateway`, if any)."""
        if not self._capacity:
            return
        with self._lock:
            use = self._use(study_uid, gateway, bucket)
            use.instances += 1
            if map_version is not None:
                use.map_versions.add(map_version)
            use.held += held
            if outcome(status) == "failure":
                use.failures[status] = use.failures.get(status, 0) + 1
            elif spooled:
                use.spooled += 1
            else:
                use.acknowledged += 1

    def from_spool(self, study_uid: str, *, gateway: str, bucket: int, delivered: bool) -> None:
        """The spool settled a spooled instance of `study_uid` with `gateway`.

        `delivered`: the gateway acknowledged it; else it refused it for good.
        """
        if not self._capacity:
            return
        with self._lock:
            use = self._use(study_uid, gateway, bucket)
            if delivered:
                use.spool_delivered += 1
            else:
                use.spool_refused += 1

    def _use(self, study_uid: str, gateway: str | None, bucket: int | None) -> GatewayUse:
        """The study's use of `gateway`, now the most recent; under the lock."""
        now = self._clock()
        entry = self._studies.get(study_uid)
        if entry is None:
            entry = self._studies[study_uid] = StudyEntry(study_uid)
            if len(self._studies) > self._capacity:
                self._studies.popitem(last=False)
        else:
            self._studies.move_to_end(study_uid)
        if bucket is not None:
            entry.bucket = bucket
        use = entry.uses.get(gateway)
        if use is None:
            use = entry.uses[gateway] = GatewayUse(gateway, first_at=now)
        use.last_at = now
        return use

    def get(self, study_uid: str) -> StudyEntry | None:
        """A copy of the record of `study_uid`, or None if it is not (or no longer) kept."""
        with self._lock:
            entry = self._studies.get(study_uid)
            return None if entry is None else deepcopy(entry)

    def __len__(self) -> int:
        return len(self._studies)
