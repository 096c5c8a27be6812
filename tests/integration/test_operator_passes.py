"""Passes of the operator during a handover, on an API server: what they write, whom they wait for.

The pass runs in this process (:func:`~gatewaypool_operator.runner.run_pass`,
as the handlers and the resync run it) against the emulator; the test plays
the kubelet (gateway and router pods, their phases) and the routers (their
reports), so that each pass sees exactly what the test decided.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import kmock
import pytest

from gatewaypool.bucketmap import BucketMap, parse_map
from gatewaypool.reports import build_report, dump_report
from gatewaypool_local.peers import wait_until
from gatewaypool_operator import childnames
from gatewaypool_operator.kubeapply import Cluster
from gatewaypool_operator.runner import PoolLocks, run_pass
from support.cluster import GROUP, IMAGE, NS, PLURAL, VERSION, custom, pool_cluster
from support.kubeemu import KubeEmulator

BUCKETS = 16


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with pool_cluster(keep_requests=True) as emulator:
        yield emulator


def create_pool(kube: KubeEmulator, *, replicas: int) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GatewayPool",
        "metadata": {"name": "ct", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "buckets": BUCKETS,
            "gateway": {"image": "scp:1"},
            "handover": {"quietSeconds": 1, "maxDrainSeconds": 10},
        },
    }
    custom(kube).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)


def ready(since: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    condition = {"type": "Ready", "status": "True", "lastTransitionTime": since}
    return {"phase": "Running", "conditions": [condition]}


def start_pod(kube: KubeEmulator, name: str, component: str) -> None:
    """A pod of the pool's `component`, Running and Ready, as a kubelet would report it."""
    kube.create(
        "Pod",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": childnames.selector_labels("ct", component),
            },
            "spec": {"containers": [{"name": component, "image": "x:1"}]},
        },
        namespace=NS,
    )
    kube.write_status("", "v1", "pods", NS, name, status=ready())


def published(kube: KubeEmulator) -> BucketMap | None:
    data = (kube.get("ConfigMap", "ct-map", NS) or {}).get("data") or {}
    return parse_map(data["map.json"]) if "map.json" in data else None


def report(kube: KubeEmulator, router: str, *, version: int) -> None:
    """`router` says it applied map `version` and routed nothing since it started an hour ago."""
    now = datetime.now(UTC)
    text = dump_report(
        build_report(
            map_version=version,
            buckets=BUCKETS,
            started_at=now - timedelta(hours=1),
            reported_at=now,
            ages={},
            open_associations={},
        )
    )
    Cluster(kube.api_client()).merge_patch_data("ConfigMap", NS, "ct-routers", {router: text})


def pool_status(kube: KubeEmulator) -> dict[str, Any]:
    status: dict[str, Any] = (kube.get("GatewayPool", "ct", NS) or {}).get("status") or {}
    return status


class Passes:
    """Passes of one pool, as the operator runs them, on `kube`."""

    def __init__(self, kube: KubeEmulator) -> None:
        self.kube = kube
        self.cluster = Cluster(kube.api_client())
        self.locks = PoolLocks()

    def run(self) -> None:
        run_pass(self.cluster, self.locks, namespace=NS, name="ct", router_image=IMAGE)


def settle_two_gateways(kube: KubeEmulator, passes: Passes, routers: list[str]) -> BucketMap:
    """A pool of two Ready gateways whose map every router in `routers` applied."""
    create_pool(kube, replicas=2)
    start_pod(kube, "ct-gw-0", "gateway")
    start_pod(kube, "ct-gw-1", "gateway")
    for name in routers:
        start_pod(kube, name, "router")

    def both_listed() -> bool:
        passes.run()
        current = published(kube)
        if current is None:
            return False
        for name in routers:
            report(kube, name, version=current.version)
        return len(current.gateways) == 2 and not current.moving

    wait_until(both_listed, timeout=30, what="a map of two gateways", interval=0.2)
    kube.write_status("apps", "v1", "statefulsets", NS, "ct-gw", status={"replicas": 2})
    current = published(kube)
    assert current is not None
    return current


def scale_to_one(kube: KubeEmulator) -> None:
    custom(kube).patch_namespaced_custom_object_scale(
        GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 1}}
    )


def status_writes(kube: KubeEmulator, since: int) -> list[str]:
    return [
        str(request.url)
        for request in kube.requests()[since:]
        if request.action == kmock.action.UPDATE
        and request.resource is not None
        and request.resource.plural == PLURAL
    ]


