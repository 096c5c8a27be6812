"""The operator's writes on the real API server, which applies, defaults and canonicalizes.

One chart install serves the module: the operator runs with its
ServiceAccount's token and checks drift every 2 s. Every pool of the module
(:data:`POOLS`) is created with it, so they start together; each test then
changes its own pool and checks the child field by field as the server holds
it, and deletes the pool. After the change the pool is quiet: over the next
drift checks the operator sends no write for it, as the API server's audit
log records (not the operator's own word), and posts no Event. What the
operator applied is what the server holds.

- Removed env vars, ports, limits and pod-template fields go; quantities are
  compared as the server canonicalizes them (``1``, ``1000m``, ``10240Mi``),
  and values it drops (an env value of "", a toleration key of "") are no
  drift.
- Router pods carry every placement field of ``spec.router.podTemplate``
  (admitted with their PriorityClass's value, placed by the real
  scheduler), and the fields dropped from it leave them.
- Adding storage re-creates the StatefulSet (``volumeClaimTemplates`` are
  immutable): the operator deletes it alone, its pods orphaned, once.
- A child the server refuses (a quota allows no LoadBalancer) makes the pool
  Degraded naming it, with one warning Event however many passes follow,
  while every other child is written.
- A write from an older read conflicts (the real server's optimistic
  concurrency), and concurrent passes never end older than the newest spec.

The gateways are DCMTK ``storescp`` (ready at once, little CPU); no DICOM
traffic flows. The conflict tests drive the operator's own write path
(``kubeapply``, ``run_pass``), the second in a namespace no operator watches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import kubernetes.client
import pytest

from gatewaypool.bucketmap import BucketMap, parse_map
from gatewaypool_local.peers.process import wait_until
from gatewaypool_operator.children.desired import routers_configmap
from gatewaypool_operator.children.names import selector_labels
from gatewaypool_operator.kubeapply import Cluster as KubeApi
from gatewaypool_operator.kubeapply import ConflictError
from gatewaypool_operator.runner import PoolLocks, run_pass
from support.audit import AuditLog, Request, service_account
from support.realcluster import IMAGE_REPOSITORY, IMAGE_TAG, Cluster, namespace_for
from support.realpool import RealPool

DCMTK_IMAGE = "registry.example.org/test/dcmtk:1"
ROUTER_IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
#: Drift checks of this module's operator, in seconds.
RESYNC_SECONDS = 2
#: Seconds between two looks at the cluster while waiting (each look is several requests).
POLL = 0.5


def storescp(port: int = 104, **extra: Any) -> dict[str, Any]:
    """A DCMTK storescp gateway on `port` (``spec.gateway``)."""
    return {
        "image": DCMTK_IMAGE,
        "command": ["storescp"],
        "args": [str(port)],
        "aeTitle": "GATEWAY",
        "port": port,
        **extra,
    }


@dataclass
class Operated:
    """The module's namespace, its operator and the pools the running test made."""

    cluster: Cluster
    namespace: str
    operator: str  # the operator's ServiceAccount
    audit: AuditLog
    kube: KubeApi
    pools: list[RealPool]

    def pool(self, name: str) -> RealPool:
        """Pool `name` of :data:`POOLS`; it is deleted after the test."""
        pool = RealPool(self.cluster, self.namespace, name)
        self.pools.append(pool)
        return pool

    def resyncs(self) -> int:
        """Drift checks the operator has made (its log's ``pools checked`` lines)."""
        return sum(
            self.cluster.kubelet.log(pod).count("pools checked")
            for pod in self.cluster.kubelet.pods(self.namespace)
            if pod.name.startswith(f"{self.operator}-")
        )

    def wait_resyncs(self, count: int) -> None:
        mark = self.resyncs()
        wait_until(
            lambda: self.resyncs() >= mark + count,
            timeout=30 + 5 * count * RESYNC_SECONDS,
            what=f"{count} more drift checks",
            interval=POLL,
        )

    def read(self, kind: str, name: str) -> dict[str, Any]:
        return self.kube.read(kind, self.namespace, name) or {}


