"""The operator's writes on an API server that applies, defaults and canonicalizes.

The real operator process runs against the emulator (server-side apply with
managed fields, defaults, canonical quantities, immutable fields, 409 on a
stale resourceVersion). Each test changes a running pool, checks the child
field by field, and then that the next drift checks send no write and post
no Event: what the operator applied is what the server holds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmock
import kubernetes.client
import pytest

from gatewaypool.bucketmap import parse_map
from gatewaypool_local.peers import wait_until
from gatewaypool_operator import children
from gatewaypool_operator.kubeapply import Cluster, ConflictError
from gatewaypool_operator.runner import PoolLocks, run_pass
from support.cluster import GROUP, IMAGE, NS, PLURAL, REPO, VERSION, custom, pool_cluster
from support.kubeemu import KubeEmulator
from support.kubelet import GatewayKubelet
from support.operatorproc import OperatorProcess

CRD = REPO / "crds" / "gatewaypool.io_gatewaypools.yaml"
WRITES = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)
#: The running test's kubelet (one at a time), for assert_quiet.
KUBELETS: list[GatewayKubelet] = []


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with pool_cluster(keep_requests=True) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def kubelet(kube: KubeEmulator, tmp_path: Path) -> Iterator[GatewayKubelet]:
    """Gateway pods made from the StatefulSet's template, rolled one at a time."""
    with GatewayKubelet(
        kube,
        tmp_path / "kubelet",
        namespace=NS,
        pool="ct",
        ae_title="GATEWAY",
        port=104,
        max_gateways=8,
        processes=False,
    ) as harness:
        KUBELETS.append(harness)
        yield harness
    KUBELETS.remove(harness)
    assert not harness.errors


def create_pool(kube: KubeEmulator, gateway: dict[str, Any], **spec: Any) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GatewayPool",
        "metadata": {"name": "ct", "namespace": NS},
        "spec": {
            "replicas": 2,
            "buckets": 64,
            "gateway": {"image": "scp:1", **gateway},
            "handover": {"quietSeconds": 1, "maxDrainSeconds": 10},
            **spec,
        },
    }
    custom(kube).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)


def change_gateway(kube: KubeEmulator, gateway: dict[str, Any]) -> None:
    """Replace spec.gateway whole (PUT), as an edited manifest does."""
    api = custom(kube)
    pool = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "ct")
    pool["spec"]["gateway"] = {"image": "scp:1", **gateway}
    api.replace_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "ct", pool)


def statefulset(kube: KubeEmulator) -> dict[str, Any]:
    return kube.get("StatefulSet", "ct-gw", NS) or {}


def container(kube: KubeEmulator) -> dict[str, Any]:
    spec = statefulset(kube).get("spec") or {}
    found: dict[str, Any] = spec.get("template", {}).get("spec", {}).get("containers", [{}])[0]
    return found


def writes(kube: KubeEmulator) -> list[str]:
    return [
        f"{request.method} {request.url}" for request in kube.requests() if request.action in WRITES
    ]


def assert_quiet(kube: KubeEmulator, operator: OperatorProcess) -> None:
    """Once the gateways rolled out, the next two drift checks write nothing, post no Event."""
    wait_until(KUBELETS[-1].rolled_out, timeout=60, what="gateways rolled out")
    # Two passes to take in what the kubelet wrote last (pod and StatefulSet status).
    checks = operator.count("pools checked")
    wait_until(lambda: operator.count("pools checked") > checks + 1, timeout=20, what="resyncs")
    before_writes = len(writes(kube))
    before_events = len(kube.objects("v1/events", NS))
    mark = operator.count("pools checked")
    wait_until(lambda: operator.count("pools checked") >= mark + 2, timeout=20, what="2 resyncs")
    assert writes(kube)[before_writes:] == []
    assert len(kube.objects("v1/events", NS)) == before_events


