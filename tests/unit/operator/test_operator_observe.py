"""Pods and reports read as the handover's inputs, the safe way when malformed."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from gatewaypool.reports import build_report, dump_report
from gatewaypool_operator.observe import (
    gateway_pods,
    gateway_ports,
    live_routers,
    router_pods,
)

NOW = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def _pod(name: str, *, ready: str | None = None, **metadata: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {"metadata": {"name": name, **metadata}}
    if ready is not None:
        pod["status"] = {
            "conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": "2026-12-01T09:59:00Z"}
            ]
        }
    return pod


def test_gateway_pods_by_ordinal_with_readiness() -> None:
    pods = [
        _pod("ct-gw-10", ready="True"),
        _pod("ct-gw-2", ready="False"),
        _pod("ct-gw-0"),  # no status yet
        _pod("ct-gw-1", ready="True", deletionTimestamp="2026-12-01T09:59:30Z"),
        _pod("ct-gwx-3", ready="True"),  # another StatefulSet
        _pod("ct-router-0", ready="True"),
    ]
    found = gateway_pods(pods, statefulset="ct-gw")
    assert [(p.ordinal, p.ready) for p in found] == [(0, False), (1, False), (2, False), (10, True)]
    assert found[3].since == datetime(2026, 12, 1, 9, 59, tzinfo=UTC)
    assert found[1].since == datetime(2026, 12, 1, 9, 59, 30, tzinfo=UTC)


def test_router_pods_with_their_reports() -> None:
    report = build_report(
        map_version=4,
        buckets=64,
        started_at=NOW,
        reported_at=NOW,
        ages={},
        open_associations={1: 2},
    )
    pods = [
        _pod("ct-router-b", creationTimestamp="2026-12-01T09:00:00Z"),
        _pod("ct-router-a", creationTimestamp="2026-12-01T09:00:00Z"),
        _pod("ct-router-c"),
    ]
    reports = {"ct-router-a": dump_report(report), "ct-router-b": '{"mapVersion": 4}'}
    found = router_pods(pods, reports=reports, now=NOW)
    assert [r.name for r in found] == ["ct-router-a", "ct-router-b", "ct-router-c"]
    assert found[0].report is not None and found[0].report.open_associations == {1: 2}
    assert found[1].report is None and found[1].problem and "buckets" in found[1].problem
    assert found[2].report is None and found[2].problem is None
    assert found[2].created_at == NOW


def test_failed_and_succeeded_router_pods_are_not_routers() -> None:
    """Evicted or shut-down pods (phase Failed, Succeeded) never report again."""
    pods = [
        _pod("ct-router-a") | {"status": {"phase": "Running"}},
        _pod("ct-router-evicted") | {"status": {"phase": "Failed", "reason": "Evicted"}},
        _pod("ct-router-done") | {"status": {"phase": "Succeeded"}},
        _pod("ct-router-new") | {"status": {"phase": "Pending"}},
        _pod("ct-router-unknown"),  # no status yet
        _pod("ct-router-leaving", deletionTimestamp="2026-12-01T09:59:30Z"),
    ]
    expected = ["ct-router-a", "ct-router-leaving", "ct-router-new", "ct-router-unknown"]
    assert sorted(p["metadata"]["name"] for p in live_routers(pods)) == expected
    assert [r.name for r in router_pods(pods, reports={}, now=NOW)] == expected


def test_gateway_ports_as_each_pod_has_them() -> None:
    def pod(name: str, port: object, container: str = "gateway") -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "spec": {
                "containers": [
                    {"name": container, "ports": [{"name": "dicom", "containerPort": port}]}
                ]
            },
        }

    pods = [
        pod("ct-gw-0", 104),
        pod("ct-gw-1", 11112),  # replaced already by the rolling update
        pod("ct-gw-2", "104"),  # not a port number
        pod("ct-gw-3", 104, container="sidecar"),
        pod("ct-router-0", 104),
    ]
    assert gateway_ports(pods, statefulset="ct-gw") == {0: 104, 1: 11112}