def pool_spec(gateway: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """2 gateways, 1 router, short handovers."""
    return {
        "replicas": 2,
        "buckets": 64,
        "gateway": gateway,
        "router": {"replicas": 1},
        "handover": {"quietSeconds": 1, "maxDrainSeconds": 10},
        **spec,
    }


#: A PriorityClass of the test cluster, made for the module (the Priority admission
#: plugin refuses a pod naming one that does not exist).
PRIORITY_CLASS: dict[str, Any] = {
    "apiVersion": "scheduling.k8s.io/v1",
    "kind": "PriorityClass",
    "metadata": {"name": "gatewaypool-test-dicom-ingress"},
    "value": 1000,
}
#: ``spec.router.podTemplate``: every placement field, with values that let the
#: routers schedule on the test cluster's nodes.
ROUTER_PLACEMENT: dict[str, Any] = {
    "labels": {"tier": "dicom-ingress"},
    "annotations": {"example.org/owner": "radiology"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dicom-ingress", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {
                                "key": "topology.kubernetes.io/zone",
                                "operator": "In",
                                "values": ["zone-a"],
                            }
                        ]
                    }
                ]
            }
        }
    },
    "priorityClassName": "gatewaypool-test-dicom-ingress",
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
        }
    ],
}

#: The module's pools as each test starts them: all are created with the
#: operator, so that they start together, and each test deletes its own.
POOLS = {
    # The HPA's minReplicas 2 keeps the real HPA controller from scaling an idle pool.
    "hpa": pool_spec(
        storescp(resources={"requests": {"cpu": "0.5"}}),
        autoscaling={
            "minReplicas": 2,
            "maxReplicas": 4,
            "targets": {"cpuUtilization": 70, "studiesInFlight": 3},
        },
    ),
    "env": pool_spec(storescp(env=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])),
    "port": pool_spec(storescp(104)),
    "res": pool_spec(storescp()),
    "tmpl": pool_spec(
        storescp(
            podTemplate={
                "labels": {"team": "imaging"},
                # Labels every node of the test cluster has: the pods still schedule.
                "nodeSelector": {
                    "kubernetes.io/os": "linux",
                    "topology.kubernetes.io/zone": "zone-a",
                },
                "tolerations": [{"key": "dicom", "operator": "Exists", "effect": "NoSchedule"}],
            }
        )
    ),
    # The routers placed as a site places its DICOM ingress (issue 25).
    "place": pool_spec(storescp(), router={"replicas": 1, "podTemplate": ROUTER_PLACEMENT}),
    "disk": pool_spec(storescp()),
    # Values the server stores as absent (omitempty).
    "drop": pool_spec(
        storescp(
            env=[{"name": "EMPTY", "value": ""}, {"name": "SET", "value": "1"}],
            podTemplate={"tolerations": [{"key": "", "operator": "Exists", "effect": ""}]},
        )
    ),
    # The namespace's quota allows no LoadBalancer: this router Service is refused.
    "lb": pool_spec(
        storescp(),
        router={
            "replicas": 1,
            "service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.20.0.0/16"]},
        },
    ),
}
QUOTA = {
    "metadata": {"name": "no-load-balancers"},
    "spec": {"hard": {"services.loadbalancers": "0"}},
}


@pytest.fixture(scope="module")
def operated(cluster: Cluster) -> Iterator[Operated]:
    with cluster.namespace(namespace_for("writes")) as namespace:
        installed = cluster.install(
            namespace, values={"operator": {"resyncSeconds": RESYNC_SECONDS}}
        )
        scheduling: Any = kubernetes.client.SchedulingV1Api(cluster.api())
        scheduling.create_priority_class(PRIORITY_CLASS)
        try:
            core: Any = kubernetes.client.CoreV1Api(cluster.api())
            core.create_namespaced_resource_quota(namespace, QUOTA)
            for name, spec in POOLS.items():
                RealPool(cluster, namespace, name).create(spec)
            [account] = [o for o in installed if o["kind"] == "ServiceAccount"]
            yield Operated(
                cluster,
                namespace,
                str(account["metadata"]["name"]),
                AuditLog(cluster.audit_log),
                KubeApi(cluster.api()),
                [],
            )
        finally:
            cluster.uninstall(installed)
            scheduling.delete_priority_class(PRIORITY_CLASS["metadata"]["name"])


# -- what the server holds -------------------------------------------------------------------


