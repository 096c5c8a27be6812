"""The bucket map from the Kubernetes API, and the router's report back.

In a cluster the operator is the only writer of the map, a ConfigMap the
pool owns. Each router watches that one object (list, then watch with
bookmarks; :class:`ListWatchPlan` decides each request and back-off) and
applies every new version as it arrives (typically within milliseconds of
the write), and
writes what it applied under its own pod name in the pool's report
ConfigMap, which the operator reads to know when all routers agree.

The ``kubernetes`` client is imported here only: a router fed from a file
or from ``--gateway`` does not need it.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from gatewaypool.bucketmap import BucketMap, MapError, Readiness, parse_map, parse_readiness
from gatewaypool.contract import MAP_KEY, READINESS_KEY
from gatewaypool.logs import log_event
from gatewaypool.reports import (
    PENDING_REPORT_SECONDS,
    RouterReport,
    SpoolSummary,
    build_report,
    dump_report,
    report_budget,
)
from gatewaypool_router.bucketusage import BucketUsageView
from gatewaypool_router.config import ObjectRef, RouterConfig
from gatewaypool_router.mapsource import MapHolder

log = logging.getLogger(__name__)

#: The API server ends each watch after this long; the router resumes from the
#: last resourceVersion it saw (a new list only after 410 Gone).
WATCH_SECONDS = 50
#: Client side: connect within 10 s, and give up on a connection silent for
#: 60 s. A half-open TCP connection (a node or a load balancer that died
#: without a RST) sends nothing, so without this a router would keep its map
#: until the kernel's keep-alive gives up, two hours later.
REQUEST_TIMEOUT = (10.0, 60.0)
#: Back-off after a failed request: doubling from the first delay up to the
#: last, each drawn between half and all of it (jitter, so that the routers
#: of a pool, which all fail together when the API server restarts, do not
#: all come back in the same instant).
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: A watch the server ends sooner than this, having sent nothing, did not
#: work (a proxy closing it, a server shutting down): it is retried after a
#: back-off, not at once.
SHORT_WATCH = 1.0

Verb = Literal["list", "watch"]


@dataclass(frozen=True)
class Step:
    """The map watch's next request: a list, or a watch from a resourceVersion."""

    verb: Verb
    resource_version: str | None
    #: Seconds to wait before making it.
    delay: float


class ListWatchPlan:
    """Which request the map watch makes next, and when: the decisions, with no I/O.

    It lists (a list's resourceVersion is the server's current one, so a
    watch from it starts inside the server's history), then watches from the
    newest resourceVersion it saw -- an event's, or a BOOKMARK's, which the
    server sends so that a watch of a quiet object (ours changes rarely, while
    every router writes its report ConfigMap often) still resumes from a
    version the server remembers. A 410 Gone lists again at once the first
    time; a 410 that comes again before anything worked, and any other
    failure, waits with a jittered, doubling back-off. So whatever the server
    answers, the router makes no more than one request per back-off delay,
    apart from that single immediate re-list.
    """

    def __init__(
        self,
        *,
        jitter: Callable[[], float] = random.random,
        first: float = BACKOFF_FIRST,
        most: float = BACKOFF_MAX,
        short_watch: float = SHORT_WATCH,
    ) -> None:
        self._jitter = jitter
        self._first = first
        self._most = most
        self._short_watch = short_watch
        self.resource_version: str | None = None
        #: Failures since a watch last worked.
        self.failures = 0
        self._expired = False
        self._progress = False
        self._delay = 0.0

    def next(self) -> Step:
        """The request to make now (after ``delay``)."""
        if self.resource_version is None:
            return Step("list", None, self._delay)
        return Step("watch", self.resource_version, self._delay)

    def listed(self, resource_version: str | None) -> None:
        """A list answered: watch from its resourceVersion, at once."""
        self.resource_version = resource_version or None
        self._delay = 0.0

    def watching(self) -> None:
        """A watch starts."""
        self._progress = False

    def seen(self, resource_version: str | None) -> None:
        """A watch event or bookmark: resume from its version; the watch works."""
        if resource_version:
            self.resource_version = resource_version
        self._progress = True
        self._worked()

    def ended(self, *, seconds: float) -> float:
        """The server ended a watch; return the delay before the next request."""
        if self._progress or seconds >= self._short_watch:
            self._worked()
            self._delay = 0.0
        else:
            self._delay = self._back_off()
        return self._delay

    def expired(self) -> float:
        """410 Gone: list again, at once if it is the first since a watch worked."""
        self.resource_version = None
        if self._expired:
            self._delay = self._back_off()
        else:
            self._expired = True
            self._delay = 0.0
        return self._delay

    def failed(self) -> float:
        """Any other failure; return the delay before the next request.

        The resourceVersion is kept: a resumed watch misses nothing, and if
        the server no longer remembers it, it answers 410.
        """
        self._delay = self._back_off()
        return self._delay

    def _worked(self) -> None:
        self.failures = 0
        self._expired = False

    def _back_off(self) -> float:
        self.failures += 1
        ceiling: float = min(self._most, self._first * 2.0 ** min(self.failures - 1, 30))
        return ceiling * (0.5 + 0.5 * self._jitter())


