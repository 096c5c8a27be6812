"""Continuous DICOM traffic through routers, as hospitals send it, with its outcome.

Sender threads take whole studies from a queue and send each in chunks,
every chunk on a new pynetdicom association to a router chosen at random
(as the router Service spreads associations), one chunk right after the
other, so a study is active from its first instance to its last. Each
instance is recorded with the status it got:

- a status (success or failure) is final: a failure is what the test must
  never see;
- no status at all (the router died under the association, or refused the
  connection) is what a modality retries: the instance is sent again, on a
  new association to another router, after a pause that grows with each
  try (as a modality's retry timer does), and the retry is counted.

That pause is a sender's behaviour, the only wait here; nothing waits on
the clock for synchronisation. `finish` stops taking new studies and joins
the senders.

When each instance was sent is recorded too, every attempt: a study whose
sender went silent for longer than the pool's ``quietSeconds`` (a retry's
pause, an association that waited out its timeout for a lost response) may
continue on another gateway. That is the documented meaning of "study
complete", not a split, and :meth:`Traffic.longest_silence` tells the two
apart.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config

from gatewaypool_local import scu
from gatewaypool_local.synth import Study

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_RETRIES = 20
#: The pause before the n-th retry is n times this, at most _RETRY_PAUSE_MAX (seconds).
_RETRY_PAUSE = 0.25
_RETRY_PAUSE_MAX = 2.0
#: How much shorter a router may see a sender's silence than the sender's clock shows:
#: the earlier of two instances may reach the router later than it was sent.
_SEND_SKEW_SECONDS = 0.5


class Target(Protocol):
    """Where a sender sends: a router process, or a router Service's address."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def ae_title(self) -> str: ...


@dataclass
class Outcome:
    """What every instance sent got."""

    acknowledged: dict[str, str] = field(default_factory=dict)  # SOP instance -> study
    failed: dict[str, int] = field(default_factory=dict)  # SOP instance -> status
    unanswered: dict[str, int] = field(default_factory=dict)  # SOP instance -> attempts
    retries: int = 0
    #: When each attempt to send an instance of a study began (monotonic), by study.
    sent_at: dict[str, list[float]] = field(default_factory=dict)
    studies: list[Study] = field(default_factory=list)
    associations: int = 0


class Traffic:
    """Send `studies` through `routers` until :meth:`finish`."""

    def __init__(
        self,
        routers: Sequence[Target],
        studies: Iterable[Study],
        *,
        seed: int,
        senders: int = 4,
        chunk: int = 10,
        timeout: float = 20.0,
    ) -> None:
        self._routers = list(routers)
        # Pulled one at a time by the senders: a generator makes studies only
        # as they are needed.
        self._studies = iter(studies)
        self._next_lock = threading.Lock()
        self._seed = seed
        self._chunk = chunk
        self._timeout = timeout
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.outcome = Outcome()
        self._threads = [
            threading.Thread(target=self._send, args=(i,), name=f"sender-{i}", daemon=True)
            for i in range(senders)
        ]
        self._previous_chunked = _config.STORE_SEND_CHUNKED_DATASET

    def start(self) -> None:
        _config.STORE_SEND_CHUNKED_DATASET = True  # file bytes as they are
        for thread in self._threads:
            thread.start()

    def longest_silence(self, study: Study) -> float:
        """The longest time the sender sent nothing of `study`, between its first and last
        attempt, in seconds: between the starts of two attempts one after the other."""
        with self._lock:
            times = sorted(self.outcome.sent_at.get(study.study_uid, ()))
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def sent_studies(self) -> int:
        with self._lock:
            return len(self.outcome.studies)

    def finish(self, *, timeout: float = 120.0, drain: bool = False) -> Outcome:
        """Stop taking new studies, let the ones in flight end, and return the outcome.

        With `drain`, send every study queued first.
        """
        if not drain:
            self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)
        _config.STORE_SEND_CHUNKED_DATASET = self._previous_chunked
        if any(thread.is_alive() for thread in self._threads):
            raise TimeoutError("senders still running")
        return self.outcome

    def _send(self, index: int) -> None:
        rng = random.Random(self._seed * 1000 + index)
        while not self._stop.is_set():
            with self._next_lock:
                study = next(self._studies, None)
            if study is None:
                return
            files = list(zip(study.files, study.sop_instance_uids, strict=True))
            for start in range(0, len(files), self._chunk):
                self._send_chunk(rng, study, files[start : start + self._chunk])
            with self._lock:
                self.outcome.studies.append(study)

    def _send_chunk(self, rng: random.Random, study: Study, files: list[tuple[Path, str]]) -> None:
        pending = list(files)
        for attempt in range(_RETRIES):
            if not pending:
                return
            if attempt:
                with self._lock:
                    self.outcome.retries += 1
                # A modality waits before it tries again; through a Service, a
                # router that just died stays an endpoint until its pod is
                # marked not ready, and instant retries would all meet it.
                time.sleep(min(_RETRY_PAUSE * attempt, _RETRY_PAUSE_MAX))
            router = rng.choice(self._routers)
            pending = self._over_one_association(router, study, pending)
        with self._lock:
            for _path, sop in pending:
                self.outcome.unanswered[sop] = _RETRIES

    def _over_one_association(
        self, router: Target, study: Study, files: list[tuple[Path, str]]
    ) -> list[tuple[Path, str]]:
        """Send what it can; return the files that got no status."""
        try:
            with scu.open_association(
                router.host,
                router.port,
                contexts=[(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)],
                calling_ae="CT-CHAOS",
                called_ae=router.ae_title,
                timeout=self._timeout,
            ) as assoc:
                with self._lock:
                    self.outcome.associations += 1
                for position, (path, sop) in enumerate(files):
                    if not assoc.is_established:
                        return files[position:]
                    with self._lock:
                        self.outcome.sent_at.setdefault(study.study_uid, []).append(
                            time.monotonic()
                        )
                    response = scu.store(assoc, path)
                    status = int(response.Status) if "Status" in response else None
                    if status is None:
                        return files[position:]
                    with self._lock:
                        if status == 0:
                            self.outcome.acknowledged[sop] = study.study_uid
                        else:
                            self.outcome.failed[sop] = status
        except (scu.PynetdicomSendError, OSError):
            return files
        return []


def assert_whole_or_resumed(
    traffic: Traffic,
    studies: Sequence[Study],
    holders: Mapping[str, set[str]],
    *,
    quiet_seconds: float,
) -> None:
    """Every study on one gateway (`holders`: study UID -> gateways holding it), but for one
    whose sender went silent for longer than `quiet_seconds`, and at most a tenth of them.

    Such a study was complete by the README's definition when it went quiet,
    and may go on on its bucket's new gateway.
    """
    resumed = []
    for study in studies:
        if len(holders[study.study_uid]) > 1:
            silence = traffic.longest_silence(study)
            assert silence > quiet_seconds - _SEND_SKEW_SECONDS, (
                f"study split over {sorted(holders[study.study_uid])}, "
                f"its sender silent for at most {silence:.1f} s"
            )
            resumed.append(study.study_uid)
    assert len(resumed) <= len(studies) // 10, f"{len(resumed)} of {len(studies)} studies resumed"