def statefulset(ns: Operated, pool: RealPool) -> dict[str, Any]:
    return ns.read("StatefulSet", f"{pool.name}-gw")


def container(ns: Operated, pool: RealPool) -> dict[str, Any]:
    spec = statefulset(ns, pool).get("spec") or {}
    found: dict[str, Any] = spec.get("template", {}).get("spec", {}).get("containers", [{}])[0]
    return found


def pool_template(ns: Operated, pool: RealPool) -> dict[str, Any]:
    found: dict[str, Any] = statefulset(ns, pool).get("spec", {}).get("template", {})
    return found


def published(ns: Operated, pool: RealPool) -> BucketMap | None:
    data = ns.read("ConfigMap", f"{pool.name}-map").get("data") or {}
    return parse_map(data["map.json"]) if "map.json" in data else None


def change_gateway(pool: RealPool, gateway: dict[str, Any]) -> None:
    """Replace spec.gateway whole (PUT), as an edited manifest does."""
    body = pool.get()
    body["spec"]["gateway"] = gateway
    pool.custom.replace_namespaced_custom_object(
        "gatewaypool.io", "v1alpha1", pool.namespace, "gatewaypools", pool.name, body
    )


def _rolled_out(found: dict[str, Any], replicas: int) -> bool:
    metadata, spec, status = found.get("metadata") or {}, found["spec"], found.get("status") or {}
    return (
        status.get("observedGeneration") == metadata.get("generation")
        and spec.get("replicas") == replicas
        and status.get("replicas") == replicas
        and status.get("updatedReplicas") == replicas
        and status.get("readyReplicas") == replicas
        and status.get("currentRevision", "") == status.get("updateRevision", "")
    )


def rolled_out(ns: Operated, pool: RealPool, replicas: int = 2) -> bool:
    """Gateways and routers all on their current template and Ready, the pool settled."""
    return (
        _rolled_out(statefulset(ns, pool), replicas)
        and _rolled_out(ns.read("Deployment", f"{pool.name}-router"), 1)
        and pool.settled(replicas, 1)
    )


def pool_writes(ns: Operated, pool: RealPool, since: int) -> list[str]:
    """The operator's writes to the pool and its children after `since` (from the audit log)."""

    def ours(request: Request) -> bool:
        return request.name == pool.name or request.name.startswith(f"{pool.name}-")

    return [
        f"{r.verb} {r.full_resource} {r.name}"
        for r in ns.audit.writes(
            since=since, user=service_account(ns.namespace, ns.operator), namespace=ns.namespace
        )
        if ours(r)
    ]


def pool_events(ns: Operated, pool: RealPool, reason: str | None = None) -> list[dict[str, Any]]:
    core: Any = kubernetes.client.CoreV1Api(ns.cluster.api())
    listed = core.list_namespaced_event(
        ns.namespace, field_selector=f"involvedObject.name={pool.name}"
    )
    return [
        {"reason": e.reason, "message": e.message, "count": e.count}
        for e in listed.items
        if reason is None or e.reason == reason
    ]


def assert_quiet(ns: Operated, pool: RealPool, replicas: int = 2) -> None:
    """Once everything rolled out, two drift checks write nothing and post no Event."""
    wait_until(
        lambda: rolled_out(ns, pool, replicas),
        timeout=120,
        what=f"{pool.name} rolled out",
        interval=POLL,
    )
    assert_quiet_now(ns, pool)


def assert_quiet_now(ns: Operated, pool: RealPool) -> None:
    """Two drift checks from now write nothing for `pool` and post no Event about it."""
    # One check to take in what the controllers wrote last (pod and StatefulSet status).
    ns.wait_resyncs(1)
    mark = ns.audit.mark()
    events = len(pool_events(ns, pool))
    ns.wait_resyncs(2)
    assert pool_writes(ns, pool, mark) == []
    assert len(pool_events(ns, pool)) == events


def autoscaler_conditions(ns: Operated, pool: RealPool) -> list[tuple[str, str, str, str]]:
    """The HPA's conditions, which the operator mirrors into the pool's status."""
    status = ns.read("HorizontalPodAutoscaler", pool.name).get("status") or {}
    return sorted(
        (c["type"], c["status"], c.get("reason", ""), c.get("message", ""))
        for c in status.get("conditions") or []
    )