def published(kube: KubeEmulator) -> Any:
    data = (kube.get("ConfigMap", "ct-map", NS) or {}).get("data") or {}
    return parse_map(data["map.json"]) if "map.json" in data else None


def settled(kube: KubeEmulator, operator: OperatorProcess) -> None:
    wait_until(
        lambda: published(kube) is not None and bool(statefulset(kube)),
        timeout=30,
        what="pool created, gateways ready, map published",
    )
    assert_quiet(kube, operator)


def test_an_autoscaled_pool_is_quiet_once_applied(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    # The server defaults nothing the operator leaves out of its HPA, and
    # canonicalizes its quantities: nothing to write again on the next passes.
    create_pool(
        kube,
        {"resources": {"requests": {"cpu": "0.5"}}},
        autoscaling={
            "maxReplicas": 4,
            "targets": {"cpuUtilization": 70, "studiesInFlight": 3},
        },
    )
    settled(kube, operator)
    hpa = kube.get("HorizontalPodAutoscaler", "ct", NS)
    assert hpa is not None
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"]
    assert set(hpa["spec"]["behavior"]) == {"scaleUp", "scaleDown"}


def test_a_removed_env_var_goes(kube: KubeEmulator, operator: OperatorProcess) -> None:
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    create_pool(kube, {"env": env})
    settled(kube, operator)
    assert container(kube)["env"] == env
    change_gateway(kube, {"env": env[:1]})
    wait_until(lambda: container(kube).get("env") == env[:1], timeout=20, what="B removed")
    assert container(kube)["image"] == "scp:1"
    assert_quiet(kube, operator)


def test_empty_strings_the_server_drops_are_no_drift(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    # The server stores env value "" and toleration key "" as absent (omitempty):
    # compared as present, they were applied again, with an Event, on every pass.
    env = [{"name": "EMPTY", "value": ""}, {"name": "SET", "value": "1"}]
    tolerations = [{"key": "", "operator": "Exists", "effect": ""}]
    create_pool(kube, {"env": env, "podTemplate": {"tolerations": tolerations}})
    settled(kube, operator)
    assert container(kube)["env"] == [{"name": "EMPTY"}, {"name": "SET", "value": "1"}]
    pod = statefulset(kube)["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    updated = [e for e in kube.objects("v1/events", NS) if e.get("reason") == "ChildUpdated"]
    assert updated == []


def test_a_new_port_replaces_the_old_one(kube: KubeEmulator, operator: OperatorProcess) -> None:
    create_pool(kube, {"port": 104})
    settled(kube, operator)
    change_gateway(kube, {"port": 4242})
    wait_until(
        lambda: (
            container(kube).get("ports")
            == [{"name": "dicom", "containerPort": 4242, "protocol": "TCP"}]
        ),
        timeout=20,
        what="one dicom port, 4242",
    )
    service = kube.get("Service", "ct-gw", NS)
    assert service is not None
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("dicom", 4242)]
    wait_until(
        lambda: (
            (kube.get("NetworkPolicy", "ct-gw", NS) or {})["spec"]["ingress"][0]["ports"]
            == [{"protocol": "TCP", "port": 4242}]
        ),
        timeout=20,
        what="the policy on port 4242",
    )
    # The pods roll one at a time; the map names each gateway at the port its
    # pod serves, never at one it does not serve yet.
    mismatches: list[str] = []

    def map_follows_pods() -> bool:
        current = published(kube)
        ports = {
            pod["metadata"]["name"]: pod["spec"]["containers"][0]["ports"][0]["containerPort"]
            for pod in kube.objects("Pod", NS)
        }
        for gateway in current.gateways:
            # Named at 4242 only once its pod has 4242 (the old pod, still on
            # 104, keeps 104 until it is replaced).
            if gateway.port == 4242 and ports.get(gateway.name, 4242) != 4242:
                mismatches.append(f"{gateway.name}: map {gateway.port}, pod {ports[gateway.name]}")
        return {g.port for g in current.gateways} == {4242}

    wait_until(map_follows_pods, timeout=60, what="map with port 4242")
    assert not mismatches
    assert_quiet(kube, operator)


def test_resources_written_as_1_and_1000m(kube: KubeEmulator, operator: OperatorProcess) -> None:
    create_pool(kube, {})
    settled(kube, operator)
    resources = {
        "requests": {"cpu": 1, "memory": "1024Mi"},
        "limits": {"cpu": "1000m", "memory": "2Gi"},
    }
    change_gateway(kube, {"resources": resources})
    wait_until(
        lambda: (
            container(kube).get("resources")
            == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "2Gi"}}
        ),
        timeout=20,
        what="canonical resources",
    )
    assert_quiet(kube, operator)
    change_gateway(kube, {"resources": {"requests": {"cpu": "500m"}}})
    wait_until(
        lambda: container(kube).get("resources") == {"requests": {"cpu": "500m"}},
        timeout=20,
        what="limits and memory removed",
    )
    assert_quiet(kube, operator)


