"""The real HPA controller scales a pool through its scale subresource, across handovers.

kube-controller-manager's HPA controller reads the pool's ``/scale`` and
writes it back preconditioned on the resourceVersion it read. While a
handover runs, the operator writes the pool's status; if it wrote on every
pass (an age counted in seconds, say), the HPA's write would meet 409 and
the HPA would report ``FailedRescale`` just when it scales (issue 19).

Here ``minReplicas`` moves above the settled pool's size twice, the second time
while the first step's handover is still running: the HPA controller raises
the pool to the minimum without needing a metric (its "TooFewReplicas"
rule), through the same subresource as any other scale. Every rescale must
succeed, and the pool must settle each time with nothing forced.
"""

from __future__ import annotations

from typing import Any

import kubernetes.client

from gatewaypool_local.peers.process import wait_until
from support.realcluster import Cluster
from support.realpool import gateway_spec, operated_pool


def _autoscaling(minimum: int) -> dict[str, Any]:
    return {
        "minReplicas": minimum,
        "maxReplicas": 4,
        "targets": {"cpuUtilization": 80},
        "scaleDown": {"stabilizationSeconds": 600},
    }


def _hpa_events(cluster: Cluster, namespace: str) -> list[tuple[str, str]]:
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    listed = core.list_namespaced_event(
        namespace, field_selector="involvedObject.kind=HorizontalPodAutoscaler"
    )
    return [(str(e.reason), str(e.message)) for e in listed.items]


def test_the_hpa_scales_a_pool_across_a_handover_without_failed_rescales(
    cluster: Cluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    gateway = gateway_spec()
    # A request idle gateways stay far below (80 % of it is 400m), even while
    # they start on a busy machine: the CPU target must never ask for more
    # replicas here, only minReplicas does.
    gateway["resources"] = {"requests": {"cpu": "500m", "memory": "64Mi"}}
    spec = {
        "replicas": 1,
        "gateway": gateway,
        "router": {"replicas": 1},
        "handover": {"quietSeconds": 5, "maxDrainSeconds": 600},
        "autoscaling": _autoscaling(1),
    }
    with operated_pool(cluster, ns, spec) as pool:
        pool.wait_settled(1, 1, timeout=120)
        pool.patch_spec({"autoscaling": _autoscaling(2)})
        wait_until(
            lambda: pool.get()["spec"]["replicas"] >= 2,
            timeout=90,
            what="the HPA raising the pool to its minimum",
        )
        wait_until(lambda: bool(pool.status().get("movingBuckets")), timeout=60, what="a handover")
        # While that handover runs (quiet period 5 s), the minimum rises again.
        pool.patch_spec({"autoscaling": _autoscaling(3)})
        pool.wait_settled(3, 1, timeout=180)
        events = _hpa_events(cluster, ns)
        pool_events = pool.events()
    reasons = [reason for reason, _ in events]
    assert reasons.count("SuccessfulRescale") >= 2, events
    assert "FailedRescale" not in reasons, events
    assert "HandoverForced" not in pool_events