def assert_quiet_while_the_autoscaler_is(ns: Operated, pool: RealPool) -> None:
    """Like `assert_quiet`, over a window in which the HPA's own conditions did not change.

    While the real HPA controller's view settles (metrics-server has not yet
    scraped new pods, a metric API appears), its condition messages change;
    the operator then rightly writes the pool's status once. A window in which
    that happened proves nothing either way, so it is tried again.
    """
    wait_until(
        lambda: rolled_out(ns, pool, 2), timeout=120, what=f"{pool.name} rolled out", interval=POLL
    )
    for _attempt in range(5):
        ns.wait_resyncs(1)
        before = autoscaler_conditions(ns, pool)
        mark = ns.audit.mark()
        events = len(pool_events(ns, pool))
        ns.wait_resyncs(2)
        if autoscaler_conditions(ns, pool) != before:
            continue
        assert pool_writes(ns, pool, mark) == []
        assert len(pool_events(ns, pool)) == events
        return
    pytest.fail(f"the HPA's conditions never held still over two drift checks: {before}")


def rolled(ns: Operated, pool: RealPool) -> None:
    """The pool created, its gateways and routers Ready, its map published and confirmed."""
    wait_until(
        lambda: published(ns, pool) is not None and rolled_out(ns, pool),
        timeout=180,
        what=f"{pool.name} created, rolled out, map published",
        interval=POLL,
    )


# -- the tests -------------------------------------------------------------------------------


def test_an_autoscaled_pool_is_quiet_once_applied(ns: Operated) -> None:
    # The server defaults what the operator leaves out of its HPA, and
    # canonicalizes the gateways' quantities: nothing to write again. The real
    # HPA controller writes the autoscaler's status meanwhile.
    pool = ns.pool("hpa")
    rolled(ns, pool)
    assert_quiet_while_the_autoscaler_is(ns, pool)
    hpa = ns.read("HorizontalPodAutoscaler", "hpa")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert set(hpa["spec"]["behavior"]) == {"scaleUp", "scaleDown"}
    assert container(ns, pool)["resources"] == {"requests": {"cpu": "500m"}}


def test_a_removed_env_var_goes(ns: Operated) -> None:
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    pool = ns.pool("env")
    rolled(ns, pool)
    assert container(ns, pool)["env"] == env
    change_gateway(pool, storescp(env=env[:1]))
    wait_until(
        lambda: container(ns, pool).get("env") == env[:1],
        timeout=30,
        what="B removed",
        interval=POLL,
    )
    assert container(ns, pool)["image"] == DCMTK_IMAGE
    assert_quiet(ns, pool)


def test_empty_strings_the_server_drops_are_no_drift(ns: Operated) -> None:
    # The server stores env value "" and toleration key "" as absent (omitempty):
    # compared as present, they were applied again, with an Event, on every pass.
    pool = ns.pool("drop")
    rolled(ns, pool)
    assert container(ns, pool)["env"] == [{"name": "EMPTY"}, {"name": "SET", "value": "1"}]
    assert pool_template(ns, pool)["spec"]["tolerations"] == [{"operator": "Exists"}]
    assert_quiet(ns, pool)
    assert pool_events(ns, pool, "ChildUpdated") == []


