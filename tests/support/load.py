"""Traffic whose number of senders changes while it runs: load that rises and falls.

An autoscaling test needs the load of a hospital's day in miniature: one
modality sending, then eight at once, then one again. Each sender here is a
:class:`support.traffic.Traffic` of its own with one sender thread (whole
studies, each over several associations to random routers, retried as a
modality retries), so everything that module records and promises holds for
each; :meth:`Load.set_senders` starts senders or tells the newest ones to
stop after the study they are sending, so no study is cut short.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence

from pynetdicom import _config

from gatewaypool_local.synth import Study
from support.traffic import Outcome, Target, Traffic

#: Study indexes of sender k start at k * this, so senders never share a study.
_INDEXES_PER_SENDER = 1_000_000


class Load:
    """Senders of studies through `routers`; how many send is set while it runs.

    Parameters
    ----------
    routers
        Where every association goes (one at random each time): router
        processes, or a router Service's address.
    make_study
        Writes the study of a given index (called by the sender that sends
        it, as it needs it).
    seed
        Makes the senders' choices of routers repeatable.
    chunk
        Instances per association.
    """

    def __init__(
        self,
        routers: Sequence[Target],
        make_study: Callable[[int], Study],
        *,
        seed: int,
        chunk: int = 10,
    ) -> None:
        self._routers = list(routers)
        self._make_study = make_study
        self._seed = seed
        self._chunk = chunk
        self._running: list[Traffic] = []
        self._stopping: list[threading.Thread] = []
        self._all: list[Traffic] = []
        self._lock = threading.Lock()
        self._started = 0
        # Each Traffic switches pynetdicom's module-wide "send the file's
        # bytes as they are" on when it starts and puts back, when it
        # finishes, what it found when it was made. Switched on here, before
        # any is made, a finishing sender cannot switch it off under the
        # others; it is put back by `finish`.
        self._previous_chunked = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True

    @property
    def senders(self) -> int:
        """Senders taking new studies now."""
        with self._lock:
            return len(self._running)

    def set_senders(self, count: int) -> None:
        """Start senders, or let the newest ones stop after their current study."""
        with self._lock:
            while len(self._running) < count:
                index = self._started
                self._started += 1
                traffic = Traffic(
                    self._routers,
                    self._studies(index),
                    seed=self._seed * 1000 + index,
                    senders=1,
                    chunk=self._chunk,
                )
                traffic.start()
                self._running.append(traffic)
                self._all.append(traffic)
            while len(self._running) > count:
                leaving = self._running.pop()
                stopper = threading.Thread(target=leaving.finish, name="stop-sender", daemon=True)
                stopper.start()
                self._stopping.append(stopper)

    def sent_studies(self) -> int:
        """Studies sent to their last instance so far, by every sender."""
        with self._lock:
            return sum(traffic.sent_studies() for traffic in self._all)

    def longest_silence(self, study: Study) -> float:
        """The longest time `study`'s sender sent nothing of it, in seconds."""
        with self._lock:
            return max(traffic.longest_silence(study) for traffic in self._all)

    def finish(self, *, timeout: float = 120.0) -> Outcome:
        """Stop every sender after its study and return what all of them got."""
        self.set_senders(0)
        for stopper in self._stopping:
            stopper.join(timeout=timeout)
        if any(stopper.is_alive() for stopper in self._stopping):
            raise TimeoutError("senders still running")
        _config.STORE_SEND_CHUNKED_DATASET = self._previous_chunked
        merged = Outcome()
        for traffic in self._all:
            outcome = traffic.outcome
            merged.acknowledged.update(outcome.acknowledged)
            merged.failed.update(outcome.failed)
            merged.unanswered.update(outcome.unanswered)
            merged.sent_at.update(outcome.sent_at)
            merged.studies.extend(outcome.studies)
            merged.retries += outcome.retries
            merged.associations += outcome.associations
        return merged

    def _studies(self, sender: int) -> Iterator[Study]:
        for i in itertools.count():
            yield self._make_study(sender * _INDEXES_PER_SENDER + i)
