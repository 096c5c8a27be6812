"""Where the router's bucket map comes from, and how a new one is applied.

Routing threads read ``MapHolder.current`` once per instance; replacing the
reference is atomic, so a new map applies from the next instance on without
touching any association. An invalid or stale map is refused, logged and
counted, and the one in use stays.

Beside the map, the holder keeps which of its gateways are not Ready
(``MapHolder.readiness``, `gatewaypool.bucketmap.Readiness`): unversioned,
so a new one simply replaces the last, and none (no ``readiness.json`` in
the ConfigMap, no ``--readiness`` file) means all are Ready. Only a router
with a spool acts on it (`gatewaypool_router.spool`); without one an
instance is still sent to its gateway, which may be answering anyway.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from gatewaypool.bucketmap import BucketMap, MapError, Readiness, parse_map, parse_readiness
from gatewaypool.logs import log_event
from gatewaypool_router.metrics import RouterMetrics

log = logging.getLogger(__name__)


class MapHolder:
    """The bucket map in use, and the rules for replacing it."""

    def __init__(self, metrics: RouterMetrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self.current: BucketMap | None = None
        self.readiness = Readiness()
        self._listeners: list[Callable[[BucketMap], None]] = []
        self._readiness_listeners: list[Callable[[Readiness], None]] = []

    def subscribe(self, listener: Callable[[BucketMap], None]) -> None:
        """Call ``listener`` with every map applied from now on (e.g. to report it)."""
        self._listeners.append(listener)

    def subscribe_readiness(self, listener: Callable[[Readiness], None]) -> None:
        """Call ``listener`` with every new readiness from now on."""
        self._readiness_listeners.append(listener)

    def ready(self, gateway: str) -> bool:
        """Whether the map source last said `gateway` is Ready (or said nothing of it)."""
        return self.readiness.ready(gateway)

    def offer_readiness(self, readiness: Readiness, *, source: str) -> bool:
        """Apply `readiness` if it differs from the one in use; return whether it did."""
        with self._lock:
            before = self.readiness
            if readiness == before:
                return False
            self.readiness = readiness
            self._changed.notify_all()
        for name in before.not_ready - readiness.not_ready:
            self._metrics.gateway_not_ready.labels(gateway=name).set(0)
        for name in readiness.not_ready:
            self._metrics.gateway_not_ready.labels(gateway=name).set(1)
        for listener in self._readiness_listeners:
            listener(readiness)
        log_event(
            log,
            logging.INFO,
            "map.readiness",
            source=source,
            not_ready=sorted(readiness.not_ready),
        )
        return True

    def offer(self, candidate: BucketMap, *, source: str) -> bool:
        """Apply ``candidate`` if it is newer; return whether it was applied."""
        with self._lock:
            current = self.current
            if current is not None:
                problem = None
                if candidate.buckets != current.buckets:
                    problem = (
                        f"bucket count {candidate.buckets} differs from {current.buckets}, "
                        "which is fixed for a pool's life"
                    )
                elif candidate.version < current.version:
                    problem = f"version {candidate.version} is older than {current.version}"
                elif candidate.version == current.version:
                    if candidate == current:
                        return False
                    problem = f"content changed but version {candidate.version} was not bumped"
                if problem is not None:
                    self.refuse(problem, source=source)
                    return False
            self.current = candidate
            self._changed.notify_all()
        self._metrics.map_version.set(candidate.version)
        for listener in self._listeners:
            listener(candidate)
        log_event(
            log,
            logging.INFO,
            "map.applied",
            source=source,
            version=candidate.version,
            gateways=len(candidate.gateways),
            buckets=candidate.buckets,
        )
        return True

    def wait_newer(self, version: int, timeout: float) -> BucketMap | None:
        """Wait until a map newer than `version` is applied; return the map in use."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.current is not None and self.current.version > version, timeout
            )
            return self.current

    def refuse(self, problem: str, *, source: str) -> None:
        """Count and log a refused map; the current one stays in use."""
        self._metrics.map_rejected.inc()
        kept = self.current.version if self.current is not None else None
        log_event(log, logging.ERROR, "map.refused", source=source, problem=problem, kept=kept)


class FileMapWatcher:
    """Polls a map file and offers every changed version to the holder.

    Polling once a second is cheap and also works for Kubernetes ConfigMap
    volumes, whose updates arrive as an atomic symlink swap that inotify on
    the file itself would miss.
    """

    def __init__(
        self,
        path: Path,
        holder: MapHolder,
        *,
        interval: float = 1.0,
        readiness: Path | None = None,
    ) -> None:
        self._path = path
        self._holder = holder
        self._interval = interval
        self._readiness = readiness
        self._stop = threading.Event()
        self._seen: bytes | None = None
        self._seen_readiness: bytes | None = None
        self._readiness_unreadable = False
        self._thread = threading.Thread(target=self._run, name="map-watcher", daemon=True)

    def load_now(self) -> bool:
        """Read the file once; return whether a map is in use afterwards.

        The file's bytes, not its inode, size or mtime, decide whether it
        changed: an in-place rewrite of the same size within one timestamp
        tick must not go unnoticed. A map is a few tens of kilobytes, so
        reading it every poll costs nothing. The readiness file
        (``--readiness``), if any, is read in the same poll.
        """
        self._load_readiness()
        try:
            content = self._path.read_bytes()
        except OSError as exc:
            if self._seen is not None or self._holder.current is None:
                reason = exc.strerror or type(exc).__name__
                self._holder.refuse(f"cannot read {self._path}: {reason}", source="file")
            self._seen = None
            return self._holder.current is not None
        digest = hashlib.sha256(content).digest()
        if digest == self._seen:
            return self._holder.current is not None
        self._seen = digest
        source = f"file {self._path}"
        try:
            candidate = parse_map(content.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            self._holder.refuse(f"{self._path}: not UTF-8 text: {exc}", source=source)
        except MapError as exc:
            self._holder.refuse(f"{self._path}: {exc}", source=source)
        else:
            self._holder.offer(candidate, source=source)
        return self._holder.current is not None

    def _load_readiness(self) -> None:
        """Apply the readiness file if it changed: absent, all are Ready; invalid, refused."""
        if self._readiness is None:
            return
        source = f"file {self._readiness}"
        try:
            content: bytes | None = self._readiness.read_bytes()
        except FileNotFoundError:
            content = None
        except OSError as exc:
            if not self._readiness_unreadable:  # once, not on every poll
                reason = exc.strerror or type(exc).__name__
                self._holder.refuse(f"cannot read {self._readiness}: {reason}", source=source)
            self._readiness_unreadable = True
            return
        self._readiness_unreadable = False
        if content is not None and content == self._seen_readiness:
            return
        self._seen_readiness = content
        if content is None:
            self._holder.offer_readiness(Readiness(), source=source)
            return
        try:
            readiness = parse_readiness(content.decode("utf-8-sig"))
        except (UnicodeDecodeError, MapError) as exc:
            self._holder.refuse(f"{self._readiness}: {exc}", source=source)
            return
        self._holder.offer_readiness(readiness, source=source)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.load_now()
            except Exception:  # never let the watcher die: the router would go stale
                log.exception("map watcher iteration failed")
