"""The parts of a router replica that talk to the outside: its map source and its report.

There is one of each per replica, whatever its number of worker processes:
one watch of the map ConfigMap (or one poll of the map file), one report to
the operator. The single-process router and the supervisor of workers both
build them here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from gatewaypool.bucketmap import balanced_map
from gatewaypool.reports import SpoolSummary
from gatewaypool_router.bucketusage import BucketUsageView
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.mapsource import FileMapWatcher, MapHolder
from gatewaypool_router.metrics import RouterMetrics


class Part(Protocol):
    """A background part of the router (map watch, reporter, stall watch)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


def map_source(
    config: RouterConfig, maps: MapHolder, metrics: RouterMetrics
) -> tuple[list[Part], Any]:
    """Load the first map into `maps` now, and return what keeps it current.

    A ConfigMap watch counts its requests in ``metrics``.

    Returns
    -------
    tuple
        The parts to start (a file poller or a ConfigMap watch; none for
        ``--gateway``), and the Kubernetes API client if one was made (the
        reporter shares it), else None.
    """
    if config.map_file is not None:
        watcher = FileMapWatcher(
            config.map_file,
            maps,
            interval=config.map_poll_interval,
            readiness=config.readiness_file,
        )
        watcher.load_now()
        return [watcher], None
    if config.map_configmap is not None:
        from gatewaypool_router.kubesource import ConfigMapMapWatcher, core_api

        api = core_api(config)
        counter = metrics.map_requests
        map_watch = ConfigMapMapWatcher(
            api,
            config.map_configmap,
            maps,
            watch_seconds=config.watch_seconds,
            requests=lambda verb: counter.labels(verb=verb).inc(),
        )
        map_watch.load_now()
        return [map_watch], api
    maps.offer(balanced_map(config.gateways, buckets=config.buckets), source="command line")
    return [], None


def reporter(
    config: RouterConfig,
    api: Any,
    maps: MapHolder,
    usage: BucketUsageView,
    spool: Callable[[int], SpoolSummary] | None = None,
) -> Part | None:
    """The replica's report to the operator, if ``--report-configmap`` asks for one.

    `spool` gives what the replica's spool holds, for a map of that many buckets.
    """
    if config.report_configmap is None:
        return None
    from gatewaypool_router.kubesource import RouterReporter, core_api

    return RouterReporter(
        api if api is not None else core_api(config),
        config.report_configmap,
        pod_name=config.pod_name,
        holder=maps,
        usage=usage,
        spool=spool,
    )
