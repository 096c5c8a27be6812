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
from collections.abc import Callable
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from gatewaypool_local.peers.process import wait_until
from gatewaypool_operator.drift import owned_paths
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


# --- the router Service, edited step by step on the real API server ------------------------

MODALITIES = [{"ipBlock": {"cidr": "10.20.30.0/24"}}]
ALLOCATED = ("f:clusterIP", "f:clusterIPs", "f:healthCheckNodePort")


def _free_node_port(core: Any) -> int:
    """A node port no Service of the cluster holds, in the default range 30000-32767."""
    taken = {
        port.node_port
        for service in core.list_service_for_all_namespaces().items
        for port in service.spec.ports or []
        if port.node_port
    }
    return next(port for port in range(32767, 29999, -1) if port not in taken)


def _service_dict(cluster: Cluster, namespace: str) -> dict[str, Any]:
    serialize: Any = cluster.api().sanitize_for_serialization
    found: dict[str, Any] = serialize(_service(cluster, namespace))
    return found


def _ours(service: dict[str, Any]) -> set[tuple[str, ...]]:
    """The fields the operator's apply owns in `service`."""
    return owned_paths(service) or set()


def _set_router_service(
    pool: RealPool, service: dict[str, Any], router_from: list[dict[str, Any]]
) -> None:
    """Replace ``spec.router.service`` and ``spec.networkPolicy.routerFrom`` (a JSON patch:
    a merge patch could not drop one key of a nested map)."""
    pool.custom.patch_namespaced_custom_object(
        API_GROUP,
        API_VERSION,
        pool.namespace,
        PLURAL,
        pool.name,
        [
            {"op": "add", "path": "/spec/router/service", "value": service},
            {"op": "add", "path": "/spec/networkPolicy", "value": {"routerFrom": router_from}},
        ],
        _content_type="application/json-patch+json",
    )


