"""spec.autoscaling on the real control plane: the HorizontalPodAutoscaler the operator keeps.

The operator runs as the chart's Deployment, with its ServiceAccount's token;
kube-controller-manager's HPA controller (sync period 2 s) acts on every HPA
here as in a cluster: it raises a pool to ``minReplicas`` through the scale
subresource, and reports on the HPA when it cannot read a metric. One
operator serves the module's pools, each with a name of its own.

The pools' gateways are DCMTK ``storescp`` (no traffic is sent here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from gatewaypool.bucketmap import parse_map
from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from gatewaypool_local.peers.process import wait_until
from support.outcome import did_fail
from support.realcluster import Cluster, namespace_for
from support.realpool import RealPool

#: A gateway that starts quickly: DCMTK's storescp (no traffic is sent here).
GATEWAY = {
    "image": "registry.example.org/test/dcmtk:1",
    "command": ["storescp"],
    "args": ["104"],
    "aeTitle": "TRIAGE",
    "port": 104,
    "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}},
}
#: The operator's drift checks, in seconds: "two passes" below take twice this.
RESYNC_SECONDS = 2


@pytest.fixture(scope="module")
def operator_namespace(cluster: Cluster) -> Iterator[str]:
    """A namespace with the chart installed: one operator for the module's pools."""
    with cluster.namespace(namespace_for("operator-autoscaling")) as namespace:
        installed = cluster.install(
            namespace, values={"operator": {"resyncSeconds": RESYNC_SECONDS}}
        )
        try:
            yield namespace
        finally:
            cluster.uninstall(installed)


@pytest.fixture
def ns(operator_namespace: str, cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """The module's namespace, emptied of pools and autoscalers after each test.

    The operator's log is printed when the test fails.
    """
    yield operator_namespace
    if did_fail(request):
        for pod in cluster.kubelet.pods(operator_namespace):
            if "-gw-" not in pod.name and "-router-" not in pod.name:
                print(f"--- pod {pod.name} ---")
                print("\n".join(cluster.kubelet.log(pod).splitlines()[-40:]))
    custom: Any = kubernetes.client.CustomObjectsApi(cluster.api())
    custom.delete_collection_namespaced_custom_object(
        API_GROUP, API_VERSION, operator_namespace, PLURAL
    )
    autoscalers(cluster).delete_collection_namespaced_horizontal_pod_autoscaler(operator_namespace)


def create_pool(
    cluster: Cluster,
    namespace: str,
    name: str,
    *,
    replicas: int,
    autoscaling: dict[str, Any] | None,
    router: dict[str, Any] | None = None,
) -> RealPool:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "buckets": 16,
        "gateway": dict(GATEWAY),
        "router": {"replicas": 1, **(router or {})},
        "handover": {"quietSeconds": 1, "maxDrainSeconds": 10},
    }
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    pool = RealPool(cluster, namespace, name)
    pool.create(spec)
    return pool


def autoscalers(cluster: Cluster) -> Any:
    return kubernetes.client.AutoscalingV2Api(cluster.api())


