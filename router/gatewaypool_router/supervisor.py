"""A router replica of several worker processes (``--workers`` above 1).

Python runs one thread at a time per process, so one router process uses
about one core however many the pod is given. The supervisor makes a
replica use them all and still look like one router from outside:

- one listening socket per port (plain, TLS), opened here and shared by
  every worker (the kernel gives each new connection to one worker waiting
  in ``accept()``, and connections waiting in the backlog survive a
  worker's death); each worker makes its own TLS context from the files;
- one map source (one watch of the map ConfigMap, not one per worker): each
  map the supervisor applies goes to every worker over its pipe;
- one report to the operator, merging every worker's bucket use and open
  upstream associations (:mod:`gatewaypool_router.bucketusage`);
- one ``/healthz``, ``/readyz`` and ``/metrics``; metric values live in
  prometheus_client's multiprocess files, and studies in flight are merged
  from the workers' own trackers at scrape time;
- one study record (``/studies/UID``): each worker records the studies it
  routes, the supervisor what its spool forwarder delivers, and it asks
  the workers at request time and merges;
- SIGTERM reaches every worker, which drains as a single router does;
- a worker that dies is logged, counted
  (``gatewaypool_router_worker_restarts_total``) and replaced, and every
  bucket counts as used at the moment it died, since what it used died
  with it.

Workers are started with the ``spawn`` method: a fresh interpreter, never a
``fork()`` of a process whose other threads may hold locks.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from itertools import count
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gatewaypool.bucketmap import BucketMap, Readiness, dump_map, dump_readiness
from gatewaypool.logs import log_event
from gatewaypool.studyrecord import StudyEntry, merge_entries, parse_entry
from gatewaypool_router import sources
from gatewaypool_router.bucketusage import GatewayKey, ReplicaBucketUsage
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.httpserver import HealthServer
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.metrics import RouterMetrics
from gatewaypool_router.server import Listeners, log_started
from gatewaypool_router.spool.forwarder import SpoolForwarder
from gatewaypool_router.studiesinflight import merge_in_flight
from gatewaypool_router.studyrecorder import StudyRecorder
from gatewaypool_router.worker import worker_main

log = logging.getLogger(__name__)

#: How long the report and a scrape wait for a worker's answer.
ASK_TIMEOUT = 2.0
#: A worker that dies sooner than this after its start is replaced after a
#: growing delay (0.5 s, doubling up to 10 s), so a crash loop does not spin.
STABLE_SECONDS = 5.0
_RESPAWN_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)
#: After the grace period, how long workers get to exit before SIGKILL.
_EXIT_MARGIN = 5.0


class WorkerHandle:
    """The supervisor's end of one worker: its process, its pipe, its answers."""

    def __init__(
        self, index: int, process: BaseProcess, conn: Connection, usage: ReplicaBucketUsage
    ) -> None:
        self.index = index
        self.process = process
        self.started = time.monotonic()
        self.ready = False
        self._conn = conn
        self._usage = usage
        self._send_lock = threading.Lock()
        self._answers = threading.Condition()
        self._replies: dict[int, Any] = {}
        self._ids = count()
        self._thread = threading.Thread(target=self._run, name=f"worker-{index}-link", daemon=True)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def start(self) -> None:
        self._thread.start()

    def send(self, message: tuple[Any, ...]) -> bool:
        with self._send_lock:
            try:
                self._conn.send(message)
            except OSError:
                return False
        return True

    def ask(self, kind: str, *args: Any, timeout: float = ASK_TIMEOUT) -> Any | None:
        """Ask the worker; its answer, or None if none came within `timeout`."""
        request = next(self._ids)
        if not self.send((kind, request, *args)):
            return None
        deadline = time.monotonic() + timeout
        with self._answers:
            while request not in self._replies:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return None
                self._answers.wait(min(remaining, 0.5))
            return self._replies.pop(request)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.close()

    def _run(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                with self._answers:
                    self._answers.notify_all()
                return
            kind = message[0]
            if kind == "ready":
                self.ready = True
            elif kind == "held":
                self._usage.held()
            elif kind == "reply":
                with self._answers:
                    self._replies[message[1]] = message[2]
                    # Answers nobody waits for any more (timed out) must not pile up.
                    while len(self._replies) > 64:
                        self._replies.pop(next(iter(self._replies)))
                    self._answers.notify_all()


class Supervisor:
    """A router replica of `workers` worker processes; same life cycle as a Router.

    Parameters
    ----------
    multiproc_dir
        prometheus_client's multiprocess folder: already in
        ``$PROMETHEUS_MULTIPROC_DIR`` for this process and its workers,
        before any metric was made, and empty.
    """

    def __init__(
        self,
        config: RouterConfig,
        *,
        workers: int,
        multiproc_dir: Path,
        log_level: str = "info",
        log_format: str = "json",
    ) -> None:
        if workers < 2:
            raise ValueError(f"a supervisor runs 2 or more workers, not {workers}")
        self.config = config
        self._workers = workers
        self._dir = multiproc_dir
        self._log = (log_level, log_format)
        self._context = multiprocessing.get_context("spawn")
        self.metrics = RouterMetrics()
        self.maps = MapHolder(self.metrics)
        self.maps.subscribe(self._broadcast)
        self.maps.subscribe_readiness(self._broadcast_readiness)
        self.usage = ReplicaBucketUsage(self, clock=time.monotonic)
        self._registry = CollectorRegistry()
        collector: Any = MultiProcessCollector  # untyped in prometheus_client
        collector(self._registry, path=str(multiproc_dir))
        self.metrics.export_studies_in_flight(self, self._map_gateways, registry=self._registry)
        self._lock = threading.Lock()
        self._slots: list[WorkerHandle | None] = [None] * workers
        self._failures = [0] * workers
        self._due = [0.0] * workers
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        self._listeners: Listeners | None = None
        self._parts: list[sources.Part] = []
        self._monitor: threading.Thread | None = None
        self._http: HealthServer | None = None
        #: The replica's one spool forwarder (its workers only write entries).
        self.forwarder: SpoolForwarder | None = None
        #: What that forwarder did with spooled instances, per study (merged into /studies).
        self.spool_record = StudyRecorder(capacity=config.study_record_size)
        self.port = config.port
        self.tls_port = 0
        self.http_port = config.http_port

    # -- what the HTTP endpoint reports ---------------------------------------

    @property
    def is_alive(self) -> bool:
        monitor = self._monitor
        return (
            monitor is not None
            and monitor.is_alive()
            and not self._stopping.is_set()
            and any(handle.alive for handle in self._live())
        )

    @property
    def ready_version(self) -> int | None:
        bucket_map = self.maps.current
        if bucket_map is None or not self.is_alive:
            return None
        return bucket_map.version if any(h.ready for h in self._live()) else None

    def metrics_text(self) -> bytes:
        return generate_latest(self._registry)

    # -- what the report and the studies gauge ask of the workers -------------

    def ask_ages(self, buckets: list[int], now: float) -> list[dict[int, float] | None]:
        return [handle.ask("ages", buckets, now) for handle in self._asked()]

    def ask_open(self) -> list[dict[GatewayKey, int]]:
        answers = [handle.ask("open") for handle in self._asked()]
        return [answer for answer in answers if answer is not None]

    def study(self, study_uid: str) -> StudyEntry:
        """The replica's record of `study_uid`: every worker's, merged.

        A worker that does not answer in time is left out: the record is for
        people, and a partial answer serves them better than none.
        """
        answers = [handle.ask("study", study_uid) for handle in self._asked()]
        workers = [parse_entry(answer) for answer in answers if answer is not None]
        return merge_entries(study_uid, [*workers, self.spool_record.get(study_uid)])

    def by_gateway(self) -> dict[str, int]:
        """Studies in flight per gateway over all workers (a study counted once)."""
        snapshots = [handle.ask("studies") for handle in self._asked()]
        return merge_in_flight(
            (snapshot for snapshot in snapshots if snapshot is not None),
            now=time.monotonic(),
            quiet_seconds=self.config.study_quiet_seconds,
        )

    # -- life cycle -----------------------------------------------------------

    def start(self) -> None:
        config = self.config
        if config.spool_dir is not None:
            # Recovered before any worker exists, so before any writes to it.
            self.forwarder = SpoolForwarder(config, self.maps, record=self.spool_record)
            self.forwarder.recover()
            self.forwarder.register(self._registry)
        parts, api = sources.map_source(config, self.maps, self.metrics)
        self._parts.extend(parts)
        summary = self.forwarder.summary if self.forwarder is not None else None
        report = sources.reporter(config, api, self.maps, self.usage, spool=summary)
        if report is not None:
            self._parts.append(report)
        for part in self._parts:
            part.start()
        if self.forwarder is not None:
            self.forwarder.start()
        listeners = Listeners.open(config)
        self._listeners = listeners
        self.port = listeners.plain.getsockname()[1] if listeners.plain is not None else 0
        self.tls_port = listeners.tls.getsockname()[1] if listeners.tls is not None else 0
        for index in range(self._workers):
            self._spawn(index)
        self._http = HealthServer(self, bind=config.http_bind, port=config.http_port)
        self._http.start()
        self.http_port = self._http.port
        self._monitor = threading.Thread(target=self._watch, name="worker-monitor", daemon=True)
        self._monitor.start()
        log_started(
            config,
            port=self.port,
            tls_port=self.tls_port,
            http_port=self.http_port,
            workers=self._workers,
        )

    def request_stop(self) -> None:
        """Ask ``wait()`` to return (safe from a signal handler)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def wait(self) -> None:
        self._stopping.wait()

    def stop(self, *, grace: float | None = None) -> None:
        """Drain every worker for `grace` seconds, then stop the replica's own parts.

        The map source and the report keep running while workers drain: a
        draining association still routes, so it must still follow the map,
        and the operator must still see its buckets in use.
        """
        grace = self.config.shutdown_grace if grace is None else grace
        drained_by = time.monotonic() + grace
        self.request_stop()
        if self._monitor is not None:
            self._monitor.join(timeout=5.0)
        handles = self._live()
        for handle in handles:
            if handle.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(handle.process.pid or 0, 15)  # SIGTERM: each worker drains
        deadline = time.monotonic() + grace + _EXIT_MARGIN
        for handle in handles:
            handle.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if handle.process.is_alive():
                log_event(log, logging.ERROR, "worker.killed", worker=handle.index)
                handle.process.kill()
                handle.process.join(timeout=5.0)
            handle.close()
        if self._listeners is not None:
            self._listeners.close()
        if self.forwarder is not None:
            self.forwarder.drain(drained_by)
        for part in self._parts:
            part.stop()
        if self._http is not None:
            self._http.stop()
        log_event(log, logging.INFO, "router.stopped", workers=len(handles))

    # -- workers --------------------------------------------------------------

    def _live(self) -> list[WorkerHandle]:
        with self._lock:
            return [handle for handle in self._slots if handle is not None]

    def _asked(self) -> list[WorkerHandle]:
        """The workers to ask: a worker not yet ready has accepted nothing, so it knows nothing."""
        return [handle for handle in self._live() if handle.ready]

    def _map_gateways(self) -> list[str]:
        bucket_map = self.maps.current
        return [] if bucket_map is None else [g.name for g in bucket_map.gateways]

    def _spawn(self, index: int) -> None:
        assert self._listeners is not None
        parent, child = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=worker_main,
            kwargs={
                "config": self.config,
                "listener": self._listeners.plain,
                "tls_listener": self._listeners.tls,
                "conn": child,
                "index": index,
                "log_level": self._log[0],
                "log_format": self._log[1],
            },
            name=f"router-worker-{index}",
        )
        process.start()
        child.close()
        handle = WorkerHandle(index, process, parent, self.usage)
        with self._lock:
            # Under the lock that broadcasts maps: the worker gets the map in
            # use first, then every later one, in order.
            current = self.maps.current
            handle.send(("map", None if current is None else dump_map(current)))
            handle.send(("readiness", dump_readiness(self.maps.readiness)))
            self._slots[index] = handle
            live = sum(1 for slot in self._slots if slot is not None)
        handle.start()
        self.metrics.workers.set(live)
        log_event(log, logging.INFO, "worker.spawned", worker=index, pid=process.pid)

    def _broadcast(self, bucket_map: BucketMap) -> None:
        self.metrics.gateways_known(g.name for g in bucket_map.gateways)
        text = dump_map(bucket_map)
        with self._lock:
            for handle in self._slots:
                if handle is not None:
                    handle.send(("map", text))

    def _broadcast_readiness(self, readiness: Readiness) -> None:
        text = dump_readiness(readiness)
        with self._lock:
            for handle in self._slots:
                if handle is not None:
                    handle.send(("readiness", text))

    def _watch(self) -> None:
        """Replace workers that die, until the replica stops."""
        while not self._stopping.is_set():
            handles = self._live()
            now = time.monotonic()
            waiting = [self._due[i] for i, slot in enumerate(self._slots) if slot is None]
            timeout = max(0.0, min(waiting) - now) if waiting else None
            wait([handle.process.sentinel for handle in handles] + [self._wake_r], timeout)
            if self._stopping.is_set():
                return
            for handle in handles:
                if not handle.alive:
                    self._lost(handle)
            now = time.monotonic()
            for index, slot in enumerate(self._slots):
                if slot is None and self._due[index] <= now:
                    try:
                        self._spawn(index)
                    except Exception:  # out of memory or pids: try again later
                        log.exception("worker spawn failed")
                        self._failures[index] += 1
                        self._due[index] = now + self._delay(index)

    def _lost(self, handle: WorkerHandle) -> None:
        process = handle.process
        process.join(timeout=1.0)
        handle.close()
        lived = time.monotonic() - handle.started
        index = handle.index
        self._failures[index] = 0 if lived >= STABLE_SECONDS else self._failures[index] + 1
        self._due[index] = time.monotonic() + (self._delay(index) if self._failures[index] else 0.0)
        with self._lock:
            self._slots[index] = None
            live = sum(1 for slot in self._slots if slot is not None)
        if process.pid is not None:
            forget: Any = mark_process_dead  # untyped in prometheus_client
            forget(process.pid, str(self._dir))
        self.usage.worker_lost()
        self.metrics.worker_restarts.inc()
        self.metrics.workers.set(live)
        code = process.exitcode
        log_event(
            log,
            logging.ERROR,
            "worker.died",
            worker=index,
            pid=process.pid,
            exit_code=code,
            signal=-code if code is not None and code < 0 else None,
            seconds_alive=round(lived, 1),
            replace_in=round(max(0.0, self._due[index] - time.monotonic()), 1),
        )

    def _delay(self, index: int) -> float:
        failures = self._failures[index]
        return _RESPAWN_DELAYS[min(failures, len(_RESPAWN_DELAYS)) - 1] if failures else 0.0
