"""The operator's Prometheus metrics: what its handovers did, per pool.

Routers export the traffic; only the operator knows how bucket moves ended,
and a forced move (one that may have split a study) deserves an alert. The
registry is the operator's own, served on ``--metrics`` (default
``:8082/metrics``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class OperatorMetrics:
    """Counters and gauges of one operator process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.handovers = Counter(
            "gatewaypool_operator_handovers",
            "Bucket moves by how they ended: completed (quiet on every router) or forced "
            "(after maxDrainSeconds, on failover, or without an excluded router's word)",
            ["namespace", "pool", "result"],
            registry=self.registry,
        )
        self.moving = Gauge(
            "gatewaypool_operator_moving_buckets",
            "Buckets in handover (published as moving) after the last pass",
            ["namespace", "pool"],
            registry=self.registry,
        )
        self.oldest_move = Gauge(
            "gatewaypool_operator_oldest_move_seconds",
            "Age of the oldest move under way after the last pass (0: none)",
            ["namespace", "pool"],
            registry=self.registry,
        )

    def record(
        self,
        *,
        namespace: str,
        pool: str,
        completed: int,
        forced: int,
        moving: int,
        oldest_move_seconds: float | None,
    ) -> None:
        """Count one pass's moves and set the pool's drain gauges."""
        if completed:
            self.handovers.labels(namespace=namespace, pool=pool, result="completed").inc(completed)
        if forced:
            self.handovers.labels(namespace=namespace, pool=pool, result="forced").inc(forced)
        self.moving.labels(namespace=namespace, pool=pool).set(moving)
        self.oldest_move.labels(namespace=namespace, pool=pool).set(oldest_move_seconds or 0.0)
