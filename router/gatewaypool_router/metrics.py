"""Prometheus metrics of one router process.

Each router owns its registry rather than using the process-global one, so
several routers (tests, the local demo) never mix their counts.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class RouterMetrics:
    """The router's counters, gauges and histograms."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.instances = Counter(
            "gatewaypool_router_instances",
            "C-STORE requests answered, by gateway and outcome (success, warning, failure)",
            ["gateway", "outcome"],
            registry=r,
        )
        self.bytes = Counter(
            "gatewaypool_router_bytes",
            "Data set bytes received from senders, by gateway and outcome",
            ["gateway", "outcome"],
            registry=r,
        )
        self.forward_seconds = Histogram(
            "gatewaypool_router_forward_seconds",
            "From an instance's first data set fragment to the answer sent back to the sender",
            ["gateway"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.active_associations = Gauge(
            "gatewaypool_router_active_associations",
            "Incoming associations currently established",
            registry=r,
        )
        self.associations = Counter(
            "gatewaypool_router_associations",
            "Incoming associations by how they ended (released, aborted, rejected, ...)",
            ["result"],
            registry=r,
        )
        self.refusals = Counter(
            "gatewaypool_router_refusals",
            "Associations and instances refused by the router, by reason",
            ["reason"],
            registry=r,
        )
        self.upstream_failures = Counter(
            "gatewaypool_router_gateway_failures",
            "Failures talking to a gateway (unreachable, timeout, aborted)",
            ["gateway", "reason"],
            registry=r,
        )
        self.overdue_instances = Counter(
            "gatewaypool_router_overdue_instances",
            "Instances still in progress after --stall-warning seconds (each counted once)",
            registry=r,
        )
        self.held_instances = Counter(
            "gatewaypool_router_held_instances",
            "Instances held because their bucket was closing (the last step of a move)",
            registry=r,
        )
        self.map_version = Gauge(
            "gatewaypool_router_map_version",
            "Version of the bucket map in use (-1 until one is loaded)",
            registry=r,
        )
        self.map_version.set(-1)
        self._per_instance: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.map_rejected = Counter(
            "gatewaypool_router_map_rejected",
            "New bucket maps refused (invalid, stale or changing the bucket count)",
            registry=r,
        )

    def record_instance(self, *, gateway: str, outcome: str, size: int, seconds: float) -> None:
        """Count one answered C-STORE.

        The labelled children are looked up once per (gateway, outcome):
        ``labels()`` takes a lock and builds a key on every call, and this
        runs for every instance.
        """
        children = self._per_instance.get((gateway, outcome))
        if children is None:
            children = (
                self.instances.labels(gateway=gateway, outcome=outcome),
                self.bytes.labels(gateway=gateway, outcome=outcome),
                self.forward_seconds.labels(gateway=gateway),
            )
            self._per_instance[(gateway, outcome)] = children
        count, volume, latency = children
        count.inc()
        volume.inc(size)
        latency.observe(seconds)