def core_api(config: RouterConfig) -> Any:
    """A CoreV1Api for in-cluster use, or for ``--kubeconfig`` outside a cluster."""
    from kubernetes import client
    from kubernetes import config as kube_config

    configuration = client.Configuration()
    # The kubernetes client is untyped: its loaders are called through Any.
    if config.kubeconfig is not None:
        load_kube: Any = kube_config.load_kube_config
        load_kube(config_file=str(config.kubeconfig), client_configuration=configuration)
    else:
        load_incluster: Any = kube_config.load_incluster_config
        load_incluster(client_configuration=configuration)
    return client.CoreV1Api(client.ApiClient(configuration))


class ConfigMapMapWatcher:
    """Watch one ConfigMap and offer every map it holds to the holder.

    The usual list-then-watch, narrowed to one object by a ``metadata.name``
    field selector (RBAC by resourceNames requires it): a list gives the
    object and the server's current resourceVersion, then a watch from
    there, with bookmarks, ended by the server after ``watch_seconds`` and
    resumed from the newest version seen. :class:`ListWatchPlan` decides
    each request and every back-off; ``requests`` counts them by verb.
    """

    def __init__(
        self,
        api: Any,
        ref: ObjectRef,
        holder: MapHolder,
        *,
        watch_seconds: int = WATCH_SECONDS,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
        plan: ListWatchPlan | None = None,
        requests: Callable[[Verb], None] | None = None,
    ) -> None:
        self._api = api
        self._ref = ref
        self._holder = holder
        self._watch_seconds = watch_seconds
        self._request_timeout = request_timeout
        self._plan = plan if plan is not None else ListWatchPlan()
        self._requests = requests
        self._stop = threading.Event()
        self._seen: str | None = None
        self._seen_readiness: str | None = None
        self._thread = threading.Thread(target=self._run, name="map-watch", daemon=True)

    def load_now(self) -> bool:
        """One list, so a starting router is ready before its watch begins."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._list()
        except ApiException as exc:
            self._plan.failed()
            self._holder.refuse(f"cannot read ConfigMap {self._ref}: {exc.reason}", source="api")
            return False
        except OSError as exc:  # API server unreachable: the watch loop retries
            self._plan.failed()
            self._holder.refuse(f"cannot reach the API server: {exc}", source="api")
            return False
        return self._holder.current is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _count(self, verb: Verb) -> None:
        if self._requests is not None:
            self._requests(verb)

    def _list(self) -> None:
        self._count("list")
        listed = self._api.list_namespaced_config_map(
            self._ref.namespace,
            field_selector=f"metadata.name={self._ref.name}",
            _request_timeout=self._request_timeout,
        )
        items = [i for i in listed.items or [] if i.metadata.name == self._ref.name]
        if items:
            self._consider(items[0])
        else:
            self._holder.refuse(f"ConfigMap {self._ref} not found", source="api")
        self._plan.listed(getattr(listed.metadata, "resource_version", None))

    def _consider(self, body: Any) -> None:
        data = getattr(body, "data", None) or {}
        text = data.get(MAP_KEY)
        if text is None:
            self._holder.refuse(f"ConfigMap {self._ref} has no {MAP_KEY!r} key", source="api")
            return
        source = f"configmap {self._ref}"
        if text != self._seen:
            self._seen = text
            try:
                candidate = parse_map(text)
            except MapError as exc:
                self._holder.refuse(str(exc), source=source)
            else:
                self._holder.offer(candidate, source=source)
        self._consider_readiness(data.get(READINESS_KEY), source=source)

    def _consider_readiness(self, text: str | None, *, source: str) -> None:
        """Apply the readiness beside the map; none (an older operator) means all are Ready."""
        if text == self._seen_readiness:
            return
        self._seen_readiness = text
        if text is None:
            self._holder.offer_readiness(Readiness(), source=source)
            return
        try:
            readiness = parse_readiness(text)
        except MapError as exc:
            self._holder.refuse(f"{READINESS_KEY}: {exc}", source=source)
            return
        self._holder.offer_readiness(readiness, source=source)

    def _watch(self, resource_version: str | None) -> None:
        """Follow one watch until the server ends it."""
        from kubernetes import watch

        watch_class: Any = watch.Watch  # the client is untyped
        stream = watch_class()
        started = time.monotonic()
        self._count("watch")
        self._plan.watching()
        try:
            for event in stream.stream(
                self._api.list_namespaced_config_map,
                self._ref.namespace,
                field_selector=f"metadata.name={self._ref.name}",
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_seconds,
                _request_timeout=self._request_timeout,
            ):
                if self._stop.is_set():
                    return
                raw = event.get("raw_object") or {}
                self._plan.seen((raw.get("metadata") or {}).get("resourceVersion"))
                if event["type"] == "BOOKMARK":
                    continue  # a resourceVersion only (the client leaves it a dict)
                body = event["object"]
                if getattr(body.metadata, "name", None) != self._ref.name:
                    continue  # the field selector already says so; a server may ignore it
                if event["type"] in ("ADDED", "MODIFIED"):
                    self._consider(body)
                elif event["type"] == "DELETED":
                    log_event(
                        log,
                        logging.ERROR,
                        "map.deleted",
                        configmap=str(self._ref),
                        kept=self._holder.current.version if self._holder.current else None,
                    )
        finally:
            stream.stop()
        self._plan.ended(seconds=time.monotonic() - started)

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            step = self._plan.next()
            if step.delay and self._stop.wait(step.delay):
                return
            try:
                if step.verb == "list":
                    self._list()
                else:
                    self._watch(step.resource_version)
            except ApiException as exc:
                if exc.status == 410:
                    # Expected now and then (etcd compaction, an API server
                    # restart): list again, at once unless it repeats.
                    delay = self._plan.expired()
                    log_event(
                        log,
                        logging.INFO,
                        "map.watch_expired",
                        configmap=str(self._ref),
                        retry_in=round(delay, 2),
                    )
                    continue
                self._failed(exc)
            except Exception as exc:  # the API server restarts, the network blips
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        delay = self._plan.failed()
        log_event(
            log,
            logging.WARNING,
            "map.watch_failed",
            configmap=str(self._ref),
            error=str(exc)[:200],
            retry_in=round(delay, 2),
        )


class RouterReporter:
    """Write this router's report into the pool's report ConfigMap, under its pod name.

    One key per router pod, merged into the ConfigMap's data, so routers
    never overwrite each other. The report (:mod:`gatewaypool.reports`) says
    which map version the router applied, when it started, when it last
    routed into each moving bucket and how many associations it holds open
    per gateway. It is written at once on every new map, every
    ``PENDING_REPORT_SECONDS`` while the map has moving buckets (the
    operator completes a move only on fresh news), and every ``heartbeat``
    seconds otherwise, so the operator can tell a live router from a stale
    entry.
    """

    def __init__(
        self,
        api: Any,
        ref: ObjectRef,
        *,
        pod_name: str,
        holder: MapHolder,
        usage: BucketUsageView,
        spool: Callable[[int], SpoolSummary] | None = None,
        heartbeat: float = 15.0,
        pending_interval: float = PENDING_REPORT_SECONDS,
    ) -> None:
        self._api = api
        self._ref = ref
        self._pod = pod_name
        self._holder = holder
        self._usage = usage
        self._spool = spool
        self._heartbeat = heartbeat
        self._pending_interval = pending_interval
        self._started = datetime.now(UTC)
        self._started_monotonic = time.monotonic()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        holder.subscribe(self._on_map)
        usage.subscribe(self._wake.set)  # a held instance: tell the operator at once

    def _on_map(self, _bucket_map: BucketMap) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def build(self) -> RouterReport:
        """The report as of now."""
        current = self._holder.current
        now = time.monotonic()
        reported_at = self._started + timedelta(seconds=now - self._started_monotonic)
        if current is None:
            return build_report(
                map_version=None,
                buckets=0,
                started_at=self._started,
                reported_at=reported_at,
                ages={},
                open_associations={},
                spool=self._spool(0) if self._spool is not None else None,
            )
        return build_report(
            map_version=current.version,
            buckets=current.buckets,
            started_at=self._started,
            reported_at=reported_at,
            ages=self._usage.ages(current.moving, now=now),
            open_associations=_by_index(current, self._usage.open_associations()),
            spool=self._spool(current.buckets) if self._spool is not None else None,
        )

    def report(self) -> bool:
        """Patch our key now; return whether the API accepted it."""
        text = dump_report(self.build(), budget=REPORT_BUDGET)
        try:
            self._api.patch_namespaced_config_map(
                self._ref.name,
                self._ref.namespace,
                {"data": {self._pod: text}},
                _request_timeout=REQUEST_TIMEOUT,
            )
        except Exception as exc:
            log_event(
                log,
                logging.WARNING,
                "report.failed",
                configmap=str(self._ref),
                error=str(exc)[:200],
            )
            return False
        return True

    def _interval(self) -> float:
        current = self._holder.current
        return self._pending_interval if current is not None and current.moving else self._heartbeat

    def _run(self) -> None:
        last = float("-inf")
        while not self._stop.is_set():
            woke = self._wake.wait(timeout=max(0.0, last + self._interval() - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            if woke or time.monotonic() - last >= self._interval():
                if not self.report():
                    self._stop.wait(min(2.0, self._interval()))  # back off; the loop retries
                    continue
                last = time.monotonic()


#: Routers of one pool share the report ConfigMap (1 MiB): 100 replicas, the
#: CRD's maximum, plus a rolling update's 25 % surge.
REPORT_BUDGET = report_budget(125)

_ORDINAL = re.compile(r"-(\d+)$")


def _by_index(current: BucketMap, open_by_name: Mapping[str, int]) -> dict[int, int]:
    """Open associations per gateway index of `current`.

    A gateway no longer in the map (it is leaving, or left) is counted at
    the ordinal its name ends with, which is its index in every map the
    operator publishes; only a name without one is left out.
    """
    index = {gateway.name: i for i, gateway in enumerate(current.gateways)}
    result: dict[int, int] = {}
    for name, count in open_by_name.items():
        position = index.get(name)
        if position is None:
            match = _ORDINAL.search(name)
            if match is None:
                continue
            position = int(match.group(1))
        result[position] = result.get(position, 0) + count
    return result
