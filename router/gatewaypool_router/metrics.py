"""Prometheus metrics of one router process.

Each router owns its registry rather than using the process-global one, so
several routers (tests, the local demo) never mix their counts.

The load of each gateway, as an autoscaler reads it (every series carries the
gateway's name in the map, its pod name, as label ``gateway``):

- ``rate(gatewaypool_router_instances_total[1m])`` and
  ``rate(gatewaypool_router_bytes_total[1m])``: instances and data set bytes
  per second, by outcome; every gateway of an applied map has its series from
  then on, at 0, so that ``rate()`` also counts a gateway's first instances;
- ``gatewaypool_router_studies_in_flight``: studies routed to it whose last
  instance is less than ``--study-quiet-seconds`` old, counted at scrape time.

Summed over the router replicas they are the gateway's load.

A replica with several worker processes (``--workers``) keeps every value
in prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set
by the supervisor before any metric exists): counters and histograms are
summed over the workers, including workers that died, the gauges below say
how they combine, and the supervisor serves one ``/metrics`` for the replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class StudyCounts(Protocol):
    """Studies in flight per gateway: one process's tracker, or a replica's workers merged."""

    def by_gateway(self) -> dict[str, int]: ...


#: What :func:`gatewaypool_router.statuses.outcome` answers; every gateway gets all three.
OUTCOMES = ("success", "warning", "failure")

STUDIES_IN_FLIGHT = "gatewaypool_router_studies_in_flight"

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
            multiprocess_mode="livesum",
        )
        self.associations = Counter(
            "gatewaypool_router_associations",
            "Incoming associations by how they ended (released, aborted, rejected, ...)",
            ["result"],
            registry=r,
        )
        self.refusals = Counter(
            "gatewaypool_router_refusals",
            "Connections, associations and instances refused by the router, by reason "
            "(tls_handshake: a failed TLS handshake on the TLS port; caller_subject_mismatch: "
            "a calling AE title bound by --caller-subject without its certificate; ...)",
            ["reason"],
            registry=r,
        )
        self.tls_reloads = Counter(
            "gatewaypool_router_tls_reloads",
            "TLS certificate, key or CA files that changed on disk, by context (inbound, "
            "gateway) and result (applied; failed: the old files stay in use)",
            ["context", "result"],
            registry=r,
        )
        self.upstream_failures = Counter(
            "gatewaypool_router_gateway_failures",
            "Failures talking to a gateway (unreachable, timeout, aborted)",
            ["gateway", "reason"],
            registry=r,
        )
        self.upstream_ends = Counter(
            "gatewaypool_router_gateway_association_ends",
            "Gateway associations ended between instances, by gateway and reason "
            "(idle_release: idle for --gateway-idle-release; gateway_released, "
            "gateway_aborted, gateway_closed: the gateway ended it, and the next instance "
            "opened a new one)",
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
            multiprocess_mode="livemax",
        )
        self.map_version.set(-1)
        self.worker_restarts = Counter(
            "gatewaypool_router_worker_restarts",
            "Worker processes that died and were replaced (--workers above 1)",
            registry=r,
        )
        self.workers = Gauge(
            "gatewaypool_router_workers",
            "Worker processes of this router replica that are running",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._per_instance: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self.map_requests = Counter(
            "gatewaypool_router_map_requests",
            "Requests to the API server for the map ConfigMap, by verb (list, watch): about "
            "one watch per --watch-timeout when all is well, more after errors and 410 Gone",
            ["verb"],
            registry=r,
        )
        for verb in ("list", "watch"):
            self.map_requests.labels(verb=verb)
        self.map_rejected = Counter(
            "gatewaypool_router_map_rejected",
            "New bucket maps refused (invalid, stale or changing the bucket count), and "
            "invalid readiness records",
            registry=r,
        )
        self.gateway_not_ready = Gauge(
            "gatewaypool_router_gateway_not_ready",
            "1 while the map source marks the gateway not Ready (a router with a spool then "
            "spools its instances without trying it), 0 once it is Ready again",
            ["gateway"],
            registry=r,
            multiprocess_mode="livemax",
        )

    def gateways_known(self, names: Iterable[str]) -> None:
        """Give every gateway of a new map its instance and byte series, at 0.

        ``rate()`` needs two samples of a series to see an increase, so a
        series born at its first instance would lose that instance (and a
        gateway's whole first burst, if it comes in one scrape interval).
        Series of gateways that leave the map stay, as Prometheus counters do.
        """
        for name in names:
            for result in OUTCOMES:
                self.instances.labels(gateway=name, outcome=result)
                self.bytes.labels(gateway=name, outcome=result)

    def export_studies_in_flight(
        self,
        studies: StudyCounts,
        gateways: Callable[[], Iterable[str]],
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        """Export ``studies`` as ``gatewaypool_router_studies_in_flight{gateway}``.

        Parameters
        ----------
        studies
            The router's tracker, read at every scrape.
        gateways
            The names of the gateways of the map in use; each is exported,
            at 0 if it has no study in flight, so an idle gateway has a
            series (an HPA averaging over the pool's pods must see it).
        registry
            Where to export it, the router's own registry by default; a
            supervisor serves a registry of its own that merges its workers.
        """
        target = self.registry if registry is None else registry
        target.register(_StudiesInFlightCollector(studies, gateways))

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


class _StudiesInFlightCollector(Collector):
    """Counts studies in flight when scraped, not on the data path."""

    def __init__(self, studies: StudyCounts, gateways: Callable[[], Iterable[str]]) -> None:
        self._studies = studies
        self._gateways = gateways

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The family without samples: registering must not count studies."""
        return [self._family()]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._studies.by_gateway()
        family = self._family()
        # Gateways of the map at 0, then any that left it with studies still in flight.
        for name in sorted(set(self._gateways()) | counts.keys()):
            family.add_metric([name], counts.get(name, 0))
        yield family

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            STUDIES_IN_FLIGHT,
            "Studies routed to the gateway whose last instance arrived less than "
            "--study-quiet-seconds ago",
            labels=["gateway"],
        )
