"""The router process: listener, association threads, map source, HTTP.

One thread per incoming association keeps the data path a plain sequence
of blocking reads and writes (the GIL is released in every socket call);
the number of associations is capped by ``max_associations``.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time

from prometheus_client import generate_latest

from gatewaypool.logs import log_event
from gatewaypool_router import sources
from gatewaypool_router.association import IncomingAssociation
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.httpserver import HealthServer
from gatewaypool_router.load import StudiesInFlight
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.metrics import RouterMetrics
from gatewaypool_router.pdus import tune_socket
from gatewaypool_router.progress import StallWatch
from gatewaypool_router.usage import Usage

log = logging.getLogger(__name__)


class Router:
    """A running router; ``start()`` returns once it accepts associations."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        listener: socket.socket | None = None,
        supervised: bool = False,
    ) -> None:
        """Prepare a router; nothing runs before :meth:`start`.

        Parameters
        ----------
        listener
            A listening socket to accept on instead of opening one: a worker
            process shares its supervisor's.
        supervised
            A worker of a supervisor (``--workers`` above 1): the supervisor
            holds the replica's map source, report and HTTP endpoint, and
            hands maps in through :attr:`maps`; this router only routes.
        """
        self.config = config
        self._supervised = supervised
        self.metrics = RouterMetrics()
        self.maps = MapHolder(self.metrics)
        self.maps.subscribe(
            lambda applied: self.metrics.gateways_known(g.name for g in applied.gateways)
        )
        self.usage = Usage()
        self.studies = StudiesInFlight(quiet_seconds=config.study_quiet_seconds)
        self.metrics.export_studies_in_flight(self.studies, self._map_gateways)
        self._lock = threading.Lock()
        self._active: set[threading.Thread] = set()
        self._associations: dict[threading.Thread, IncomingAssociation] = {}
        self._stopping = threading.Event()
        self._listener: socket.socket | None = listener
        self._acceptor: threading.Thread | None = None
        self._stoppables: list[sources.Part] = []
        self._http: HealthServer | None = None
        self.port = config.port
        self.http_port = config.http_port

    # -- state for health --------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.maps.current is not None and self.is_alive

    @property
    def is_alive(self) -> bool:
        return self._acceptor is not None and self._acceptor.is_alive()

    @property
    def ready_version(self) -> int | None:
        bucket_map = self.maps.current
        return bucket_map.version if bucket_map is not None and self.is_alive else None

    def metrics_text(self) -> bytes:
        return generate_latest(self.metrics.registry)

    def _map_gateways(self) -> list[str]:
        bucket_map = self.maps.current
        return [] if bucket_map is None else [g.name for g in bucket_map.gateways]

    @property
    def active_associations(self) -> int:
        with self._lock:
            return len(self._active)

    # -- life cycle --------------------------------------------------------

    def start(self) -> None:
        config = self.config
        if not self._supervised:
            parts, api = sources.map_source(config, self.maps)
            self._stoppables.extend(parts)
            report = sources.reporter(config, api, self.maps, self.usage)
            if report is not None:
                self._stoppables.append(report)
        self._stoppables.append(
            StallWatch(
                self._watched,
                limit=config.stall_warning,
                on_overdue=self.metrics.overdue_instances.inc,
            )
        )
        for part in self._stoppables:
            part.start()
        listener = self._listener
        if listener is None:
            listener = socket.create_server(
                (config.bind, config.port), reuse_port=False, backlog=128
            )
            self._listener = listener
        self.port = listener.getsockname()[1]
        if not self._supervised:
            self._http = HealthServer(self, bind=config.http_bind, port=config.http_port)
            self._http.start()
            self.http_port = self._http.port
            self.metrics.workers.set(1)
        self._acceptor = threading.Thread(target=self._accept_loop, name="acceptor", daemon=True)
        self._acceptor.start()
        log_event(
            log,
            logging.INFO,
            "router.started",
            ae_title=config.ae_title,
            port=self.port,
            http_port=self.http_port,
            max_associations=config.max_associations,
            max_pdu=config.max_pdu,
            allowed_calling_aes=sorted(config.allowed_calling_aes) or "any",
        )

    def request_stop(self) -> None:
        """Ask ``wait()`` to return (safe from a signal handler)."""
        self._stopping.set()

    def stop(self, *, grace: float | None = None) -> None:
        """Stop accepting, let running associations finish for ``grace`` seconds."""
        grace = self.config.shutdown_grace if grace is None else grace
        self._stopping.set()
        if self._listener is not None:
            # shutdown() wakes the acceptor blocked in accept(); close() alone does not.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for part in self._stoppables:
            part.stop()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            with self._lock:
                remaining = list(self._active)
            if not remaining:
                break
            remaining[0].join(timeout=max(0.0, deadline - time.monotonic()))
        if self._acceptor is not None:
            self._acceptor.join(timeout=1.0)
        if self._http is not None:
            self._http.stop()
        log_event(log, logging.INFO, "router.stopped", unfinished=self.active_associations)

    def wait(self) -> None:
        """Block until ``request_stop()`` or ``stop()`` is called."""
        self._stopping.wait()

    # -- accepting ---------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, address = self._listener.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                if self._supervised and exc.errno == errno.EINVAL:
                    # A sibling worker shut the shared listener down: the replica
                    # is stopping, and our own SIGTERM is on its way.
                    log_event(log, logging.INFO, "router.listener_closed")
                    return
                log.exception("accept failed")
                time.sleep(0.1)  # back off from a persistent error (EMFILE), not a sync wait
                continue
            tune_socket(sock)
            peer = f"{address[0]}:{address[1]}"
            with self._lock:
                over_limit = len(self._active) >= self.config.max_associations
                thread = threading.Thread(
                    target=self._serve,
                    args=(sock, peer, over_limit),
                    name=f"assoc-{peer}",
                    daemon=True,
                )
                if not over_limit:
                    self._active.add(thread)
            thread.start()

    def _serve(self, sock: socket.socket, peer: str, over_limit: bool) -> None:
        association = IncomingAssociation(
            sock,
            peer,
            config=self.config,
            metrics=self.metrics,
            maps=self.maps,
            usage=self.usage,
            studies=self.studies,
        )
        me = threading.current_thread()
        with self._lock:
            self._associations[me] = association
        try:
            association.serve(over_limit=over_limit)
        finally:
            with self._lock:
                self._active.discard(me)
                self._associations.pop(me, None)

    def _watched(self) -> list[IncomingAssociation]:
        with self._lock:
            return list(self._associations.values())
