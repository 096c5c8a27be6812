"""The bucket map from the Kubernetes API, and the router's report back.

In a cluster the operator is the only writer of the map, a ConfigMap the
pool owns. Each router watches that one object and applies every new
version as it arrives (typically within milliseconds of the write), and
writes what it applied under its own pod name in the pool's report
ConfigMap, which the operator reads to know when all routers agree.

The ``kubernetes`` client is imported here only: a router fed from a file
or from ``--gateway`` does not need it.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from gatewaypool.bucketmap import BucketMap, MapError, parse_map
from gatewaypool.contract import MAP_KEY
from gatewaypool.logs import log_event
from gatewaypool.reports import (
    PENDING_REPORT_SECONDS,
    RouterReport,
    build_report,
    dump_report,
    report_budget,
)
from gatewaypool_router.config import ObjectRef, RouterConfig
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.usage import UsageView

log = logging.getLogger(__name__)

#: The API server ends each watch after this long; the router resumes from the
#: last resourceVersion it saw (a new list only after 410 Gone).
WATCH_SECONDS = 50
#: Client side: connect within 10 s, and give up on a connection silent for
#: 60 s. A half-open TCP connection (a node or a load balancer that died
#: without a RST) sends nothing, so without this a router would keep its map
#: until the kernel's keep-alive gives up, two hours later.
REQUEST_TIMEOUT = (10.0, 60.0)
_RETRY_SECONDS = (0.5, 1, 2, 5, 10)


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

    The usual list-then-watch: one GET gives the object and its
    resourceVersion, then a watch from that version, ended by the server
    after ``watch_seconds`` and resumed from the last version seen. A
    resume the server answers 410 Gone (its history no longer reaches that
    far back) starts over with a GET, so no change is ever missed.
    """

    def __init__(
        self,
        api: Any,
        ref: ObjectRef,
        holder: MapHolder,
        *,
        watch_seconds: int = WATCH_SECONDS,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
    ) -> None:
        self._api = api
        self._ref = ref
        self._holder = holder
        self._watch_seconds = watch_seconds
        self._request_timeout = request_timeout
        self._stop = threading.Event()
        self._seen: str | None = None
        self._resource_version: str | None = None
        self._thread = threading.Thread(target=self._run, name="map-watch", daemon=True)

    def load_now(self) -> bool:
        """One GET, so a starting router is ready before its watch begins."""
        from kubernetes.client.exceptions import ApiException

        try:
            self._list()
        except ApiException as exc:
            self._holder.refuse(f"cannot read ConfigMap {self._ref}: {exc.reason}", source="api")
            return False
        except OSError as exc:  # API server unreachable: the watch loop retries
            self._holder.refuse(f"cannot reach the API server: {exc}", source="api")
            return False
        return self._holder.current is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _list(self) -> None:
        body = self._api.read_namespaced_config_map(
            self._ref.name, self._ref.namespace, _request_timeout=self._request_timeout
        )
        self._consider(body)
        self._resource_version = getattr(body.metadata, "resource_version", None)

    def _consider(self, body: Any) -> None:
        data = getattr(body, "data", None) or {}
        text = data.get(MAP_KEY)
        if text is None:
            self._holder.refuse(f"ConfigMap {self._ref} has no {MAP_KEY!r} key", source="api")
            return
        if text == self._seen:
            return
        self._seen = text
        source = f"configmap {self._ref}"
        try:
            candidate = parse_map(text)
        except MapError as exc:
            self._holder.refuse(str(exc), source=source)
            return
        self._holder.offer(candidate, source=source)

    def _watch_once(self) -> None:
        """List if needed, then follow one watch until the server ends it."""
        from kubernetes import watch

        if self._resource_version is None:
            self._list()
        watch_class: Any = watch.Watch  # the client is untyped
        stream = watch_class()
        try:
            # The field selector narrows the watch to our object (RBAC by
            # resourceNames requires it); the name is checked again below in
            # case a server ignores it.
            for event in stream.stream(
                self._api.list_namespaced_config_map,
                self._ref.namespace,
                field_selector=f"metadata.name={self._ref.name}",
                resource_version=self._resource_version,
                timeout_seconds=self._watch_seconds,
                _request_timeout=self._request_timeout,
            ):
                if self._stop.is_set():
                    return
                body = event["object"]
                metadata = body.metadata
                if getattr(metadata, "name", None) != self._ref.name:
                    continue
                self._resource_version = metadata.resource_version
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

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        failures = 0
        while not self._stop.is_set():
            try:
                self._watch_once()
                failures = 0
            except ApiException as exc:
                if exc.status == 410:
                    # Expected now and then (etcd compaction): list again, at once.
                    log_event(log, logging.INFO, "map.watch_expired", configmap=str(self._ref))
                    self._resource_version = None
                    continue
                failures += 1
                self._back_off(failures, exc)
            except Exception as exc:  # the API server restarts, the network blips
                failures += 1
                self._back_off(failures, exc)

    def _back_off(self, failures: int, exc: Exception) -> None:
        delay = _RETRY_SECONDS[min(failures, len(_RETRY_SECONDS)) - 1]
        log_event(
            log,
            logging.WARNING,
            "map.watch_failed",
            configmap=str(self._ref),
            error=str(exc)[:200],
            retry_in=delay,
        )
        self._stop.wait(delay)


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
        usage: UsageView,
        heartbeat: float = 15.0,
        pending_interval: float = PENDING_REPORT_SECONDS,
    ) -> None:
        self._api = api
        self._ref = ref
        self._pod = pod_name
        self._holder = holder
        self._usage = usage
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
            )
        return build_report(
            map_version=current.version,
            buckets=current.buckets,
            started_at=self._started,
            reported_at=reported_at,
            ages=self._usage.ages(current.moving, now=now),
            open_associations=_by_index(current, self._usage.open_associations()),
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
