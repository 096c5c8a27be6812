"""What each association is doing, and a watchdog that says so when it takes long.

A router that waits on a sender or a gateway must never wait in silence: the
next stall must be diagnosed from one log line. Every association keeps a
:class:`Progress` -- what it waits for, on whom, the last PDU it read and
wrote, and the bytes of the instance in progress -- updated on the data path
with plain attribute writes (no formatting, no locks: the watchdog only
reads, and a value a few microseconds old is fine for a log line).
:class:`StallWatch` looks at every association once a second and logs an
``instance.overdue`` warning when an instance has been in progress longer
than ``--stall-warning`` seconds, and again every that many seconds while it
stays so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from gatewaypool.logs import log_event

log = logging.getLogger(__name__)

_PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}


def pdu_name(pdu_type: int) -> str:
    return _PDU_NAMES.get(pdu_type, f"0x{pdu_type:02X}")


@dataclass(slots=True)
class Progress:
    """The data path's state, written by the association's thread only.

    ``waiting_on`` is ``"sender"`` or ``"gateway"``; ``waiting_for`` says
    what is awaited (``"next request"``, ``"data set fragment"``,
    ``"C-STORE-RSP"``, ``"send"``). Instance fields are reset when a
    C-STORE request arrives; ``instance_started`` is 0 between instances.
    """

    waiting_on: str = "sender"
    waiting_for: str = "A-ASSOCIATE-RQ"
    waiting_since: float = 0.0
    last_read: str = "-"
    last_read_bytes: int = 0
    last_read_at: float = 0.0
    last_written: str = "-"
    last_written_bytes: int = 0
    last_written_at: float = 0.0
    instance_started: float = 0.0
    instance_sop: str = ""
    instance_gateway: str = "-"
    received_bytes: int = 0
    forwarded_bytes: int = 0
    warned_at: float = 0.0

    def wait(self, on: str, what: str) -> None:
        self.waiting_on = on
        self.waiting_for = what
        self.waiting_since = time.monotonic()

    def read(self, what: str, size: int) -> None:
        self.last_read = what
        self.last_read_bytes = size
        self.last_read_at = time.monotonic()

    def wrote(self, what: str, size: int) -> None:
        self.last_written = what
        self.last_written_bytes = size
        self.last_written_at = time.monotonic()

    def start_instance(self, sop_instance_uid: str) -> None:
        self.instance_started = time.monotonic()
        self.instance_sop = sop_instance_uid
        self.instance_gateway = "-"
        self.received_bytes = 0
        self.forwarded_bytes = 0
        self.warned_at = 0.0

    def end_instance(self) -> None:
        self.instance_started = 0.0

    def describe(self, now: float) -> dict[str, object]:
        """The state as log fields (seconds rounded to 0.1)."""

        def ago(moment: float) -> float | None:
            return round(now - moment, 1) if moment else None

        return {
            "waiting_on": self.waiting_on,
            "waiting_for": self.waiting_for,
            "waiting_seconds": ago(self.waiting_since),
            "last_read": self.last_read,
            "last_read_bytes": self.last_read_bytes,
            "last_read_seconds_ago": ago(self.last_read_at),
            "last_written": self.last_written,
            "last_written_bytes": self.last_written_bytes,
            "last_written_seconds_ago": ago(self.last_written_at),
        }


class Watched(Protocol):
    """What :class:`StallWatch` needs of an association."""

    progress: Progress

    def who(self) -> dict[str, object]: ...


def overdue(progress: Progress, *, now: float, limit: float) -> bool:
    """Whether an instance in progress is due a warning at `now`."""
    if not progress.instance_started or now - progress.instance_started < limit:
        return False
    return not progress.warned_at or now - progress.warned_at >= limit


class StallWatch:
    """A thread that logs instances in progress for longer than `limit` seconds."""

    def __init__(
        self,
        associations: Callable[[], Iterable[Watched]],
        *,
        limit: float,
        on_overdue: Callable[[], None],
    ) -> None:
        self._associations = associations
        self._limit = limit
        self._on_overdue = on_overdue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = min(1.0, self._limit / 2)
        while not self._stop.wait(interval):
            self.check(time.monotonic())

    def check(self, now: float) -> int:
        """Log every overdue instance once; return how many were logged."""
        logged = 0
        for association in self._associations():
            progress = association.progress
            if not overdue(progress, now=now, limit=self._limit):
                continue
            if not progress.warned_at:
                self._on_overdue()
            progress.warned_at = now
            logged += 1
            log_event(
                log,
                logging.WARNING,
                "instance.overdue",
                **association.who(),
                sop_instance_uid=progress.instance_sop,
                gateway=progress.instance_gateway,
                seconds=round(now - progress.instance_started, 1),
                received_bytes=progress.received_bytes,
                forwarded_bytes=progress.forwarded_bytes,
                **progress.describe(now),
            )
        return logged
