"""A worker process of a router replica (``--workers`` above 1), and its side of the pipe.

A worker is a whole router minus what a replica must have once: it accepts
on the listening socket its supervisor opened (the kernel hands each new
connection to one worker blocked in ``accept()``), and routes. It has no map
source, no report and no HTTP endpoint: the supervisor sends it every map it
applies, and asks it, over the pipe, what the replica's report and
``/metrics`` need of it.

Messages are tuples pickled by :class:`multiprocessing.connection.Connection`:

- supervisor to worker: ``("map", text)``, the first one before anything
  else (``None`` when it has no map yet); ``("readiness", text)``, the
  gateways the map source marks not Ready, right after it and on every
  change; ``("ages", id, buckets, now)``,
  ``("open", id)``, ``("studies", id)``, ``("study", id, uid)`` (its record
  of one study, as :func:`gatewaypool.studyrecord.dump_entry` writes it, or
  None), each answered by ``("reply", id, value)``;
- worker to supervisor, unasked: ``("ready",)`` once it answers questions
  (just before it accepts: a worker not ready has routed nothing), and
  ``("held",)`` when it starts holding an instance of a closing bucket
  (the report must say so at once).

A worker whose pipe closes (its supervisor died) stops as on SIGTERM, so no
worker outlives its replica.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from gatewaypool import logs
from gatewaypool.bucketmap import MapError, parse_map, parse_readiness
from gatewaypool.logs import log_event
from gatewaypool.studyrecord import dump_entry
from gatewaypool_router.config import RouterConfig

if TYPE_CHECKING:
    from gatewaypool_router.server import Router

log = logging.getLogger(__name__)

#: Set by the supervisor for its workers; values live in files there.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class SupervisorLink:
    """The worker's end of its pipe: maps in, answers and news out."""

    def __init__(self, conn: Connection, router: Router) -> None:
        self._conn = conn
        self._router = router
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="supervisor-link", daemon=True)

    def start(self) -> None:
        self._router.usage.subscribe(lambda: self.send(("held",)))
        self._thread.start()

    def send(self, message: tuple[Any, ...]) -> None:
        """Send `message`; a closed pipe is ignored (the reader sees it and stops us)."""
        with self._send_lock, contextlib.suppress(OSError):
            self._conn.send(message)

    def _run(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                log_event(log, logging.WARNING, "worker.orphaned")
                self._router.request_stop()
                return
            try:
                self._handle(message)
            except Exception:  # one bad message must not cut the worker off its maps
                log.exception("supervisor message failed")

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        router = self._router
        if kind == "map":
            try:
                candidate = parse_map(message[1])
            except MapError as exc:  # the supervisor applied it: never expected
                router.maps.refuse(str(exc), source="supervisor")
                return
            router.maps.offer(candidate, source="supervisor")
        elif kind == "readiness":
            router.maps.offer_readiness(parse_readiness(message[1]), source="supervisor")
        elif kind == "ages":
            _, request, buckets, now = message
            self.send(("reply", request, router.usage.ages(buckets, now=now)))
        elif kind == "open":
            self.send(("reply", message[1], dict(router.usage.open_associations())))
        elif kind == "studies":
            self.send(("reply", message[1], router.studies.snapshot()))
        elif kind == "study":
            _, request, study_uid = message
            entry = router.record.get(study_uid)
            self.send(("reply", request, None if entry is None else dump_entry(entry)))


def worker_main(
    *,
    config: RouterConfig,
    listener: socket.socket | None,
    tls_listener: socket.socket | None = None,
    conn: Connection,
    index: int,
    log_level: str,
    log_format: str,
) -> None:
    """Run one worker until SIGTERM or its supervisor goes away (a spawned process's target).

    Parameters
    ----------
    config
        The replica's configuration; its map source options are not used here.
    listener, tls_listener
        The replica's listening sockets (plain and TLS port; either may be
        None), shared by all its workers. Each worker makes its own TLS
        context from the configured files.
    conn
        This worker's pipe to its supervisor.
    index
        The worker's slot (0 .. workers-1), on every log line it writes; a
        replacement takes the slot of the worker it replaces.
    """
    logs.configure(level=log_level, fmt=log_format, context={"worker": index})
    if MULTIPROC_ENV not in os.environ:
        # Metrics kept in this process's memory would never reach /metrics.
        print("gatewaypool router worker: no PROMETHEUS_MULTIPROC_DIR", file=sys.stderr)
        sys.exit(2)
    from gatewaypool_router.server import Listeners, Router

    listeners = Listeners(plain=listener, tls=tls_listener)
    router = Router(config, listeners=listeners, supervised=True)
    link = SupervisorLink(conn, router)

    def on_signal(signum: int, _frame: object) -> None:
        log_event(log, logging.INFO, "router.signal", signal=signal.Signals(signum).name)
        router.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The supervisor's first message is the map in use (None before it has
    # one): applied before accepting, so no association meets a worker without
    # the map its replica reports.
    _, first = conn.recv()
    if first is not None:
        router.maps.offer(parse_map(first), source="supervisor")
    link.start()
    # Ready before accepting: from its first association on, the worker must
    # answer the supervisor's questions (the report counts on it).
    link.send(("ready",))
    router.start()
    log_event(log, logging.INFO, "worker.started", pid=os.getpid())
    router.wait()
    router.stop()
    conn.close()