def test_router_service_edits_converge_without_fighting_the_allocator(
    cluster: Cluster, cluster_namespace: str
) -> None:
    """Every setting of ``spec.router.service`` changed in turn on a live pool.

    After each step the Service is as the spec says, stays so over two more
    drift checks, and the operator's apply owns none of the allocated fields;
    the operator wrote it once per step, never in between (it does not fight
    the allocator). The name and identity,
    the cluster IP and allocated node ports stay until a documented change
    (``loadBalancerClass`` re-creates the Service; ClusterIP has no node ports).
    """
    ns = cluster_namespace
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    lb_local = {
        "type": "LoadBalancer",
        "externalTrafficPolicy": "Local",
        "loadBalancerSourceRanges": ["10.20.30.0/24"],
    }
    with operated_pool(
        cluster,
        ns,
        {"replicas": 1, "gateway": gateway_spec(), "router": {"replicas": 1}},
        # Drift checks often, so that waiting for two after each step is short.
        values={"operator": {"resyncSeconds": 1.5}},
    ) as pool:
        wait_until(lambda: _service_type(cluster, ns) == "ClusterIP", timeout=60, what="Service")
        first = _service_dict(cluster, ns)
        uid, cluster_ip = first["metadata"]["uid"], first["spec"]["clusterIP"]
        # Steps that change the Service's settings: one write each.
        writes, previous = 0, dict[str, Any]()

        def step(
            what: str,
            service: dict[str, Any],
            done: Callable[[dict[str, Any]], bool],
            *,
            router_from: list[dict[str, Any]] | None = None,
        ) -> dict[str, Any]:
            nonlocal writes, previous
            writes += service != previous
            previous = service
            _set_router_service(pool, service, router_from or [])

            def converged() -> bool:
                try:
                    return done(_service_dict(cluster, ns))
                except ApiException as exc:  # a moment absent while it is re-created
                    if exc.status == 404:
                        return False
                    raise

            wait_until(converged, timeout=60, what=what)
            settled = _service_dict(cluster, ns)
            resyncs = pool.resyncs()
            wait_until(lambda: pool.resyncs() >= resyncs + 2, timeout=30, what="two resyncs")
            steady = _service_dict(cluster, ns)
            assert (
                steady["metadata"]["resourceVersion"] == settled["metadata"]["resourceVersion"]
            ), f"{what}: the operator rewrote a Service that was in line"
            assert _conditions(pool).get("Degraded") != "True", pool.status()["conditions"]
            for path in _ours(steady):
                assert not set(path) & set(ALLOCATED), f"{what}: the operator owns {path}"
                if path[-1] == "f:nodePort":
                    assert service.get("nodePorts"), f"{what}: the operator owns {path}"
            return steady

        def ports(service: dict[str, Any]) -> dict[str, int | None]:
            return {p["name"]: p.get("nodePort") for p in service["spec"]["ports"]}

        node_port = step(
            "NodePort, Local, annotated and labelled",
            {
                "type": "NodePort",
                "externalTrafficPolicy": "Local",
                "annotations": {"site.example/vlan": "modalities"},
                "labels": {"site": "north"},
            },
            lambda s: (
                s["spec"]["type"] == "NodePort"
                and s["spec"].get("externalTrafficPolicy") == "Local"
                and (s["metadata"].get("annotations") or {}).get("site.example/vlan")
                == "modalities"
                and s["metadata"]["labels"].get("site") == "north"
            ),
        )
        allocated = ports(node_port)
        assert all(allocated.values()), allocated

        balanced = step(
            "LoadBalancer, Local, source ranges; no annotation or label",
            lb_local,
            lambda s: (
                s["spec"]["type"] == "LoadBalancer"
                and bool(s["spec"].get("healthCheckNodePort"))
                and "site.example/vlan" not in (s["metadata"].get("annotations") or {})
                and "site" not in s["metadata"]["labels"]
            ),
        )
        health_port = balanced["spec"]["healthCheckNodePort"]
        assert ports(balanced) == allocated
        assert "RouterExposed" not in _conditions(pool)

        # An operator upgrade starts a new operator pod: it resumes, checks the
        # pool and has nothing to write to the Service.
        def operators() -> list[Any]:
            return [p for p in cluster.kubelet.pods(ns) if not p.name.startswith("ct-")]

        [old] = [p for p in operators() if not p.done]
        core.delete_namespaced_pod(old.name, ns)
        wait_until(
            lambda: (
                sum(
                    cluster.kubelet.log(p).count("pools checked")
                    for p in operators()
                    if p.uid != old.uid
                )
                >= 2
            ),
            timeout=120,
            what="two drift checks by the new operator",
        )
        restarted = _service_dict(cluster, ns)

        fixed_port = _free_node_port(core)
        fixed = step(
            "a fixed node port",
            lb_local | {"nodePorts": {"dicom": fixed_port}},
            lambda s: ports(s)["dicom"] == fixed_port,
        )
        assert fixed["spec"]["healthCheckNodePort"] == health_port

        unfixed = step(
            "the node port no longer fixed",
            lb_local,
            lambda s: not any(p[-1] == "f:nodePort" for p in _ours(s)),
        )
        # Nobody fixes it now, and the server keeps the port it has.
        assert ports(unfixed)["dicom"] == fixed_port
        assert unfixed["spec"]["healthCheckNodePort"] == health_port

        # A hand edit that opens the load balancer to everyone is put back.
        core.patch_namespaced_service(
            "ct-router", ns, {"spec": {"loadBalancerSourceRanges": ["0.0.0.0/0"]}}
        )
        wait_until(
            lambda: (
                _service_dict(cluster, ns)["spec"]["loadBalancerSourceRanges"]
                == lb_local["loadBalancerSourceRanges"]
            ),
            timeout=60,
            what="the source ranges put back",
        )
        writes += 1
        repaired = _service_dict(cluster, ns)
        assert repaired["spec"]["healthCheckNodePort"] == health_port

        # A node port outside the cluster's range: the API server refuses it, the
        # pool says so, and the Service stays as it was until the next step.
        _set_router_service(pool, lb_local | {"nodePorts": {"dicom": 104}}, [])

        def refused() -> str:
            for condition in pool.status().get("conditions") or []:
                if condition["type"] == "Degraded" and condition["reason"] == "ApplyRefused":
                    return str(condition["message"])
            return ""

        wait_until(lambda: bool(refused()), timeout=60, what="the pool Degraded")
        assert "Service ct-router" in refused() and "104" in refused(), refused()
        assert (
            _service_dict(cluster, ns)["metadata"]["resourceVersion"]
            == repaired["metadata"]["resourceVersion"]
        )

        step(
            "a LoadBalancer open to any source",
            {"type": "LoadBalancer"},
            lambda s: (
                s["spec"].get("externalTrafficPolicy") == "Cluster"
                and not s["spec"].get("loadBalancerSourceRanges")
                and not s["spec"].get("healthCheckNodePort")
            ),
        )
        wait_until(
            lambda: _conditions(pool).get("RouterExposed") == "True",
            timeout=60,
            what="RouterExposed raised",
        )
        step(
            "the routers' NetworkPolicy restricting the sources",
            {"type": "LoadBalancer"},
            lambda s: True,
            router_from=MODALITIES,
        )
        wait_until(
            lambda: "RouterExposed" not in _conditions(pool),
            timeout=60,
            what="RouterExposed cleared by routerFrom",
        )

        dual = step(
            "dual-stack",
            {
                "type": "LoadBalancer",
                "ipFamilyPolicy": "PreferDualStack",
                "ipFamilies": ["IPv4", "IPv6"],
            },
            lambda s: len(s["spec"].get("clusterIPs") or []) == 2,
            router_from=MODALITIES,
        )
        single = step(
            "the IP families left to the cluster again",
            {"type": "LoadBalancer"},
            lambda s: not any("f:ipFamilies" in p or "f:ipFamilyPolicy" in p for p in _ours(s)),
            router_from=MODALITIES,
        )
        classed = step(
            "a load balancer class",
            {"type": "LoadBalancer", "loadBalancerClass": "example.com/internal"},
            lambda s: s["spec"].get("loadBalancerClass") == "example.com/internal",
            router_from=MODALITIES,
        )
        back = step(
            "back to NodePort",
            {"type": "NodePort"},
            lambda s: s["spec"]["type"] == "NodePort",
        )
        cleared = step(
            "back to ClusterIP",
            {},
            lambda s: s["spec"]["type"] == "ClusterIP",
        )
        events = pool.events()
        log = pool.operator_log()
    # One write per change of the Service's settings, none in between: no fight.
    assert log.count("Service/ct-router patched") + log.count("Service/ct-router recreated") == (
        writes
    )
    for service in (node_port, balanced, fixed, unfixed, repaired, dual, single):
        assert service["metadata"]["name"] == "ct-router"
        assert service["metadata"]["uid"] == uid, "an edit re-created the Service"
        assert service["spec"]["clusterIP"] == cluster_ip
    assert ports(balanced) == allocated
    assert restarted["metadata"]["resourceVersion"] == balanced["metadata"]["resourceVersion"]
    # loadBalancerClass is kept once set: the Service was re-created, as documented.
    assert classed["metadata"]["uid"] != uid
    assert "ChildRecreated" in events
    # The class goes with the type; the node ports the load balancer had stay.
    assert back["metadata"]["uid"] == classed["metadata"]["uid"]
    assert "loadBalancerClass" not in back["spec"]
    assert ports(back) == ports(classed)
    assert cleared["metadata"]["uid"] == classed["metadata"]["uid"]
    assert cleared["spec"]["clusterIP"] == classed["spec"]["clusterIP"]
    assert "loadBalancerClass" not in cleared["spec"]
    assert ports(cleared) == {"dicom": None}
    assert "healthCheckNodePort" not in cleared["spec"]
    assert events.count("RouterExposed") == 1
