"""How the real API server takes the pool's children: validation, refusals, defaults, re-creation.

- Every accepted combination of ``spec.router.service`` renders a Service the
  real API server creates (a server-side dry run, in this dual-stack
  cluster), and what the spec check refuses includes every one it would not.
- One child the server refuses (a ResourceQuota allows no LoadBalancer) makes
  the pool Degraded naming that child and the server's message, while every
  other child is written.
- A steady pool whose spec holds values the server drops (an env value of
  "", a toleration without key) writes nothing over several resyncs: no
  drift loop.
- Adding storage re-creates the StatefulSet (``volumeClaimTemplates`` are
  immutable) once the old one is gone: the server keeps it with the
  ``orphan`` finalizer until the garbage collector has detached its pods.
"""

from __future__ import annotations

from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from gatewaypool_local.peers import wait_until
from gatewaypool_operator.children import build_children
from gatewaypool_operator.spec import SpecError, parse_spec
from support.realcluster import Cluster
from support.realpool import RealPool, gateway_spec, operated_pool
from support.servicecombos import combinations


def test_every_accepted_router_service_is_created_by_the_real_api_server(
    cluster: Cluster, cluster_namespace: str
) -> None:
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    created = refused_by_spec = 0
    for router in combinations():
        try:
            spec = parse_spec(
                {"gateway": {"image": "gw:1"}, "router": router}, default_router_image="gp:1"
            )
        except SpecError:
            refused_by_spec += 1
            continue
        [service] = [
            child
            for child in build_children(
                name="ct", namespace=cluster_namespace, spec=spec, map_data=None, gateway_replicas=1
            )
            if child["kind"] == "Service" and child["metadata"]["name"] == "ct-router"
        ]
        try:
            core.create_namespaced_service(cluster_namespace, service, dry_run="All")
        except ApiException as exc:
            raise AssertionError(f"{router}: {exc.body}") from None
        created += 1
    assert created > 100 and refused_by_spec > 500, (created, refused_by_spec)


def _conditions(pool: RealPool) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in pool.status().get("conditions") or []}


def test_a_child_the_server_refuses_degrades_the_pool_and_the_others_are_written(
    cluster: Cluster, cluster_namespace: str
) -> None:
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    core.create_namespaced_resource_quota(
        cluster_namespace,
        {
            "metadata": {"name": "no-load-balancers"},
            "spec": {"hard": {"services.loadbalancers": "0"}},
        },
    )
    spec = {
        "replicas": 1,
        "gateway": gateway_spec(),
        "router": {
            "replicas": 1,
            "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.20.0.0/16"]},
        },
    }
    with operated_pool(cluster, cluster_namespace, spec) as pool:
        wait_until(
            lambda: _conditions(pool).get("Degraded", {}).get("status") == "True",
            timeout=90,
            what="the pool Degraded",
        )
        degraded = _conditions(pool)["Degraded"]
        # The rest is written: the gateways run and the routers get their map.
        pool.wait_settled(1, 1, timeout=120)
        apps: Any = kubernetes.client.AppsV1Api(cluster.api())
        deployment = apps.read_namespaced_deployment("ct-router", cluster_namespace)
    assert "Service" in degraded["message"] and "ct-router" in degraded["message"]
    assert "exceeded quota" in degraded["message"], degraded
    assert deployment.status.ready_replicas == 1


def test_values_the_server_drops_are_no_drift(cluster: Cluster, cluster_namespace: str) -> None:
    gateway = gateway_spec()
    gateway["env"] = [{"name": "EMPTY", "value": ""}]
    gateway["podTemplate"] = {
        "tolerations": [{"operator": "Exists", "key": "", "effect": "NoSchedule"}]
    }
    spec = {"replicas": 1, "gateway": gateway, "router": {"replicas": 1}}
    with operated_pool(cluster, cluster_namespace, spec) as pool:
        pool.wait_settled(1, 1, timeout=120)
        apps: Any = kubernetes.client.AppsV1Api(cluster.api())
        before = apps.read_namespaced_stateful_set("ct-gw", cluster_namespace).metadata
        resyncs = pool.resyncs()
        wait_until(lambda: pool.resyncs() >= resyncs + 3, timeout=40, what="three more resyncs")
        after = apps.read_namespaced_stateful_set("ct-gw", cluster_namespace).metadata
        events = pool.events()
    assert after.resource_version == before.resource_version, "the StatefulSet was rewritten"
    assert "ChildUpdated" not in events


def test_adding_storage_recreates_the_statefulset_once_the_old_one_is_gone(
    cluster: Cluster, cluster_namespace: str
) -> None:
    spec = {"replicas": 1, "gateway": gateway_spec(), "router": {"replicas": 1}}
    with operated_pool(cluster, cluster_namespace, spec) as pool:
        pool.wait_settled(1, 1, timeout=120)
        apps: Any = kubernetes.client.AppsV1Api(cluster.api())
        old = apps.read_namespaced_stateful_set("ct-gw", cluster_namespace).metadata.uid
        pool.patch_spec({"gateway": {"storage": {"size": "1Gi", "mountPath": "/var/lib/gateway"}}})

        def recreated() -> Any:
            try:
                found = apps.read_namespaced_stateful_set("ct-gw", cluster_namespace)
            except ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return found if found.metadata.uid != old else None

        wait_until(lambda: recreated() is not None, timeout=90, what="a new StatefulSet")
        new = recreated()
        conditions = _conditions(pool)
    claims = [claim.metadata.name for claim in new.spec.volume_claim_templates or []]
    assert claims == ["data"]
    assert conditions.get("Degraded", {}).get("status") != "True", conditions.get("Degraded")
