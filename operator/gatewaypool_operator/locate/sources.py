"""Where ``locate`` reads the map, the handover and the routers' records from.

In a pool on Kubernetes (:func:`pool_location`), with the user's own
credentials and only these permissions in the pool's namespace (the docs
list them as a Role):

- ``get`` ``configmaps`` (``NAME-map``: the map and the handover state);
- ``get`` ``gatewaypools`` (the pool: that it exists, and its status);
- ``list`` ``pods`` (the pool's routers, by their labels);
- ``get`` ``pods/proxy`` (each router's ``/studies/UID``, as ``kubectl get
  --raw /api/v1/namespaces/NS/pods/POD:8080/proxy/studies/UID`` reads it:
  the API server dials the pod, so no port of the pool is exposed).

On this machine (:func:`local_location`): a map file, or the map a router
serves at ``/map``, and each router's ``/studies/UID`` over HTTP.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from gatewaypool.bucketmap import BucketMap, MapError, load_map, parse_map
from gatewaypool.contract import API_GROUP, API_VERSION, MAP_KEY, PLURAL
from gatewaypool.hashing import study_bucket
from gatewaypool.strict import parse_time
from gatewaypool.studyrecord import RecordError, StudyEntry, parse_entry
from gatewaypool_operator.children.names import map_configmap_name, selector_labels
from gatewaypool_operator.children.router import ROUTER_HTTP_PORT
from gatewaypool_operator.handover.state import STATE_KEY, StateError, parse_state
from gatewaypool_operator.locate.answer import Location, RouterAnswer, check_uid, locate

__all__ = ["SourceError", "local_location", "pool_location"]

#: (connect, read) seconds for each request; a router is asked in well under one.
TIMEOUT: Final = (5.0, 10.0)


class SourceError(RuntimeError):
    """What ``locate`` needs could not be read (no such pool, no map, forbidden)."""


# -- a pool on Kubernetes --------------------------------------------------------


def pool_location(study_uid: str, *, namespace: str, pool: str, api: Any) -> Location:
    """Locate `study_uid` in pool `pool` of `namespace`, through the `api` client given."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    check_uid(study_uid)
    core: Any = client.CoreV1Api(api)
    custom: Any = client.CustomObjectsApi(api)
    where = f"GatewayPool {pool} in namespace {namespace}"
    try:
        body = custom.get_namespaced_custom_object(
            API_GROUP, API_VERSION, namespace, PLURAL, pool, _request_timeout=TIMEOUT
        )
        config_map = core.read_namespaced_config_map(
            map_configmap_name(pool), namespace, _request_timeout=TIMEOUT
        )
        selector = ",".join(f"{k}={v}" for k, v in selector_labels(pool, "router").items())
        pods = core.list_namespaced_pod(
            namespace, label_selector=selector, _request_timeout=TIMEOUT
        ).items
    except ApiException as exc:
        raise SourceError(f"{where}: {_api_problem(exc)}") from None
    data = config_map.data or {}
    if MAP_KEY not in data:
        raise SourceError(f"{where}: no map published yet ({map_configmap_name(pool)})")
    try:
        bucket_map = parse_map(data[MAP_KEY])
    except MapError as exc:
        raise SourceError(f"{where}: the map is malformed: {exc}") from None
    status = body.get("status") or {}
    since = _move_since(study_uid, bucket_map, data.get(STATE_KEY), status)
    answers = [_ask_pod(core, namespace, pod, study_uid) for pod in _by_name(pods)]
    return locate(study_uid, bucket_map, routers=answers, move_since=since, in_pool=True)


def _move_since(
    study_uid: str, bucket_map: BucketMap, state_text: str | None, status: dict[str, Any]
) -> datetime | None:
    """When the study's bucket started moving: the handover state's record, else the pool's."""
    bucket = study_bucket(study_uid, bucket_map.buckets)
    if bucket not in bucket_map.moving:
        return None
    if state_text is not None:
        try:
            state = parse_state(state_text, buckets=bucket_map.buckets)
        except StateError:
            state = None
        if state is not None:
            starts = [b.started_at for b in state.batches if bucket in b.buckets]
            if starts:
                return max(starts)
    return parse_time(status.get("oldestMoveSince"))


def _by_name(pods: Sequence[Any]) -> list[Any]:
    return sorted(pods, key=lambda pod: pod.metadata.name)


def _ask_pod(core: Any, namespace: str, pod: Any, study_uid: str) -> RouterAnswer:
    from kubernetes.client.exceptions import ApiException

    name = pod.metadata.name
    phase = pod.status.phase if pod.status is not None else None
    if phase != "Running" or not (pod.status.pod_ip or ""):
        return RouterAnswer(name, error=f"pod is {phase or 'unknown'}, not Running")
    try:
        response = core.connect_get_namespaced_pod_proxy_with_path(
            f"{name}:{ROUTER_HTTP_PORT}",
            namespace,
            f"studies/{study_uid}",
            _preload_content=False,
            _request_timeout=TIMEOUT,
        )
        raw = response.data
    except ApiException as exc:
        return RouterAnswer(name, error=_api_problem(exc))
    return _answer(name, raw)


def _api_problem(exc: Any) -> str:
    reason = {401: "not authenticated", 403: "forbidden", 404: "not found"}.get(exc.status)
    detail = ""
    try:
        detail = json.loads(exc.body).get("message", "")
    except (TypeError, ValueError, AttributeError):
        detail = str(exc.reason or "")
    return f"{reason or exc.status}: {detail}" if detail else str(reason or exc.status)


# -- this machine ----------------------------------------------------------------


def local_location(study_uid: str, *, map_file: str | None, routers: Sequence[str]) -> Location:
    """Locate `study_uid` from a map file or the first router's map, and the routers' records."""
    check_uid(study_uid)
    if map_file is not None:
        try:
            bucket_map = load_map(map_file)
        except (MapError, OSError) as exc:
            raise SourceError(f"--map {map_file}: {exc}") from None
    elif routers:
        bucket_map = _router_map(routers[0])
    else:
        raise SourceError("give --map FILE or --router URL (or -n NAMESPACE --pool NAME)")
    answers = [_ask_url(url, study_uid) for url in routers]
    return locate(study_uid, bucket_map, routers=answers)


def _router_map(url: str) -> BucketMap:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/map", timeout=TIMEOUT[1]) as response:
            return parse_map(response.read().decode())
    except (OSError, MapError, UnicodeDecodeError) as exc:
        raise SourceError(f"--router {url}: no map to read at /map: {exc}") from None


def _ask_url(url: str, study_uid: str) -> RouterAnswer:
    try:
        with urllib.request.urlopen(
            f"{url.rstrip('/')}/studies/{study_uid}", timeout=TIMEOUT[1]
        ) as response:
            raw = response.read()
    except (OSError, urllib.error.HTTPError) as exc:
        return RouterAnswer(url, error=str(exc))
    return _answer(url, raw)


def _answer(router: str, raw: bytes) -> RouterAnswer:
    try:
        entry: StudyEntry = parse_entry(raw.decode("utf-8", "replace"))
    except RecordError as exc:
        return RouterAnswer(router, error=f"unreadable record: {exc}")
    return RouterAnswer(router, entry=entry)