def test_adding_storage_recreates_the_statefulset_and_keeps_its_pods(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    create_pool(kube, {})
    settled(kube, operator)
    before = statefulset(kube)["metadata"]
    pods = {p["metadata"]["name"]: p["metadata"]["uid"] for p in kube.objects("Pod", NS)}
    assert sorted(pods) == ["ct-gw-0", "ct-gw-1"]
    start = len(kube.requests())
    change_gateway(kube, {"storage": {"size": "10240Mi", "storageClassName": "fast"}})
    wait_until(
        lambda: "volumeClaimTemplates" in statefulset(kube).get("spec", {}),
        timeout=20,
        what="StatefulSet with a volume claim template",
    )
    after = statefulset(kube)
    assert after["metadata"]["uid"] != before["uid"]
    [claim] = after["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    assert {"name": "data", "mountPath": "/var/lib/gateway"} in container(kube)["volumeMounts"]
    # The StatefulSet went with its pods orphaned: the operator deleted no pod
    # (the rolling update that follows, for the new volume, is the controller's).
    deletes = [r for r in kube.requests()[start:] if r.action == kmock.action.DELETE]
    assert [(r.resource.plural, r.url.name) for r in deletes] == [("statefulsets", "ct-gw")]
    assert "Orphan" in str(deletes[0].data) + str(deletes[0].params)
    wait_until(
        lambda: any(e.get("reason") == "ChildRecreated" for e in kube.objects("v1/events", NS)),
        timeout=20,
        what="ChildRecreated event",
    )
    assert_quiet(kube, operator)


def test_pod_template_edits(kube: KubeEmulator, operator: OperatorProcess) -> None:
    template = {
        "labels": {"team": "imaging"},
        "nodeSelector": {"disk": "ssd", "zone": "a"},
        "tolerations": [{"key": "dicom", "operator": "Exists", "effect": "NoSchedule"}],
    }
    create_pool(kube, {"podTemplate": template})
    settled(kube, operator)
    spread = [
        {
            "maxSkew": 2,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
        }
    ]
    change_gateway(
        kube,
        {
            "podTemplate": {
                "nodeSelector": {"disk": "ssd"},
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}
                            ]
                        }
                    }
                },
                "topologySpreadConstraints": spread,
            }
        },
    )

    def pod() -> dict[str, Any]:
        found: dict[str, Any] = statefulset(kube).get("spec", {}).get("template", {})
        return found

    wait_until(lambda: "tolerations" not in pod().get("spec", {}), timeout=20, what="edited")
    assert pod()["spec"]["nodeSelector"] == {"disk": "ssd"}
    assert "team" not in pod()["metadata"]["labels"]
    assert pod()["spec"]["affinity"]["nodeAffinity"]
    assert pod()["spec"]["topologySpreadConstraints"] == [
        {**spread[0], "labelSelector": {"matchLabels": children.selector_labels("ct", "gateway")}}
    ]
    assert_quiet(kube, operator)


