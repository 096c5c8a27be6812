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

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from gatewaypool.bucketmap import MapError, parse_map
from gatewaypool.logs import log_event
from gatewaypool_router.config import ObjectRef, RouterConfig
from gatewaypool_router.mapsource import MapHolder

log = logging.getLogger(__name__)

MAP_KEY = "map.json"
_WATCH_SECONDS = 300
_RETRY_SECONDS = (0.5, 1, 2, 5, 10)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    """Watch one ConfigMap and offer every map it holds to the holder."""

    def __init__(self, api: Any, ref: ObjectRef, holder: MapHolder) -> None:
        self._api = api
        self._ref = ref
        self._holder = holder
        self._stop = threading.Event()
        self._seen: str | None = None
        self._thread = threading.Thread(target=self._run, name="map-watch", daemon=True)

    def load_now(self) -> bool:
        """One GET, so a starting router is ready before its watch begins."""
        from kubernetes.client.exceptions import ApiException

        try:
            body = self._api.read_namespaced_config_map(self._ref.name, self._ref.namespace)
        except ApiException as exc:
            self._holder.refuse(f"cannot read ConfigMap {self._ref}: {exc.reason}", source="api")
            return False
        except OSError as exc:  # API server unreachable: the watch loop retries
            self._holder.refuse(f"cannot reach the API server: {exc}", source="api")
            return False
        self._consider(body)
        return self._holder.current is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

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

    def _run(self) -> None:
        from kubernetes import watch

        failures = 0
        while not self._stop.is_set():
            watch_class: Any = watch.Watch  # the client is untyped
            stream = watch_class()
            try:
                # The field selector narrows the watch to our object where the API
                # server supports it (and RBAC by resourceNames requires it); the
                # name is checked again below in case it does not.
                for event in stream.stream(
                    self._api.list_namespaced_config_map,
                    self._ref.namespace,
                    field_selector=f"metadata.name={self._ref.name}",
                    timeout_seconds=_WATCH_SECONDS,
                ):
                    failures = 0
                    if self._stop.is_set():
                        break
                    body = event["object"]
                    if getattr(body.metadata, "name", None) != self._ref.name:
                        continue
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
            except Exception as exc:  # the API server restarts, the network blips
                failures += 1
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
            finally:
                stream.stop()


class RouterReporter:
    """Write this router's applied map version into the pool's report ConfigMap.

    One key per router pod, merged into the ConfigMap's data, so routers
    never overwrite each other; a heartbeat keeps ``reportedAt`` fresh so the
    operator can tell a live router from a stale entry.
    """

    def __init__(
        self,
        api: Any,
        ref: ObjectRef,
        *,
        pod_name: str,
        holder: MapHolder,
        heartbeat: float = 15.0,
    ) -> None:
        self._api = api
        self._ref = ref
        self._pod = pod_name
        self._holder = holder
        self._heartbeat = heartbeat
        self._started = _now()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reporter", daemon=True)
        holder.subscribe(lambda _map: self._wake.set())

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def report(self) -> bool:
        """Patch our key now; return whether the API accepted it."""
        current = self._holder.current
        entry = {
            "mapVersion": current.version if current is not None else None,
            "startedAt": self._started,
            "reportedAt": _now(),
        }
        try:
            self._api.patch_namespaced_config_map(
                self._ref.name,
                self._ref.namespace,
                {"data": {self._pod: json.dumps(entry, separators=(",", ":"))}},
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

    def _run(self) -> None:
        last = 0.0
        while not self._stop.is_set():
            woke = self._wake.wait(timeout=max(0.0, last + self._heartbeat - time.monotonic()))
            self._wake.clear()
            if self._stop.is_set():
                return
            if woke or time.monotonic() - last >= self._heartbeat:
                if not self.report():
                    self._stop.wait(2.0)  # back off; the next loop retries
                    continue
                last = time.monotonic()
