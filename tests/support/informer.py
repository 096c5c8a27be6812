"""A list-and-watch cache of one kind, as client-go's informers keep one.

The stand-ins that play cluster parts (cluster DNS, the Service proxy, the
kubelet) follow the API as the real parts do: a list, then a watch from the
list's resourceVersion with bookmarks, and a fresh list after 410 Gone or a
broken connection (the tests restart the API server). Each keeps the
objects by namespace and name, and calls back on every change.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(namespace, name); the namespace is empty for cluster-scoped objects."""

_WATCH_SECONDS = 60
_RETRY_SECONDS = 0.5


class Informer:
    """Keeps every object of one kind as the API holds it, in a thread of its own.

    `path` is the collection's URL (``/api/v1/pods``,
    ``/apis/discovery.k8s.io/v1/endpointslices``); `field_selector` narrows
    it as the real kubelet narrows pods to its node.
    """

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        path: str,
        *,
        field_selector: str | None = None,
        on_change: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._api = api
        self._path = path
        self._selector = field_selector
        self._on_change = on_change
        self._objects: dict[Key, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"informer {path}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:  # unblocks the watch's read at once
            response.shutdown()
        self._thread.join(timeout=10)

    def wait_synced(self, timeout: float = 30.0) -> None:
        if not self._synced.wait(timeout):
            raise TimeoutError(f"informer {self._path}: no list within {timeout:g} s")

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((namespace, name))

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    # -- the loop ------------------------------------------------------------------

    def _request(self, **query: Any) -> Any:
        """GET the collection (or watch it), returning the streamed urllib3 response."""
        params = [(k, v) for k, v in query.items() if v is not None]
        if self._selector:
            params.append(("fieldSelector", self._selector))
        method, url, headers, body, post = self._api.param_serialize(
            "GET",
            self._path,
            query_params=params,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        answer = self._api.call_api(
            method, url, headers, body, post, _request_timeout=(5, _WATCH_SECONDS + 10)
        )
        if answer.status >= 400:
            raise ApiException(status=answer.status, reason=answer.response.data)
        return answer.response

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                listed = json.loads(self._request().data)
                version = listed["metadata"]["resourceVersion"]
                fresh = {_key(item): item for item in listed.get("items") or []}
                with self._lock:
                    gone = [obj for key, obj in self._objects.items() if key not in fresh]
                    self._objects = fresh
                self._synced.set()
                for obj in gone:
                    self._notify("DELETED", obj)
                for obj in fresh.values():
                    self._notify("MODIFIED", obj)
                self._watch(version)
            except Exception as exc:  # a restarting API server: list again shortly
                if not self._stop.is_set():
                    log.debug("informer %s: %s", self._path, exc)
                    self._stop.wait(_RETRY_SECONDS)

    def _watch(self, version: str) -> None:
        while not self._stop.is_set():
            response = self._request(
                watch="true",
                resourceVersion=version,
                allowWatchBookmarks="true",
                timeoutSeconds=_WATCH_SECONDS,
            )
            self._response = response
            try:
                for line in response:
                    if self._stop.is_set():
                        return
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            return  # expired: list again
                        raise ApiException(status=obj.get("code"), reason=obj.get("message"))
                    version = obj["metadata"]["resourceVersion"]
                    if kind == "BOOKMARK":
                        continue
                    with self._lock:
                        if kind == "DELETED":
                            self._objects.pop(_key(obj), None)
                        else:
                            self._objects[_key(obj)] = obj
                    self._notify(kind, obj)
            finally:
                self._response = None
                response.release_conn()

    def _notify(self, kind: str, obj: dict[str, Any]) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(kind, obj)
        except Exception:
            log.exception("informer %s: callback failed", self._path)


def _key(obj: dict[str, Any]) -> Key:
    metadata = obj["metadata"]
    return (metadata.get("namespace") or "", metadata["name"])