def test_a_refused_write_is_degraded_with_one_warning(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    # A Service of that name with a cluster IP: clusterIP None cannot be applied (422).
    kubernetes.client.CoreV1Api(kube.api_client()).create_namespaced_service(
        NS, {"metadata": {"name": "ct-gw"}, "spec": {"ports": [{"port": 104}]}}
    )
    create_pool(kube, {})

    def degraded() -> dict[str, Any]:
        pool = kube.get("GatewayPool", "ct", NS) or {}
        for condition in (pool.get("status") or {}).get("conditions") or []:
            if condition["type"] == "Degraded":
                return dict(condition)
        return {}

    wait_until(lambda: degraded().get("reason") == "ApplyRefused", timeout=20, what="Degraded")
    assert "Service ct-gw" in degraded()["message"]
    assert "clusterIP" in degraded()["message"]
    assert statefulset(kube), "the other children are written"
    mark = operator.count("pools checked")
    wait_until(lambda: operator.count("pools checked") >= mark + 3, timeout=20, what="3 resyncs")
    warnings = [e for e in kube.objects("v1/events", NS) if e.get("reason") == "ApplyRefused"]
    assert len(warnings) == 1


def test_a_write_from_an_older_read_conflicts(kube: KubeEmulator) -> None:
    cluster = Cluster(kube.api_client())
    desired = children.routers_configmap(name="ct", namespace=NS)
    desired["data"] = {"a": "1"}
    cluster.apply(desired, base=None, exclusive=True)
    read = cluster.read("ConfigMap", NS, "ct-routers")
    assert read is not None
    cluster.apply({**desired, "data": {"a": "2"}}, base=read)
    with pytest.raises(ConflictError):
        cluster.apply({**desired, "data": {"a": "3"}}, base=read)
    with pytest.raises(ConflictError):
        cluster.apply(desired, base=None, exclusive=True)
    assert (cluster.read("ConfigMap", NS, "ct-routers") or {})["data"] == {"a": "2"}


def test_concurrent_passes_never_end_older_than_the_newest_spec(kube: KubeEmulator) -> None:
    """A change handler and the resync race on one pool; the end state is the newest spec.

    Odd rounds share the locks (one process: handler and resync); even rounds
    use two (as two operator processes would): then the conditional writes
    alone keep a stale pass from winning.
    """
    create_pool(kube, {})
    cluster = Cluster(kube.api_client())
    shared = PoolLocks()
    errors: list[BaseException] = []

    def one_pass(locks: PoolLocks) -> None:
        try:
            run_pass(cluster, locks, namespace=NS, name="ct", router_image=IMAGE)
        except BaseException as exc:  # reported by the test thread
            errors.append(exc)

    def first_map() -> bool:
        run_pass(cluster, shared, namespace=NS, name="ct", router_image=IMAGE)
        return published(kube) is not None

    # Every round then races on a published map, however slow the machine.
    wait_until(first_map, timeout=30, what="a gateway Ready and the first map", interval=0.2)
    versions: list[int] = []
    for round_number, replicas in enumerate([3, 5, 2, 7, 4, 6, 1, 8, 3, 5, 2, 6]):
        custom(kube).patch_namespaced_custom_object_scale(
            GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": replicas}}
        )
        locks = (shared, shared) if round_number % 2 else (shared, PoolLocks())
        threads = [threading.Thread(target=one_pass, args=(lock,)) for lock in locks * 2]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        # Gateways grow at once; leaving ones stay until drained, never fewer.
        assert statefulset(kube)["spec"]["replicas"] >= replicas
        bucket_map = published(kube)
        assert bucket_map is not None, "a published map never goes away"
        # Nothing computed from an older spec got through: no bucket moves to
        # a gateway the newest spec does not want.
        assert all(target < replicas for target in bucket_map.moving.values()), round_number
        versions.append(bucket_map.version)
    assert versions == sorted(versions), "a map version went back"