def test_a_new_port_replaces_the_old_one(ns: Operated) -> None:
    pool = ns.pool("port")
    rolled(ns, pool)
    core: Any = kubernetes.client.CoreV1Api(ns.cluster.api())

    def pod_ports() -> dict[str, int]:
        listed = core.list_namespaced_pod(
            ns.namespace,
            label_selector="app.kubernetes.io/instance=port,app.kubernetes.io/component=gateway",
        )
        return {
            pod.metadata.name: pod.spec.containers[0].ports[0].container_port
            for pod in listed.items
            if pod.metadata.deletion_timestamp is None
        }

    change_gateway(pool, storescp(4242))
    wait_until(
        lambda: (
            container(ns, pool).get("ports")
            == [{"name": "dicom", "containerPort": 4242, "protocol": "TCP"}]
        ),
        timeout=30,
        what="one dicom port, 4242",
        interval=POLL,
    )
    service = ns.read("Service", "port-gw")
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("dicom", 4242)]
    wait_until(
        lambda: (
            ns.read("NetworkPolicy", "port-gw")["spec"]["ingress"][0]["ports"]
            == [{"protocol": "TCP", "port": 4242}]
        ),
        timeout=30,
        what="the policy on port 4242",
        interval=POLL,
    )
    # The real StatefulSet controller rolls the pods one at a time; the map
    # names each gateway at the port its pod serves, never at one it does
    # not serve yet.
    mismatches: list[str] = []

    def map_follows_pods() -> bool:
        current = published(ns, pool)
        assert current is not None
        ports = pod_ports()
        for gateway in current.gateways:
            # Named at 4242 only once its pod has 4242 (the old pod, still on
            # 104, keeps 104 until it is replaced).
            if gateway.port == 4242 and ports.get(gateway.name, 4242) != 4242:
                mismatches.append(f"{gateway.name}: map {gateway.port}, pod {ports[gateway.name]}")
        return {g.port for g in current.gateways} == {4242}

    wait_until(map_follows_pods, timeout=120, what="map with port 4242", interval=0.2)
    assert not mismatches
    assert_quiet(ns, pool)


def test_resources_written_as_1_and_1000m(ns: Operated) -> None:
    pool = ns.pool("res")
    rolled(ns, pool)
    resources = {
        "requests": {"cpu": 1, "memory": "1024Mi"},
        "limits": {"cpu": "1000m", "memory": "2Gi"},
    }
    change_gateway(pool, storescp(resources=resources))
    wait_until(
        lambda: (
            container(ns, pool).get("resources")
            == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
        ),
        timeout=30,
        what="canonical resources",
        interval=POLL,
    )
    assert_quiet(ns, pool)
    change_gateway(pool, storescp(resources={"requests": {"cpu": "500m"}}))
    wait_until(
        lambda: container(ns, pool).get("resources") == {"requests": {"cpu": "500m"}},
        timeout=30,
        what="limits and memory removed",
        interval=POLL,
    )
    assert_quiet(ns, pool)


