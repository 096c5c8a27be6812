"""The operator's handover metrics count moves and show drain progress per pool."""

from __future__ import annotations

from gatewaypool_operator.metrics import OperatorMetrics


def sample(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_moves_are_counted_and_drain_progress_set_per_pool() -> None:
    metrics = OperatorMetrics()
    metrics.record(
        namespace="ns", pool="ct", completed=5, forced=0, moving=3, oldest_move_seconds=12.5
    )
    metrics.record(
        namespace="ns", pool="ct", completed=2, forced=1, moving=0, oldest_move_seconds=None
    )
    labels = {"namespace": "ns", "pool": "ct"}
    assert (
        sample(metrics, "gatewaypool_operator_handovers_total", **labels, result="completed") == 7
    )
    assert sample(metrics, "gatewaypool_operator_handovers_total", **labels, result="forced") == 1
    assert sample(metrics, "gatewaypool_operator_moving_buckets", **labels) == 0
    assert sample(metrics, "gatewaypool_operator_oldest_move_seconds", **labels) == 0
    assert sample(metrics, "gatewaypool_operator_moving_buckets", namespace="ns", pool="x") is None
