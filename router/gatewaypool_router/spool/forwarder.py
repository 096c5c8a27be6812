"""Forwarding what the spool holds: a scanner and one lane per gateway, in one process.

The forwarding process is the router itself with ``--workers 1``, else the
supervisor of its workers: whichever holds the replica's map source. Workers
only write entries (:mod:`gatewaypool_router.spool.store`); this module
alone sends and deletes them, so there is one queue per router whatever its
number of processes.

- The scanner thread looks at the folder every `SCAN_SECONDS`, adds new
  entries to the :class:`~gatewaypool_router.spool.queue.SpoolQueue`,
  starts a lane for each gateway that owns a bucket with entries, and notes
  refused entries someone deleted (their bytes are free again).
- A lane (:mod:`.lane`) sends the entries of its gateway's buckets, one at
  a time, over one association of its own. The queue never gives two lanes
  the same bucket, so each bucket leaves in order.
- Each attempt ends in a :class:`~gatewaypool_router.spool.decide.Verdict`:
  delivered (deleted), refused (moved aside with its status), or retry
  after a back-off that grows per gateway.
- A gateway the map source marks not Ready is not tried: its lane waits
  for a readiness that says Ready, which wakes it at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from gatewaypool.logs import log_event
from gatewaypool.reports import SpoolSummary
from gatewaypool_router import tls
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.spool.decide import Verdict, judge
from gatewaypool_router.spool.lane import Lane
from gatewaypool_router.spool.metrics import SpoolCollector
from gatewaypool_router.spool.queue import SpoolQueue
from gatewaypool_router.spool.store import (
    Entry,
    EntryError,
    SpoolStore,
    read_entry,
    recover,
    seq_of,
)
from gatewaypool_router.studyrecorder import StudyRecorder

log = logging.getLogger(__name__)

#: How often the folder is looked at for new entries (and deleted refused ones).
SCAN_SECONDS = 0.25


@dataclass(slots=True)
class Tallies:
    """What the forwarder counted since start (the metrics' counters)."""

    spooled: int = 0
    forwarded: int = 0
    forwarded_bytes: int = 0
    resends: int = 0
    refused: int = 0
    retries: int = 0


class SpoolForwarder:
    """The router's spool queue and the threads that empty it."""

    def __init__(
        self,
        config: RouterConfig,
        maps: MapHolder,
        *,
        record: StudyRecorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert config.spool_dir is not None
        self.config = config
        self.maps = maps
        #: The study record (``GET /studies/UID``) told what became of each entry.
        self.record = record
        self.clock = clock
        self.store = SpoolStore(config.spool_dir, max_bytes=config.spool_max_bytes)
        self.queue = SpoolQueue()
        self.tallies = Tallies()
        self.refused_files: dict[str, int] = {}
        self._overdue_logged: set[int] = set()
        self._lanes: dict[str, Lane] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._scanner = threading.Thread(target=self._scan_loop, name="spool-scan", daemon=True)
        self.gateway_tls = tls.outbound_for(config)
        maps.subscribe(lambda _applied: self._notify())
        maps.subscribe_readiness(lambda _readiness: self._notify())

    # -- life cycle -------------------------------------------------------------

    def recover(self) -> None:
        """Read what a previous run left; before any process of this router writes."""
        found = recover(self.store)
        self.queue.add(found.entries)
        self.refused_files = {path.name: size for path, size in found.refused.items()}
        log_event(
            log,
            logging.INFO,
            "spool.recovered",
            dir=str(self.store.root),
            instances=len(found.entries),
            bytes=sum(entry.size for entry in found.entries),
            refused=len(found.refused),
            discarded_partial=found.discarded,
            unreadable=found.unreadable,
        )

    def start(self) -> None:
        self._scanner.start()

    def drain(self, deadline: float) -> None:
        """Forward until the queue is empty or `deadline` (monotonic) passes, then stop."""
        self._scan_once()
        with self.queue.changed:
            while not self.queue.empty() and time.monotonic() < deadline:
                self.queue.changed.wait(min(SCAN_SECONDS, max(0.0, deadline - time.monotonic())))
        self.stop()
        backlog = self.queue.backlog(self.owner_of())
        log_event(
            log,
            logging.INFO if not backlog.instances else logging.WARNING,
            "spool.stopped",
            left_instances=backlog.instances,
            left_bytes=backlog.bytes,
        )

    def stop(self) -> None:
        self.stopping.set()
        self._notify()
        with self._lock:
            lanes = list(self._lanes.values())
        for lane in lanes:
            lane.join(timeout=self.config.gateway_timeout + 1.0)

    def _notify(self) -> None:
        with self.queue.changed:
            self.queue.changed.notify_all()

    # -- what the report and /metrics read ----------------------------------------

    def summary(self, buckets: int) -> SpoolSummary:
        """The spool as the router's report states it."""
        backlog = self.queue.backlog(self.owner_of())
        oldest = 0.0 if backlog.oldest is None else max(0.0, self.clock() - backlog.oldest)
        return SpoolSummary(
            instances=backlog.instances,
            bytes=backlog.bytes,
            oldest_seconds=round(oldest, 3),
            refused=len(self.refused_files),
            buckets=frozenset(b for b in backlog.buckets if b < buckets),
        )

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(SpoolCollector(self))

    # -- scanning -------------------------------------------------------------------

    def owner_of(self) -> Callable[[int], str | None]:
        current = self.maps.current
        if current is None:
            return lambda _bucket: None
        return lambda bucket: current.gateway_for(bucket).name if bucket < current.buckets else None

    def _scan_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self._scan_once()
            except Exception:  # a scan must never end forwarding
                log.exception("spool scan failed")
            self.stopping.wait(SCAN_SECONDS)

    def _scan_once(self) -> None:
        fresh: list[Entry] = []
        for folder in _listdir(self.store.queue):
            for name in _listdir(folder):
                seq = seq_of(name.name)
                if seq is None or self.queue.known(seq):
                    continue
                try:
                    fresh.append(read_entry(name))
                except (EntryError, FileNotFoundError):
                    continue  # renamed in after fsync: cannot be partial; gone meanwhile
        self.tallies.spooled += self.queue.add(fresh)
        self._note_refused()
        self._note_overdue()
        owner_of = self.owner_of()
        if not self.stopping.is_set():
            for gateway in self.queue.gateways(owner_of):
                self._lane(gateway)

    def _note_refused(self) -> None:
        """Refused entries someone deleted free their bytes."""
        with self._lock:
            known = dict(self.refused_files)  # before listing: later refusals are not "gone"
        present = {p.name: p for p in _listdir(self.store.refused) if p.suffix == ".inst"}
        gone = [name for name in known if name not in present]
        sizes: dict[str, int] = {}
        for name in present.keys() - known.keys():
            with contextlib.suppress(FileNotFoundError):
                sizes[name] = present[name].stat().st_size
        with self._lock:
            for name, size in sizes.items():
                self.refused_files.setdefault(name, size)
            freed = sum(self.refused_files.pop(name, 0) for name in gone)
        if freed:
            with self.store.locked() as state:
                state[1] = max(0, state[1] - freed)

    def _note_overdue(self) -> None:
        limit = self.clock() - self.config.spool_retention
        backlog_owner = self.owner_of()
        for gateway, entries in self._overdue(limit, backlog_owner):
            for entry in entries:
                if entry.seq in self._overdue_logged:
                    continue
                self._overdue_logged.add(entry.seq)
                log_event(
                    log,
                    logging.ERROR,
                    "spool.overdue",
                    gateway=gateway,
                    bucket=entry.meta.bucket,
                    seq=entry.seq,
                    age_seconds=round(self.clock() - entry.meta.spooled_at, 1),
                    sop_instance_uid=entry.meta.sop_instance_uid,
                )

    def _overdue(
        self, limit: float, owner_of: Callable[[int], str | None]
    ) -> Iterator[tuple[str, list[Entry]]]:
        for bucket, entries in self.queue.entries().items():
            old = [e for e in entries if e.meta.spooled_at < limit]
            if old:
                yield owner_of(bucket) or "-", old

    def overdue_count(self) -> int:
        limit = self.clock() - self.config.spool_retention
        return sum(len(entries) for _, entries in self._overdue(limit, self.owner_of()))

    def _lane(self, gateway: str) -> None:
        with self._lock:
            lane = self._lanes.get(gateway)
            if lane is None or not lane.is_alive():
                lane = Lane(self, gateway)
                self._lanes[gateway] = lane
                lane.start()

    # -- what lanes report -------------------------------------------------------------

    def settle(
        self, entry: Entry, *, gateway: str, status: int, reason: str, resend: bool
    ) -> Verdict:
        """Act on an attempt of `entry` with `gateway`; return its verdict."""
        verdict = judge(status)
        if self.record is not None and verdict is not Verdict.RETRY:
            self.record.from_spool(
                entry.meta.study_uid,
                gateway=gateway,
                bucket=entry.meta.bucket,
                delivered=verdict is Verdict.DELIVERED,
            )
        if verdict is Verdict.DELIVERED:
            self.store.forget(entry)
            with self._lock:  # lanes settle concurrently
                self.tallies.forwarded += 1
                self.tallies.forwarded_bytes += entry.size
                self.tallies.resends += int(resend)
            self._overdue_logged.discard(entry.seq)
            self.queue.done(entry)
        elif verdict is Verdict.REFUSED:
            target = self.store.refuse(entry, status=status, reason=reason)
            with self._lock:
                self.refused_files[target.name] = entry.file_size
                self.tallies.refused += 1
                self.tallies.resends += int(resend)
            self.queue.done(entry)
            log_event(
                log,
                logging.WARNING,
                "spool.refused",
                bucket=entry.meta.bucket,
                status=f"0x{status:04X}",
                reason=reason,
                kept=str(target),
                sop_instance_uid=entry.meta.sop_instance_uid,
            )
        else:
            with self._lock:
                self.tallies.retries += 1
            self.queue.again(entry)
        return verdict


def _listdir(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(entry.path) for entry in entries]
    except FileNotFoundError:
        return []