def test_pod_template_edits(ns: Operated) -> None:
    pool = ns.pool("tmpl")
    rolled(ns, pool)
    assert pool_template(ns, pool)["spec"]["tolerations"] == [
        {"key": "dicom", "operator": "Exists", "effect": "NoSchedule"}
    ]
    spread = [
        {
            "maxSkew": 2,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
        }
    ]
    change_gateway(
        pool,
        storescp(
            podTemplate={
                "nodeSelector": {"kubernetes.io/os": "linux"},
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {"key": "kubernetes.io/arch", "operator": "Exists"}
                                    ]
                                }
                            ]
                        }
                    }
                },
                "topologySpreadConstraints": spread,
            }
        ),
    )

    def pod() -> dict[str, Any]:
        return pool_template(ns, pool)

    wait_until(
        lambda: "tolerations" not in pod().get("spec", {}), timeout=30, what="edited", interval=POLL
    )
    assert pod()["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert "team" not in pod()["metadata"]["labels"]
    assert pod()["spec"]["affinity"]["nodeAffinity"]
    selector = {"matchLabels": selector_labels("tmpl", "gateway")}
    assert pod()["spec"]["topologySpreadConstraints"] == [{**spread[0], "labelSelector": selector}]
    assert_quiet(ns, pool)


def router_pods(ns: Operated, pool: RealPool) -> list[dict[str, Any]]:
    """The pool's router pods the server holds, but those on their way out."""
    selector = ",".join(f"{k}={v}" for k, v in selector_labels(pool.name, "router").items())
    return [
        p
        for p in ns.cluster.pods(ns.namespace, selector)
        if not p["metadata"].get("deletionTimestamp")
    ]


def test_router_pods_carry_the_placement_fields(ns: Operated) -> None:
    # Scheduled by the real scheduler, admitted with the PriorityClass's value.
    pool = ns.pool("place")
    rolled(ns, pool)
    [pod] = router_pods(ns, pool)
    spec = pod["spec"]
    assert pod["metadata"]["labels"]["tier"] == "dicom-ingress"
    assert pod["metadata"]["annotations"]["example.org/owner"] == "radiology"
    assert spec["nodeSelector"] == ROUTER_PLACEMENT["nodeSelector"]
    assert ROUTER_PLACEMENT["tolerations"][0] in spec["tolerations"]
    assert spec["affinity"] == ROUTER_PLACEMENT["affinity"]
    assert (spec["priorityClassName"], spec["priority"]) == ("gatewaypool-test-dicom-ingress", 1000)
    selector = {"matchLabels": selector_labels("place", "router")}
    assert spec["topologySpreadConstraints"] == [
        {**ROUTER_PLACEMENT["topologySpreadConstraints"][0], "labelSelector": selector}
    ]
    assert spec["nodeName"]
    assert_quiet_now(ns, pool)

    # Fields dropped from the template leave the pods; the default spread comes back.
    body = pool.get()
    body["spec"]["router"]["podTemplate"] = {"nodeSelector": {"kubernetes.io/os": "linux"}}
    pool.custom.replace_namespaced_custom_object(
        "gatewaypool.io", "v1alpha1", pool.namespace, "gatewaypools", pool.name, body
    )

    def placed() -> dict[str, Any]:
        pods = router_pods(ns, pool)
        return pods[0] if len(pods) == 1 and "priorityClassName" not in pods[0]["spec"] else {}

    wait_until(
        lambda: bool(placed()), timeout=90, what="a router without the fields", interval=POLL
    )
    after = placed()
    assert "tier" not in after["metadata"]["labels"]
    assert "example.org/owner" not in (after["metadata"].get("annotations") or {})
    assert "affinity" not in after["spec"]
    assert ROUTER_PLACEMENT["tolerations"][0] not in after["spec"]["tolerations"]
    assert after["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert len(after["spec"]["topologySpreadConstraints"]) == 2  # the default spread
    assert_quiet(ns, pool)


def test_adding_storage_recreates_the_statefulset_and_orphans_its_pods(ns: Operated) -> None:
    pool = ns.pool("disk")
    rolled(ns, pool)
    before = statefulset(ns, pool)["metadata"]["uid"]
    mark = ns.audit.mark()
    change_gateway(pool, storescp(storage={"size": "10240Mi", "storageClassName": "fast"}))

    def recreated() -> dict[str, Any]:
        found = statefulset(ns, pool)
        return found if found.get("metadata", {}).get("uid", before) != before else {}

    # volumeClaimTemplates are immutable: the old StatefulSet goes first, and
    # the server keeps it (finalizer orphan) until the garbage collector has
    # detached its pods.
    wait_until(lambda: bool(recreated()), timeout=90, what="a new StatefulSet", interval=POLL)
    after = recreated()
    [claim] = after["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert {"name": "data", "mountPath": "/var/lib/gateway"} in container(ns, pool)["volumeMounts"]
    wait_until(
        lambda: bool(pool_events(ns, pool, "ChildRecreated")),
        timeout=30,
        what="ChildRecreated event",
        interval=POLL,
    )
    # The operator deleted the StatefulSet alone, its pods orphaned (the
    # rolling update that follows, for the new volume, is the controller's).
    operator = service_account(ns.namespace, ns.operator)
    deletes = [
        r
        for r in ns.audit.writes(since=mark, user=operator, namespace=ns.namespace)
        if r.verb == "delete"
    ]
    assert [(r.full_resource, r.name) for r in deletes] == [("statefulsets", "disk-gw")]
    assert deletes[0].body.get("propagationPolicy") == "Orphan", deletes[0].body
    conditions = {c["type"]: c for c in pool.status().get("conditions") or []}
    assert conditions.get("Degraded", {}).get("status") != "True", conditions.get("Degraded")
    # No provisioner serves class "fast": the new gateway-1 waits for its claim
    # and the rollout stops there, gateway-0 serving. A steady state too.
    wait_until(
        lambda: not pool.status().get("movingBuckets"),
        timeout=60,
        what="no bucket moving",
        interval=POLL,
    )
    assert_quiet_now(ns, pool)


def test_a_refused_write_is_degraded_with_one_warning(ns: Operated) -> None:
    # The namespace's quota allows no LoadBalancer: the router Service is refused (403).
    core: Any = kubernetes.client.CoreV1Api(ns.cluster.api())
    try:
        pool = ns.pool("lb")

        def degraded() -> dict[str, Any]:
            for condition in pool.status().get("conditions") or []:
                if condition["type"] == "Degraded" and condition["status"] == "True":
                    return dict(condition)
            return {}

        wait_until(lambda: bool(degraded()), timeout=90, what="the pool Degraded", interval=POLL)
        assert degraded()["reason"] == "ApplyRefused"
        assert "Service lb-router" in degraded()["message"]
        assert "exceeded quota" in degraded()["message"], degraded()
        # The other children are written: the gateways run, the routers have their map.
        wait_until(lambda: pool.settled(2, 1), timeout=180, what="lb settled", interval=POLL)
        ns.wait_resyncs(3)
        warnings = pool_events(ns, pool, "ApplyRefused")
    finally:
        core.delete_namespaced_resource_quota("no-load-balancers", ns.namespace)
    assert len(warnings) == 1, warnings
    assert warnings[0]["count"] == 1, warnings


def test_a_write_from_an_older_read_conflicts(ns: Operated) -> None:
    kube = ns.kube
    desired = routers_configmap(name="conflict", namespace=ns.namespace)
    desired["data"] = {"a": "1"}
    kube.apply(desired, base=None, exclusive=True)
    read = kube.read("ConfigMap", ns.namespace, "conflict-routers")
    assert read is not None
    kube.apply({**desired, "data": {"a": "2"}}, base=read)
    # The server refuses a write at the resourceVersion of an older read (409).
    with pytest.raises(ConflictError):
        kube.apply({**desired, "data": {"a": "3"}}, base=read)
    # And a create of what exists.
    with pytest.raises(ConflictError):
        kube.apply(desired, base=None, exclusive=True)
    assert (kube.read("ConfigMap", ns.namespace, "conflict-routers") or {})["data"] == {"a": "2"}


def test_concurrent_passes_never_end_older_than_the_newest_spec(
    cluster: Cluster, cluster_namespace: str
) -> None:
    """A change handler and the resync race on one pool; the end state is the newest spec.

    Odd rounds share the locks (one process: handler and resync); even rounds
    use two (as two operator processes would): then the real server's
    conditional writes alone keep a stale pass from winning. No operator
    watches this namespace: the test's threads are the only writers.
    """
    pool = RealPool(cluster, cluster_namespace, "ct")
    pool.create(
        {
            "replicas": 2,
            "buckets": 64,
            "gateway": storescp(),
            "router": {"replicas": 1},
            "handover": {"quietSeconds": 1, "maxDrainSeconds": 10},
        }
    )
    kube = KubeApi(cluster.api())
    shared = PoolLocks()
    errors: list[BaseException] = []

    def one_pass(locks: PoolLocks) -> None:
        try:
            run_pass(kube, locks, namespace=cluster_namespace, name="ct", router_image=ROUTER_IMAGE)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    def current_map() -> BucketMap | None:
        data = (kube.read("ConfigMap", cluster_namespace, "ct-map") or {}).get("data") or {}
        return parse_map(data["map.json"]) if "map.json" in data else None

    def first_map() -> bool:
        run_pass(kube, shared, namespace=cluster_namespace, name="ct", router_image=ROUTER_IMAGE)
        return current_map() is not None

    # Every round then races on a published map, however slow the machine.
    wait_until(first_map, timeout=90, what="a gateway Ready and the first map", interval=1)
    versions: list[int] = []
    for round_number, replicas in enumerate([3, 5, 2, 7, 4, 6, 1, 8, 3, 5, 2, 6]):
        pool.scale(replicas)
        locks = (shared, shared) if round_number % 2 else (shared, PoolLocks())
        threads = [threading.Thread(target=one_pass, args=(lock,)) for lock in locks * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        # Gateways grow at once; leaving ones stay until drained, never fewer.
        found = kube.read("StatefulSet", cluster_namespace, "ct-gw") or {}
        assert found["spec"]["replicas"] >= replicas
        bucket_map = current_map()
        assert bucket_map is not None, "a published map never goes away"
        # Nothing computed from an older spec got through: no bucket moves to
        # a gateway the newest spec does not want.
        assert all(target < replicas for target in bucket_map.moving.values()), round_number
        versions.append(bucket_map.version)
    assert versions == sorted(versions), "a map version went back"