def hpa(cluster: Cluster, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        found = autoscalers(cluster).read_namespaced_horizontal_pod_autoscaler(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    serialize: Any = cluster.api().sanitize_for_serialization
    return dict(serialize(found))


def metric_types(cluster: Cluster, namespace: str, name: str) -> list[str]:
    found = hpa(cluster, namespace, name) or {}
    return [metric["type"] for metric in found.get("spec", {}).get("metrics") or []]


def degraded(pool: RealPool) -> tuple[str, str, bool]:
    """The pool's Degraded condition, and whether it names the studies-in-flight metric."""
    for condition in pool.status().get("conditions") or []:
        if condition["type"] == "Degraded":
            named = "gatewaypool_studies_in_flight" in condition.get("message", "")
            return condition["status"], condition["reason"], named
    return "", "", False


def events(pool: RealPool) -> list[tuple[str, str]]:
    listed = pool.core.list_namespaced_event(pool.namespace)
    return [(str(e.reason), str(e.message)) for e in listed.items]


def test_the_autoscaler_follows_spec_autoscaling(cluster: Cluster, ns: str) -> None:
    pool = create_pool(
        cluster,
        ns,
        "follow",
        replicas=2,
        autoscaling={"maxReplicas": 4, "targets": {"studiesInFlight": 4}},
    )
    uid = pool.get()["metadata"]["uid"]
    wait_until(lambda: hpa(cluster, ns, "follow") is not None, timeout=30, what="autoscaler")
    created = hpa(cluster, ns, "follow")
    assert created is not None
    [owner] = created["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("GatewayPool", "follow", uid)
    spec = created["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GatewayPool",
        "name": "follow",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
    assert spec["metrics"][0]["pods"]["metric"]["name"] == "gatewaypool_studies_in_flight"
    # max(300, maxDrainSeconds 10)
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    wait_until(
        lambda: pool.status().get("autoscaling") == "1-4", timeout=30, what="status.autoscaling"
    )

    # A wider range and a CPU target too: the autoscaler is brought in line.
    pool.patch_spec({"autoscaling": {"maxReplicas": 6, "targets": {"cpuUtilization": 70}}})
    wait_until(
        lambda: (
            (hpa(cluster, ns, "follow") or {}).get("spec", {}).get("maxReplicas") == 6
            and metric_types(cluster, ns, "follow") == ["Resource", "Pods"]
        ),
        timeout=30,
        what="autoscaler updated",
    )
    # A target dropped is a metric gone.
    pool.patch_spec({"autoscaling": {"targets": {"studiesInFlight": None}}})
    wait_until(
        lambda: metric_types(cluster, ns, "follow") == ["Resource"],
        timeout=30,
        what="metric removed",
    )
    after = hpa(cluster, ns, "follow")
    assert after is not None and after["metadata"]["uid"] == created["metadata"]["uid"]
    wait_until(
        lambda: pool.status().get("autoscaling") == "1-6",
        timeout=30,
        what="status.autoscaling follows",
    )

    # The field gone: the autoscaler is deleted, spec.replicas stays as it was.
    pool.patch_spec({"autoscaling": None})
    wait_until(lambda: hpa(cluster, ns, "follow") is None, timeout=30, what="autoscaler deleted")
    wait_until(
        lambda: "autoscaling" not in pool.status(), timeout=30, what="status.autoscaling gone"
    )
    assert pool.get()["spec"]["replicas"] == 2
    wait_until(
        lambda: any(
            reason == "ChildDeleted" and "HorizontalPodAutoscaler" in message
            for reason, message in events(pool)
        ),
        timeout=30,
        what="ChildDeleted event",
    )


def test_an_autoscaler_the_pool_does_not_own_is_left_alone(cluster: Cluster, ns: str) -> None:
    # Someone's own HPA aimed at the pool, named like it, before spec.autoscaling existed.
    target = {"apiVersion": f"{API_GROUP}/{API_VERSION}", "kind": "GatewayPool", "name": "theirs"}
    autoscalers(cluster).create_namespaced_horizontal_pod_autoscaler(
        ns,
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "theirs"},
            "spec": {"scaleTargetRef": target, "minReplicas": 1, "maxReplicas": 3},
        },
    )
    pool = create_pool(cluster, ns, "theirs", replicas=1, autoscaling=None)
    apps: Any = kubernetes.client.AppsV1Api(cluster.api())
    wait_until(
        lambda: bool(
            apps.list_namespaced_stateful_set(ns, field_selector="metadata.name=theirs-gw").items
        ),
        timeout=30,
        what="children",
    )
    passes = pool.resyncs()
    wait_until(lambda: pool.resyncs() >= passes + 2, timeout=30, what="two passes")
    found = hpa(cluster, ns, "theirs")
    assert found is not None
    assert found["spec"]["maxReplicas"] == 3
    assert not found["metadata"].get("ownerReferences")


def test_the_hpa_controller_scales_through_the_scale_subresource(cluster: Cluster, ns: str) -> None:
    pool = create_pool(
        cluster,
        ns,
        "scaled",
        replicas=1,
        autoscaling={"maxReplicas": 4, "targets": {"studiesInFlight": 4}},
    )
    wait_until(lambda: hpa(cluster, ns, "scaled") is not None, timeout=30, what="autoscaler")

    # The HPA controller scales its target by writing the scale subresource:
    # raised minimum, no metric needed ("Current number of replicas below Spec.MinReplicas").
    pool.patch_spec({"autoscaling": {"minReplicas": 3}})
    wait_until(
        lambda: pool.get()["spec"]["replicas"] == 3, timeout=30, what="the HPA writing 3 replicas"
    )
    scaled = pool.get()
    apps: Any = kubernetes.client.AppsV1Api(cluster.api())

    core: Any = kubernetes.client.CoreV1Api(cluster.api())

    def settled() -> bool:
        statefulset = apps.read_namespaced_stateful_set("scaled-gw", ns)
        # The map ConfigMap exists before its first map: until the first
        # gateway is Ready it has no map.json.
        data = core.read_namespaced_config_map("scaled-map", ns).data or {}
        return (
            statefulset.spec.replicas == 3
            and "map.json" in data
            and len(parse_map(data["map.json"]).gateways) == 3
        )

    wait_until(settled, timeout=60, what="three gateways in the map")
    # The operator follows spec.replicas and never writes it: after more passes
    # it holds what the scale write put there, at the same generation.
    passes = pool.resyncs()
    wait_until(lambda: pool.resyncs() >= passes + 2, timeout=30, what="two passes")
    after = pool.get()
    assert after["spec"]["replicas"] == 3
    assert after["metadata"]["generation"] == scaled["metadata"]["generation"]
    scale = pool.custom.get_namespaced_custom_object_scale(
        API_GROUP, API_VERSION, ns, PLURAL, "scaled"
    )
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (3, 3)
    assert scale["status"]["selector"] == after["status"]["selector"]
    rescales = [m for r, m in events(pool) if r == "SuccessfulRescale" and "New size: 3" in m]
    assert rescales, events(pool)


def test_an_autoscaler_that_cannot_scale_degrades_the_pool(cluster: Cluster, ns: str) -> None:
    # Its routers never run (no such image), so no router exports the pool's
    # studies in flight: whether or not an adapter serves custom.metrics.k8s.io,
    # the HPA controller finds no value and says so on the HPA.
    pool = create_pool(
        cluster,
        ns,
        "blind",
        replicas=1,
        autoscaling={"maxReplicas": 4, "targets": {"studiesInFlight": 4}},
        router={"image": "registry.example.org/missing/router:1"},
    )

    def not_active() -> bool:
        found = hpa(cluster, ns, "blind") or {}
        conditions = (found.get("status") or {}).get("conditions") or []
        return any(
            c["type"] == "ScalingActive"
            and c["status"] == "False"
            and c["reason"] == "FailedGetPodsMetric"
            for c in conditions
        )

    wait_until(not_active, timeout=60, what="the HPA controller: FailedGetPodsMetric")
    # The pool repeats the autoscaler's own words.
    wait_until(
        lambda: degraded(pool) == ("True", "AutoscalerNotScaling", True),
        timeout=30,
        what="Degraded: AutoscalerNotScaling, naming the metric",
    )
    # Its selector was there before it: the HPA controller never lacked one.
    reasons = [reason for reason, _ in events(pool)]
    assert "SelectorRequired" not in reasons, events(pool)
