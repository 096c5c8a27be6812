"""What a real cluster does to a pool, on the real control plane: restarts, evictions, edits.

- The API server restarts: its watch cache starts afresh, so every watch
  from before gets 410 Gone. Routers must list again once, not spin, and
  follow the next map.
- A router pod is evicted in the middle of a handover: it stays in the API
  as phase Failed until pod garbage collection, never reports again, and
  must not hold the handover (nor force it).
- The router Service's settings change: the real API server allocates the
  ClusterIP and node ports, and the operator must converge without fighting
  over them, keeping the Service's name and identity.
"""

from __future__ import annotations

import time
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from gatewaypool_local.peers.process import wait_until
from support.realcluster import Cluster
from support.realpool import RealPool, gateway_spec, operated_pool

MAP_REQUESTS = "gatewaypool_router_map_requests_total"


def test_routers_follow_the_map_across_an_api_server_restart(
    cluster: Cluster, cluster_namespace: str
) -> None:
    with operated_pool(
        cluster,
        cluster_namespace,
        {
            "replicas": 2,
            "gateway": gateway_spec(),
            "router": {"replicas": 1},
            "handover": {"quietSeconds": 1, "maxDrainSeconds": 30},
        },
    ) as pool:
        pool.wait_settled(2, 1, timeout=120)
        [(router, address)] = pool.router_addresses().items()
        before = RealPool.metric(address, MAP_REQUESTS)
        lists_before = RealPool.metric(address, MAP_REQUESTS, labels={"verb": "list"})
        began = time.monotonic()
        cluster.plane.restart_apiserver()
        pool.scale(3)
        pool.wait_settled(3, 1, timeout=120)  # the router on the map of three, after the restart
        minutes = (time.monotonic() - began) / 60
        requests = RealPool.metric(address, MAP_REQUESTS) - before
        lists = RealPool.metric(address, MAP_REQUESTS, labels={"verb": "list"}) - lists_before
        expired = cluster.pod_log(cluster_namespace, router).count('"map.watch_expired"')
    # A list and a watch per broken watch, and a few retries while the server
    # was down: a handful. A tight loop would be hundreds a minute.
    assert 2 <= requests <= 8 + 10 * minutes, f"{requests} map requests in {minutes:.1f} min"
    # The new watch cache no longer reaches the router's version: 410 Gone, and
    # a list only after each 410 (the first at once, a repeat after a back-off).
    assert expired >= 1, "the resumed watch was never answered 410 Gone"
    assert lists == expired, f"{lists} lists after {expired} 410s"


def test_an_evicted_router_neither_holds_nor_forces_a_handover(
    cluster: Cluster, cluster_namespace: str
) -> None:
    with operated_pool(
        cluster,
        cluster_namespace,
        {
            "replicas": 2,
            "gateway": gateway_spec(),
            "router": {"replicas": 2},
            "handover": {"quietSeconds": 3, "maxDrainSeconds": 120},
        },
    ) as pool:
        pool.wait_settled(2, 2, timeout=120)
        pool.scale(3)
        wait_until(lambda: bool(pool.status().get("movingBuckets")), timeout=60, what="a handover")
        victim = sorted(pool.router_addresses())[0]
        cluster.kubelet.evict(cluster_namespace, victim)
        pool.wait_settled(3, 2, timeout=120)  # the evicted router left out
        core: Any = kubernetes.client.CoreV1Api(cluster.api())
        evicted = core.read_namespaced_pod(victim, cluster_namespace)
        events = pool.events()
        handovers = pool.status()["handovers"]
        reports = core.read_namespaced_config_map("ct-routers", cluster_namespace).data or {}
    assert evicted.status.phase == "Failed" and evicted.status.reason == "Evicted"
    assert "HandoverCompleted" in events
    assert "HandoverForced" not in events
    assert handovers["completed"] > 0 and handovers["forced"] == 0, handovers
    assert victim not in reports, "the evicted router's report is pruned"


def _service(cluster: Cluster, namespace: str) -> Any:
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    return core.read_namespaced_service("ct-router", namespace)


def _service_type(cluster: Cluster, namespace: str) -> str | None:
    try:
        return str(_service(cluster, namespace).spec.type)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _conditions(pool: RealPool) -> dict[str, str]:
    return {c["type"]: c["status"] for c in pool.status().get("conditions") or []}


def test_router_service_edits_converge_without_fighting_the_allocator(
    cluster: Cluster, cluster_namespace: str
) -> None:
    ns = cluster_namespace
    with operated_pool(
        cluster,
        ns,
        {
            "replicas": 1,
            "gateway": gateway_spec(),
            "router": {"replicas": 1, "service": {"type": "NodePort"}},
        },
    ) as pool:
        wait_until(
            lambda: _service_type(cluster, ns) == "NodePort",
            timeout=60,
            what="a NodePort router Service",
        )
        first = _service(cluster, ns)
        allocated = {p.name: p.node_port for p in first.spec.ports}
        assert all(allocated.values()), allocated

        def edit(service: dict[str, Any]) -> None:
            pool.patch_spec({"router": {"service": service}})

        edit(
            {
                "type": "NodePort",
                "annotations": {"site.example/vlan": "modalities"},
                "externalTrafficPolicy": "Local",
            }
        )
        wait_until(
            lambda: (
                _service(cluster, ns).spec.external_traffic_policy == "Local"
                and (_service(cluster, ns).metadata.annotations or {}).get("site.example/vlan")
                == "modalities"
            ),
            timeout=60,
            what="the edited Service",
        )
        edited = _service(cluster, ns)
        # Later resyncs (the chart's operator resyncs every 5 s) change nothing more.
        version = edited.metadata.resource_version
        assert "RouterExposed" not in _conditions(pool)
        resyncs = pool.resyncs()
        wait_until(lambda: pool.resyncs() >= resyncs + 2, timeout=30, what="two more resyncs")
        steady = _service(cluster, ns)

        edit(
            {
                "type": "LoadBalancer",
                "loadBalancerSourceRanges": None,
                "externalTrafficPolicy": "Cluster",
                "annotations": None,
            }
        )
        wait_until(
            lambda: _service(cluster, ns).spec.type == "LoadBalancer",
            timeout=60,
            what="a LoadBalancer router Service",
        )
        wait_until(
            lambda: _conditions(pool).get("RouterExposed") == "True",
            timeout=60,
            what="RouterExposed raised",
        )
        balanced = _service(cluster, ns)
        edit({"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.20.0.0/16"]})
        wait_until(
            lambda: "RouterExposed" not in _conditions(pool),
            timeout=60,
            what="RouterExposed cleared by source ranges",
        )
        events = pool.events()
    assert edited.metadata.uid == first.metadata.uid
    assert edited.spec.cluster_ip == first.spec.cluster_ip
    assert {p.name: p.node_port for p in edited.spec.ports} == allocated
    assert steady.metadata.resource_version == version, "the operator rewrote a steady Service"
    assert balanced.metadata.uid == first.metadata.uid, "a type change re-created the Service"
    assert balanced.spec.cluster_ip == first.spec.cluster_ip
    assert {p.name: p.node_port for p in balanced.spec.ports} == allocated
    assert events.count("RouterExposed") == 1