def test_passes_during_a_handover_with_nothing_new_write_no_status(kube: KubeEmulator) -> None:
    """An autoscaler's /scale write at the version it read must not meet a status write.

    While a move waits for a router, every pass sees the same world; none
    may write the pool (its status), or its resourceVersion would move under
    the HorizontalPodAutoscaler, whose rescale would then fail with 409.
    """
    passes = Passes(kube)
    before = settle_two_gateways(kube, passes, ["ct-router-a"])
    scale_to_one(kube)
    passes.run()
    marked = published(kube)
    assert marked is not None and marked.version == before.version + 1 and marked.moving
    # The router stays on the old map: the move waits for it, pass after pass.
    report(kube, "ct-router-a", version=before.version)
    passes.run()  # takes in the report written meanwhile
    waiting = pool_status(kube)
    assert waiting["movingBuckets"] == len(marked.moving)
    assert "oldestMoveSince" in waiting
    version = (kube.get("GatewayPool", "ct", NS) or {})["metadata"]["resourceVersion"]
    mark = len(kube.requests())
    # Passes over a few seconds: an age in the status would change meanwhile.
    start, runs = time.monotonic(), 0

    def passes_over_three_seconds() -> bool:
        nonlocal runs
        passes.run()
        runs += 1
        return runs >= 4 and time.monotonic() - start >= 3

    wait_until(passes_over_three_seconds, timeout=30, what="passes over 3 s", interval=0.5)
    assert status_writes(kube, mark) == []
    assert (kube.get("GatewayPool", "ct", NS) or {})["metadata"]["resourceVersion"] == version
    assert pool_status(kube) == waiting


def test_a_failed_router_pod_is_not_waited_for(kube: KubeEmulator) -> None:
    """A router evicted mid-handover (phase Failed) never reports again; the move completes.

    Counted as a router, it would hold the move until maxDrainSeconds forced
    it (10 s here), and its missing report would keep the StatefulSet at two.
    """
    passes = Passes(kube)
    before = settle_two_gateways(kube, passes, ["ct-router-a", "ct-router-b"])
    scale_to_one(kube)
    passes.run()
    marked = published(kube)
    assert marked is not None and marked.moving
    kube.write_status(
        "",
        "v1",
        "pods",
        NS,
        "ct-router-b",
        status={"phase": "Failed", "reason": "Evicted", "conditions": []},
    )

    def moved() -> bool:
        current = published(kube)
        assert current is not None
        report(kube, "ct-router-a", version=current.version)
        passes.run()
        after = published(kube)
        sts = kube.get("StatefulSet", "ct-gw", NS) or {}
        return after is not None and len(after.gateways) == 1 and sts["spec"]["replicas"] == 1

    wait_until(moved, timeout=30, what="gateway 1's buckets moved and the gateway gone")
    status = pool_status(kube)
    assert status["handovers"] == {"completed": len(marked.moving), "forced": 0}
    assert status["routers"] == "1/1"
    reports = (kube.get("ConfigMap", "ct-routers", NS) or {}).get("data") or {}
    assert sorted(reports) == ["ct-router-a"], "the failed pod's report is pruned"
    events = [e for e in kube.objects("v1/events", NS) if e.get("reason") == "HandoverForced"]
    assert events == [], json.dumps(events)[:500]
    assert before.version < (published(kube) or before).version


def test_a_server_error_on_one_child_degrades_the_pool_and_the_others_are_written(
    kube: KubeEmulator,
) -> None:
    """A 5xx that outlasts the retries is one child's refusal, not the end of the pass."""
    kube.emulator["patch statefulsets"] << 500  # every apply of a StatefulSet fails
    create_pool(kube, replicas=2)
    Passes(kube).run()
    degraded = {c["type"]: c for c in pool_status(kube)["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "ApplyRefused")
    assert degraded["message"].startswith("StatefulSet ct-gw: ")
    # Written after the StatefulSet in the same pass:
    for kind, name in [
        ("NetworkPolicy", "ct-gw"),
        ("Deployment", "ct-router"),
        ("Service", "ct-router"),
        ("ConfigMap", "ct-routers"),
    ]:
        assert kube.get(kind, name, NS) is not None, (kind, name)
    tries = [
        r
        for r in kube.requests()
        if r.action == kmock.action.UPDATE
        and r.resource is not None
        and r.resource.plural == "statefulsets"
    ]
    assert len(tries) > 1, "a 500 is retried before it counts as a refusal"
