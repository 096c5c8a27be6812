"""The router process: listener, association threads, map source, HTTP.

One thread per incoming association keeps the data path a plain sequence
of blocking reads and writes (the GIL is released in every socket call);
the number of associations is capped by ``max_associations``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Protocol

from gatewaypool.bucketmap import balanced_map
from gatewaypool.logs import log_event
from gatewaypool_router.association import IncomingAssociation
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.httpserver import HealthServer
from gatewaypool_router.load import StudiesInFlight
from gatewaypool_router.mapsource import FileMapWatcher, MapHolder
from gatewaypool_router.metrics import RouterMetrics
from gatewaypool_router.pdus import tune_socket
from gatewaypool_router.progress import StallWatch
from gatewaypool_router.usage import Usage

log = logging.getLogger(__name__)


class _Part(Protocol):
    """A background part of the router (map watch, reporter)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class Router:
    """A running router; ``start()`` returns once it accepts associations."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
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
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._watcher: FileMapWatcher | None = None
        self._kube_api: object | None = None
        self._stoppables: list[_Part] = []
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
        if config.map_file is not None:
            self._watcher = FileMapWatcher(
                config.map_file, self.maps, interval=config.map_poll_interval
            )
            self._watcher.load_now()
            self._watcher.start()
        elif config.map_configmap is not None:
            from gatewaypool_router.kubesource import ConfigMapMapWatcher, core_api

            self._kube_api = core_api(config)
            map_watch = ConfigMapMapWatcher(
                self._kube_api,
                config.map_configmap,
                self.maps,
                watch_seconds=config.watch_seconds,
            )
            map_watch.load_now()
            self._stoppables.append(map_watch)
        else:
            self.maps.offer(
                balanced_map(config.gateways, buckets=config.buckets), source="command line"
            )
        if config.report_configmap is not None:
            from gatewaypool_router.kubesource import RouterReporter, core_api

            api = self._kube_api if self._kube_api is not None else core_api(config)
            reporter = RouterReporter(
                api,
                config.report_configmap,
                pod_name=config.pod_name,
                holder=self.maps,
                usage=self.usage,
            )
            self._stoppables.append(reporter)
        self._stoppables.append(
            StallWatch(
                self._watched,
                limit=config.stall_warning,
                on_overdue=self.metrics.overdue_instances.inc,
            )
        )
        for part in self._stoppables:
            part.start()
        listener = socket.create_server((config.bind, config.port), reuse_port=False, backlog=128)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._http = HealthServer(self, bind=config.http_bind, port=config.http_port)
        self._http.start()
        self.http_port = self._http.port
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
        if self._watcher is not None:
            self._watcher.stop()
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
            except OSError:
                if self._stopping.is_set():
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
