"""The router process: listener, association threads, map source, HTTP.

One thread per incoming association keeps the data path a plain sequence
of blocking reads and writes (the GIL is released in every socket call);
the number of associations is capped by ``max_associations``.

With ``--tls-cert`` a second listener serves the TLS port, each accepted
connection's handshake running on that connection's own thread (within
``--acse-timeout``), so a slow or silent caller never holds up the accept
loop or anyone else.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from dataclasses import dataclass

from prometheus_client import generate_latest

from gatewaypool.logs import log_event
from gatewaypool.studyrecord import StudyEntry
from gatewaypool_router import sources, tls
from gatewaypool_router.association import IncomingAssociation
from gatewaypool_router.bucketusage import BucketUsage
from gatewaypool_router.catalog import GatewayCatalog
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.httpserver import HealthServer
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.metrics import RouterMetrics
from gatewaypool_router.pdus import tune_socket
from gatewaypool_router.progress import StallWatch
from gatewaypool_router.scanner import HOT_PATH
from gatewaypool_router.spool.forwarder import SpoolForwarder
from gatewaypool_router.spool.intake import SpoolIntake
from gatewaypool_router.studiesinflight import StudiesInFlight
from gatewaypool_router.studyrecorder import StudyRecorder

log = logging.getLogger(__name__)


def log_started(
    config: RouterConfig, *, port: int, tls_port: int, http_port: int, workers: int | None = None
) -> None:
    """Log ``router.started`` with what the router listens on and admits.

    A port of 0 is one the router does not open; `workers` is given by the
    supervisor of worker processes only.
    """
    extra = {} if workers is None else {"workers": workers}
    log_event(
        log,
        logging.INFO,
        "router.started",
        ae_title=config.ae_title,
        port=port or None,
        tls_port=tls_port or None,
        mutual_tls=config.tls_client_ca is not None,
        gateway_tls=config.gateway_tls_ca is not None,
        http_port=http_port,
        **extra,
        max_associations=config.max_associations,
        max_pdu=config.max_pdu,
        allowed_calling_aes=sorted(config.allowed_calling_aes) or "any",
        # Which scanner this process runs: "native" (router/native) or the
        # Python fallback (GATEWAYPOOL_HOT_PATH; gatewaypool_router.scanner).
        hot_path=HOT_PATH,
    )


@dataclass(frozen=True, slots=True)
class Listeners:
    """A replica's listening sockets: the plain DICOM port, the TLS port, or both.

    Both are plain TCP sockets: TLS starts on each accepted connection, in
    its association's thread.
    """

    plain: socket.socket | None
    tls: socket.socket | None

    @classmethod
    def open(cls, config: RouterConfig) -> Listeners:
        plain = (
            socket.create_server((config.bind, config.port), backlog=128)
            if config.plain_port
            else None
        )
        secure = None
        if config.tls_cert is not None:
            try:
                secure = socket.create_server((config.bind, config.tls_port), backlog=128)
            except OSError:
                if plain is not None:
                    plain.close()
                raise
        return cls(plain=plain, tls=secure)

    def each(self) -> list[tuple[socket.socket, bool]]:
        """(socket, is TLS) for every port listened on."""
        pairs = [(self.plain, False), (self.tls, True)]
        return [(sock, secure) for sock, secure in pairs if sock is not None]

    def close(self) -> None:
        for sock, _ in self.each():
            sock.close()


class Router:
    """A running router; ``start()`` returns once it accepts associations."""

    def __init__(
        self,
        config: RouterConfig,
        *,
        listeners: Listeners | None = None,
        supervised: bool = False,
    ) -> None:
        """Prepare a router; nothing runs before :meth:`start`.

        Parameters
        ----------
        listeners
            Listening sockets to accept on instead of opening them: a worker
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
        self.usage = BucketUsage()
        self.studies = StudiesInFlight(quiet_seconds=config.study_quiet_seconds)
        self.metrics.export_studies_in_flight(self.studies, self._map_gateways)
        self.record = StudyRecorder(capacity=config.study_record_size)
        self._lock = threading.Lock()
        self._active: set[threading.Thread] = set()
        self._associations: dict[threading.Thread, IncomingAssociation] = {}
        self._stopping = threading.Event()
        self._listeners: Listeners | None = listeners
        self._acceptors: list[threading.Thread] = []
        self._stoppables: list[sources.Part] = []
        self._http: HealthServer | None = None
        self._inbound_tls: tls.ReloadingContext | None = None
        self._gateway_tls: tls.ReloadingContext | None = None
        self.catalog: GatewayCatalog | None = None
        #: The spool on the data path (each worker has one), and its forwarder
        #: (only in the process that holds the map source).
        self.spool = SpoolIntake(config, self.maps) if config.spool_dir is not None else None
        self.forwarder: SpoolForwarder | None = None
        #: The plain port (0 with --no-plain-port) and the TLS port (0 without TLS).
        self.port = config.port
        self.tls_port = 0
        self.http_port = config.http_port

    # -- state for health --------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.maps.current is not None and self.is_alive

    @property
    def is_alive(self) -> bool:
        return bool(self._acceptors) and all(thread.is_alive() for thread in self._acceptors)

    @property
    def ready_version(self) -> int | None:
        bucket_map = self.maps.current
        return bucket_map.version if bucket_map is not None and self.is_alive else None

    def metrics_text(self) -> bytes:
        return generate_latest(self.metrics.registry)

    def study(self, study_uid: str) -> StudyEntry:
        entry = self.record.get(study_uid)
        return entry if entry is not None else StudyEntry(study_uid)

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
            if config.spool_dir is not None:
                # Recovered before the first association can write to it.
                self.forwarder = SpoolForwarder(config, self.maps, record=self.record)
                self.forwarder.recover()
                self.forwarder.register(self.metrics.registry)
            parts, api = sources.map_source(config, self.maps, self.metrics)
            self._stoppables.extend(parts)
            summary = self.forwarder.summary if self.forwarder is not None else None
            report = sources.reporter(config, api, self.maps, self.usage, spool=summary)
            if report is not None:
                self._stoppables.append(report)
        self._stoppables.append(
            StallWatch(
                self._watched,
                limit=config.stall_warning,
                on_overdue=self.metrics.overdue_instances.inc,
            )
        )
        # Built in this process (a worker builds its own): a bad file stops the start.
        self._inbound_tls = tls.inbound_for(config, on_reload=self._tls_reloaded)
        self._gateway_tls = tls.outbound_for(config, on_reload=self._tls_reloaded)
        # Subscribed before the map source starts, so the first map is probed too.
        self.catalog = GatewayCatalog(config, self.maps, gateway_tls=self._gateway_tls)
        self.catalog.start()
        for part in self._stoppables:
            part.start()
        if self.forwarder is not None:
            self.forwarder.start()
        listeners = self._listeners
        if listeners is None:
            listeners = Listeners.open(config)
            self._listeners = listeners
        self.port = listeners.plain.getsockname()[1] if listeners.plain is not None else 0
        self.tls_port = listeners.tls.getsockname()[1] if listeners.tls is not None else 0
        if not self._supervised:
            self._http = HealthServer(self, bind=config.http_bind, port=config.http_port)
            self._http.start()
            self.http_port = self._http.port
            self.metrics.workers.set(1)
        for sock, secure in listeners.each():
            acceptor = threading.Thread(
                target=self._accept_loop,
                args=(sock, secure),
                name="acceptor-tls" if secure else "acceptor",
                daemon=True,
            )
            self._acceptors.append(acceptor)
            acceptor.start()
        log_started(config, port=self.port, tls_port=self.tls_port, http_port=self.http_port)

    def request_stop(self) -> None:
        """Ask ``wait()`` to return (safe from a signal handler)."""
        self._stopping.set()

    def stop(self, *, grace: float | None = None) -> None:
        """Stop accepting, let running associations finish for ``grace`` seconds.

        The spool's forwarder then forwards for what is left of ``grace``.
        """
        grace = self.config.shutdown_grace if grace is None else grace
        deadline = time.monotonic() + grace
        self._stopping.set()
        if self._listeners is not None:
            for sock, _ in self._listeners.each():
                # shutdown() wakes the acceptor blocked in accept(); close() alone does not.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._listeners.close()
        for part in self._stoppables:
            part.stop()
        while time.monotonic() < deadline:
            with self._lock:
                remaining = list(self._active)
            if not remaining:
                break
            remaining[0].join(timeout=max(0.0, deadline - time.monotonic()))
        for acceptor in self._acceptors:
            acceptor.join(timeout=1.0)
        if self.forwarder is not None:
            self.forwarder.drain(deadline)
        if self._http is not None:
            self._http.stop()
        log_event(log, logging.INFO, "router.stopped", unfinished=self.active_associations)

    def wait(self) -> None:
        """Block until ``request_stop()`` or ``stop()`` is called."""
        self._stopping.wait()

    # -- accepting ---------------------------------------------------------

    def _accept_loop(self, listener: socket.socket, secure: bool) -> None:
        while not self._stopping.is_set():
            try:
                sock, address = listener.accept()
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
                    args=(sock, peer, over_limit, secure),
                    name=f"assoc-{peer}",
                    daemon=True,
                )
                if not over_limit:
                    self._active.add(thread)
            thread.start()

    def _serve(self, sock: socket.socket, peer: str, over_limit: bool, secure: bool) -> None:
        me = threading.current_thread()
        subject: str | None = None
        if secure:
            try:
                sock, subject = self._handshake(sock, peer)
            except tls.HandshakeError:
                with self._lock:
                    self._active.discard(me)
                return
        association = IncomingAssociation(
            sock,
            peer,
            config=self.config,
            metrics=self.metrics,
            maps=self.maps,
            usage=self.usage,
            studies=self.studies,
            secure=secure,
            client_subject=subject,
            gateway_tls=self._gateway_tls,
            catalog=self.catalog,
            spool=self.spool,
            record=self.record,
        )
        with self._lock:
            self._associations[me] = association
        try:
            association.serve(over_limit=over_limit)
        finally:
            with self._lock:
                self._active.discard(me)
                self._associations.pop(me, None)

    def _handshake(self, sock: socket.socket, peer: str) -> tuple[socket.socket, str | None]:
        """TLS on an accepted connection, in its own thread, within --acse-timeout.

        Returns the TLS socket and its verified client certificate's subject
        (None without one). A failed handshake (a plain DICOM caller, a
        certificate from another CA, none where mutual TLS wants one) is
        logged, counted as refusal ``tls_handshake``, and raised.
        """
        assert self._inbound_tls is not None
        try:
            secure = tls.accept(sock, self._inbound_tls.current(), timeout=self.config.acse_timeout)
        except tls.HandshakeError as exc:
            self.metrics.refusals.labels(reason="tls_handshake").inc()
            log_event(log, logging.WARNING, "connection.tls_refused", peer=peer, reason=str(exc))
            raise
        try:
            subject = tls.peer_subject(secure)
        except ValueError as exc:  # verified by OpenSSL yet unparsable: treat as no subject
            log_event(
                log,
                logging.WARNING,
                "connection.tls_subject_unreadable",
                peer=peer,
                reason=str(exc),
            )
            subject = None
        return secure, subject

    def _tls_reloaded(self, context: str, applied: bool) -> None:
        result = "applied" if applied else "failed"
        self.metrics.tls_reloads.labels(context=context, result=result).inc()

    def _watched(self) -> list[IncomingAssociation]:
        with self._lock:
            return list(self._associations.values())
