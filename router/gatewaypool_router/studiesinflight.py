"""Studies in flight per gateway: the load a DICOM gateway feels.

A gateway's work is studies, not instances: an AI triage gateway starts a
job per study, an archive indexes per study, and a study streams in for
seconds to minutes. So the autoscaler is fed the number of studies each
gateway is receiving now, from this router's point of view: a study is in
flight from its first instance until it has been quiet for ``quiet_seconds``
(the same quiet time after which the operator may move its bucket).

The association threads call :meth:`StudiesInFlight.seen` for every instance
they route, so it costs one dictionary store under a lock; the counting and
the forgetting of quiet studies happen at scrape time, or at most once per
``quiet_seconds`` on the data path, so memory holds only the studies of the
last two quiet periods. StudyInstanceUIDs are kept as keys only: never logged,
never exported.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping


class StudiesInFlight:
    """When each study was last routed, and to which gateway.

    Parameters
    ----------
    quiet_seconds
        A study whose last instance is this old (or older) is no longer in
        flight. At least 1 in practice (``--study-quiet-seconds``); any
        positive value works.
    clock
        Monotonic seconds; injectable so that tests step time themselves.

    Notes
    -----
    A study whose instances arrive for another gateway (its bucket moved)
    counts on the gateway of its latest instance only: that is the gateway
    receiving it now.
    """

    def __init__(
        self, *, quiet_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not quiet_seconds > 0:
            raise ValueError(f"quiet_seconds must be positive, not {quiet_seconds!r}")
        self._quiet = quiet_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # study UID -> (monotonic time of its last instance, gateway name)
        self._last: dict[str, tuple[float, str]] = {}
        self._next_prune = clock() + quiet_seconds

    @property
    def quiet_seconds(self) -> float:
        return self._quiet

    def seen(self, study_uid: str, gateway: str) -> None:
        """An instance of `study_uid` is being sent to `gateway` now.

        Called on the data path for every instance: a clock read and one
        dictionary store, plus, once per quiet period, a sweep of the
        studies gone quiet (amortised over every instance of that period).
        """
        now = self._clock()
        with self._lock:
            self._last[study_uid] = (now, gateway)
            if now < self._next_prune:
                return
            self._prune(now)

    def by_gateway(self) -> dict[str, int]:
        """Studies in flight now, per gateway; gateways with none are absent."""
        now = self._clock()
        with self._lock:
            self._prune(now)
            return dict(Counter(gateway for _, gateway in self._last.values()))

    def snapshot(self) -> dict[str, tuple[float, str]]:
        """The studies in flight now: study UID -> (monotonic time of its last instance, gateway).

        A worker process hands this to its supervisor, which merges the
        workers' snapshots with :func:`merge_in_flight`: one study may reach
        a replica over associations served by different workers.
        """
        now = self._clock()
        with self._lock:
            self._prune(now)
            return dict(self._last)

    def __len__(self) -> int:
        """Studies remembered (in flight, or quiet but not yet forgotten)."""
        return len(self._last)

    def _prune(self, now: float) -> None:
        """Forget the studies quiet for ``quiet_seconds``; call with the lock held."""
        cutoff = now - self._quiet
        self._last = {uid: entry for uid, entry in self._last.items() if entry[0] > cutoff}
        self._next_prune = now + self._quiet


def merge_in_flight(
    snapshots: Iterable[Mapping[str, tuple[float, str]]], *, now: float, quiet_seconds: float
) -> dict[str, int]:
    """Studies in flight per gateway across `snapshots` (one per worker of a replica).

    A study seen by several workers counts once, on the gateway of its
    latest instance, exactly as one process's :class:`StudiesInFlight`
    counts it; studies quiet for `quiet_seconds` at `now` are left out.
    Monotonic times compare across processes: the clock is the machine's.
    """
    latest: dict[str, tuple[float, str]] = {}
    for snapshot in snapshots:
        for uid, (moment, gateway) in snapshot.items():
            known = latest.get(uid)
            if known is None or moment > known[0]:
                latest[uid] = (moment, gateway)
    cutoff = now - quiet_seconds
    return dict(Counter(gateway for moment, gateway in latest.values() if moment > cutoff))
