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
- A lane sends the entries of its gateway's buckets, one at a time, over
  one association of its own (opened on demand with the contexts of the
  entries waiting, released when idle). The queue never gives two lanes the
  same bucket, so each bucket leaves in order.
- Each attempt ends in a :class:`~gatewaypool_router.spool.decide.Verdict`:
  delivered (deleted), refused (moved aside with its status), or retry
  after a back-off that grows per gateway.
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
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gatewaypool.bucketmap import Gateway
from gatewaypool.logs import log_event
from gatewaypool.reports import SpoolSummary
from gatewaypool_router import pdus, tls
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.negotiation import AcceptedContext
from gatewaypool_router.spool.decide import Verdict, judge, retry_delay
from gatewaypool_router.spool.queue import SpoolQueue
from gatewaypool_router.spool.store import (
    Entry,
    EntryError,
    SpoolStore,
    read_entry,
    recover,
    seq_of,
)
from gatewaypool_router.statuses import Status
from gatewaypool_router.upstream import GatewayError, Upstream

log = logging.getLogger(__name__)

SCAN_SECONDS = 0.25
#: Contexts a lane proposes at most: one per (SOP class, transfer syntax) waiting.
_MAX_CONTEXTS = 64
_READ_CHUNK = 1 << 20


@dataclass(slots=True)
class _Tallies:
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert config.spool_dir is not None
        self.config = config
        self.maps = maps
        self.clock = clock
        self.store = SpoolStore(config.spool_dir, max_bytes=config.spool_max_bytes)
        self.queue = SpoolQueue()
        self.tallies = _Tallies()
        self.refused_files: dict[str, int] = {}
        self._overdue_logged: set[int] = set()
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self._scanner = threading.Thread(target=self._scan_loop, name="spool-scan", daemon=True)
        self.gateway_tls = tls.outbound_for(config)
        maps.subscribe(lambda _applied: self._notify())

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
        registry.register(_SpoolCollector(self))

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
                lane = _Lane(self, gateway)
                self._lanes[gateway] = lane
                lane.start()

    # -- what lanes report -------------------------------------------------------------

    def settle(self, entry: Entry, *, status: int, reason: str, resend: bool) -> Verdict:
        """Act on an attempt's outcome; return its verdict."""
        verdict = judge(status)
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


class _Lane(threading.Thread):
    """Sends the entries of one gateway's buckets, one at a time, over one association."""

    def __init__(self, forwarder: SpoolForwarder, gateway: str) -> None:
        super().__init__(name=f"spool-{gateway}", daemon=True)
        self._forwarder = forwarder
        self._gateway_name = gateway
        self._upstream: Upstream | None = None
        self._contexts: dict[tuple[str, str], int] = {}
        self._calling = ""
        self._failures = 0

    def run(self) -> None:
        forwarder = self._forwarder
        try:
            while not forwarder.stopping.is_set():
                if not self._step():
                    self._idle()
        finally:
            self._close(release=True)

    def _step(self) -> bool:
        """Send one entry if one is due; False when there was none."""
        forwarder = self._forwarder
        current = forwarder.maps.current
        if current is None:
            return False
        owner_of = forwarder.owner_of()
        entry = forwarder.queue.take(owner_of, self._gateway_name)
        if entry is None:
            return False
        gateway = current.gateway_for(entry.meta.bucket)
        status, reason, resend = self._attempt(gateway, entry)
        verdict = forwarder.settle(entry, status=status, reason=reason, resend=resend)
        if verdict is Verdict.RETRY:
            self._failures += 1
            self._close(release=False)
            delay = retry_delay(self._failures)
            log_event(
                log,
                logging.WARNING,
                "spool.forward_failed",
                gateway=gateway.name,
                status=f"0x{status:04X}",
                reason=reason,
                failures=self._failures,
                retry_in=delay,
            )
            forwarder.stopping.wait(delay)
        else:
            if self._failures:
                log_event(log, logging.INFO, "spool.gateway_back", gateway=gateway.name)
            self._failures = 0
        return True

    def _idle(self) -> None:
        forwarder = self._forwarder
        queue = forwarder.queue
        with queue.changed:
            queue.changed.wait(SCAN_SECONDS)
        upstream = self._upstream
        config = forwarder.config
        if upstream is not None and time.monotonic() - upstream.last_used > min(
            config.gateway_idle_release, 5.0
        ):
            self._close(release=True)

    def _attempt(self, gateway: Gateway, entry: Entry) -> tuple[int, str, bool]:
        """Send `entry` to `gateway`: the status it ended with, why, and whether a resend.

        A send counts as begun (and any later one as a resend) once the
        association is open, just before the command goes out: the gateway
        may store what follows even if its answer never comes back.
        """
        meta = entry.meta
        resend = False
        try:
            context_id = self._context_for(gateway, entry)
            if context_id is None:
                return (
                    Status.SOP_CLASS_NOT_SUPPORTED,
                    "gateway did not accept this SOP class and transfer syntax",
                    False,
                )
            upstream = self._upstream
            assert upstream is not None
            resend = self._forwarder.store.mark_sending(entry)
            command = memoryview(meta.command)
            upstream.send_pdv(context_id, pdus.MCH_COMMAND | pdus.MCH_LAST, command)
            self._send_data_set(upstream, context_id, entry)
            _raw, response = upstream.read_response(meta.message_id)
        except GatewayError as exc:
            return int(exc.status), exc.reason, resend
        except OSError as exc:  # the entry file: it stays, and is tried again
            return Status.GATEWAY_ABORTED, f"spool read failed: {exc}", resend
        return response.status, response.error_comment, resend

    def _send_data_set(self, upstream: Upstream, context_id: int, entry: Entry) -> None:
        with open(entry.path, "rb") as file:
            left = entry.size
            if not left:
                upstream.send_pdv(context_id, pdus.MCH_LAST, memoryview(b""))
            while left:
                chunk = file.read(min(left, _READ_CHUNK))
                if not chunk:
                    raise OSError(f"{entry.path.name} ends early")
                left -= len(chunk)
                upstream.send_pdv(context_id, 0 if left else pdus.MCH_LAST, memoryview(chunk))

    def _context_for(self, gateway: Gateway, entry: Entry) -> int | None:
        """The context of an association to `gateway` that carries `entry`; opened if need be."""
        pair = (entry.meta.sop_class_uid, entry.meta.transfer_syntax)
        calling = self._calling_ae(entry)
        upstream = self._upstream
        if upstream is not None and (
            not upstream.is_open
            or upstream.gateway != gateway
            or self._calling != calling
            or not upstream.check_alive()
        ):
            self._close(release=upstream.is_open)
            upstream = None
        if upstream is not None and pair in self._contexts:
            return self._contexts[pair]
        if upstream is not None:
            self._close(release=True)
        return self._open(gateway, pair, calling)

    def _calling_ae(self, entry: Entry) -> str:
        config = self._forwarder.config
        return entry.meta.calling_ae if config.forward_calling_ae else config.ae_title

    def _open(self, gateway: Gateway, pair: tuple[str, str], calling: str) -> int | None:
        forwarder = self._forwarder
        config = forwarder.config
        pairs = [pair, *self._waiting_pairs(pair)][:_MAX_CONTEXTS]
        contexts = [
            AcceptedContext(context_id=2 * i + 1, abstract_syntax=sop, transfer_syntax=ts)
            for i, (sop, ts) in enumerate(pairs)
        ]
        gateway_tls = forwarder.gateway_tls
        upstream = Upstream(
            gateway=gateway,
            address=config.resolve(gateway.host, gateway.port),
            contexts=contexts,
            calling_ae=calling,
            max_pdu=config.max_pdu,
            timeout=config.gateway_timeout,
            connect_timeout=config.connect_timeout,
            tls=gateway_tls.current() if gateway_tls is not None else None,
        )
        upstream.open()
        self._upstream = upstream
        self._calling = calling
        self._contexts = {
            (cx.abstract_syntax, cx.transfer_syntax): cx.context_id
            for cx in contexts
            if cx.context_id in upstream.usable_contexts
        }
        return self._contexts.get(pair)

    def _waiting_pairs(self, first: tuple[str, str]) -> list[tuple[str, str]]:
        queue = self._forwarder.queue
        entries = [e for waiting in queue.entries().values() for e in waiting]
        seen = {first}
        pairs: list[tuple[str, str]] = []
        for entry in entries:
            pair = (entry.meta.sop_class_uid, entry.meta.transfer_syntax)
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
        return pairs

    def _close(self, *, release: bool) -> None:
        upstream = self._upstream
        self._upstream = None
        self._contexts = {}
        if upstream is None:
            return
        if release and upstream.is_open:
            upstream.release()
        else:
            upstream.abort()


