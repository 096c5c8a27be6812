"""The spool's Prometheus metrics, read from the forwarder at scrape time.

Registered on the registry of the process that forwards (the router, or the
supervisor of its workers), so one router has one set, whatever its workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from gatewaypool_router.spool.forwarder import SpoolForwarder


class SpoolCollector(Collector):
    """The spool's metrics, read from the forwarder at scrape time."""

    def __init__(self, forwarder: SpoolForwarder) -> None:
        self._forwarder = forwarder

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        f = self._forwarder
        backlog = f.queue.backlog(f.owner_of())
        now = f.clock()
        instances = GaugeMetricFamily(
            "gatewaypool_router_spool_instances",
            "Instances waiting in the spool, by the gateway that owns their bucket",
            labels=["gateway"],
        )
        size = GaugeMetricFamily(
            "gatewaypool_router_spool_bytes",
            "Data set bytes waiting in the spool, by the gateway that owns their bucket",
            labels=["gateway"],
        )
        oldest = GaugeMetricFamily(
            "gatewaypool_router_spool_oldest_seconds",
            "Age of the oldest instance waiting in the spool, by gateway",
            labels=["gateway"],
        )
        for gateway, tally in sorted(backlog.by_gateway.items()):
            instances.add_metric([gateway], tally.instances)
            size.add_metric([gateway], tally.bytes)
            age = 0.0 if tally.oldest is None else max(0.0, now - tally.oldest)
            oldest.add_metric([gateway], age)
        yield instances
        yield size
        yield oldest
        t = f.tallies
        yield GaugeMetricFamily(
            "gatewaypool_router_spool_overdue_instances",
            "Instances waiting longer than --spool-retention (alert on any)",
            value=f.overdue_count(),
        )
        yield GaugeMetricFamily(
            "gatewaypool_router_spool_refused_instances",
            "Instances a gateway refused for good, kept aside in the spool's refused/ folder",
            value=len(f.refused_files),
        )
        yield GaugeMetricFamily(
            "gatewaypool_router_spool_held_bytes",
            "Bytes the spool's files take (waiting and refused), against --spool-max-bytes",
            value=f.store.held_bytes(),
        )
        for name, doc, value in (
            ("spooled", "Instances found committed in the spool", t.spooled),
            ("forwarded", "Spooled instances delivered to their gateway", t.forwarded),
            ("forwarded_bytes", "Data set bytes delivered from the spool", t.forwarded_bytes),
            ("resends", "Deliveries of an instance sent before (at least once)", t.resends),
            ("refusals", "Spooled instances a gateway refused for good", t.refused),
            ("retries", "Forwarding attempts that failed and wait to be tried again", t.retries),
        ):
            yield CounterMetricFamily(f"gatewaypool_router_spool_{name}", doc, value=value)