def _listdir(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return [Path(entry.path) for entry in entries]
    except FileNotFoundError:
        return []


class _SpoolCollector(Collector):
    """The spool's metrics, read from the forwarder at scrape time."""

    def __init__(self, forwarder: SpoolForwarder) -> None:
        self._forwarder = forwarder

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        f = self._forwarder
        backlog = f.queue.backlog(f.owner_of())
        now = f.clock()
        instances = GaugeMetricFamily(
            "gatewaypool_router_spool_instances",
            "Instances waiting in the spool, by the gateway that owns their bucket",
            labels=["gateway"],
        )
        size = GaugeMetricFamily(
            "gatewaypool_router_spool_bytes",
            "Data set bytes waiting in the spool, by the gateway that owns their bucket",
            labels=["gateway"],
        )
        oldest = GaugeMetricFamily(
            "gatewaypool_router_spool_oldest_seconds",
            "Age of the oldest instance waiting in the spool, by gateway",
            labels=["gateway"],
        )
        for gateway, tally in sorted(backlog.by_gateway.items()):
            instances.add_metric([gateway], tally.instances)
            size.add_metric([gateway], tally.bytes)
            age = 0.0 if tally.oldest is None else max(0.0, now - tally.oldest)
            oldest.add_metric([gateway], age)
        yield instances
        yield size
        yield oldest
        t = f.tallies
        yield GaugeMetricFamily(
            "gatewaypool_router_spool_overdue_instances",
            "Instances waiting longer than --spool-retention (alert on any)",
            value=f.overdue_count(),
        )
        yield GaugeMetricFamily(
            "gatewaypool_router_spool_refused_instances",
            "Instances a gateway refused for good, kept aside in the spool's refused/ folder",
            value=len(f.refused_files),
        )
        yield GaugeMetricFamily(
            "gatewaypool_router_spool_held_bytes",
            "Bytes the spool's files take (waiting and refused), against --spool-max-bytes",
            value=f.store.held_bytes(),
        )
        for name, doc, value in (
            ("spooled", "Instances found committed in the spool", t.spooled),
            ("forwarded", "Spooled instances delivered to their gateway", t.forwarded),
            ("forwarded_bytes", "Data set bytes delivered from the spool", t.forwarded_bytes),
            ("resends", "Deliveries of an instance sent before (at least once)", t.resends),
            ("refusals", "Spooled instances a gateway refused for good", t.refused),
            ("retries", "Forwarding attempts that failed and wait to be tried again", t.retries),
        ):
            yield CounterMetricFamily(f"gatewaypool_router_spool_{name}", doc, value=value)
