"""The real operator process against a Kubernetes API over HTTP (kmock).

The operator runs as ``gatewaypool operator`` in a subprocess, exactly as in
its Deployment; the test reads and writes through the real ``kubernetes``
client. The emulator has no controllers and no garbage collector (see
``support.kubeemu``), so the tests play those parts where needed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from gatewaypool.assignment import rebalance
from gatewaypool.bucketmap import parse_map
from gatewaypool_local.peers import wait_until
from support.cluster import GROUP, IMAGE, NS, PLURAL, REPO, VERSION, custom
from support.kubeemu import KubeEmulator
from support.kubelet import GatewayKubelet
from support.operatorproc import OperatorProcess

CRD = REPO / "crds" / "gatewaypool.io_gatewaypools.yaml"
CHILDREN = [
    ("StatefulSet", "ct-gw"),
    ("Service", "ct-gw"),
    ("Deployment", "ct-router"),
    ("Service", "ct-router"),
    ("ServiceAccount", "ct-router"),
    ("Role", "ct-router"),
    ("RoleBinding", "ct-router"),
    ("ConfigMap", "ct-map"),
    ("ConfigMap", "ct-routers"),
    ("NetworkPolicy", "ct-gw"),
    ("PodDisruptionBudget", "ct-gw"),
]


@pytest.fixture(autouse=True)
def kubelet(kube: KubeEmulator, tmp_path: Path) -> Iterator[GatewayKubelet]:
    """Gateway pods that start late and become Ready later (no processes: no traffic here)."""
    with GatewayKubelet(
        kube,
        tmp_path / "kubelet",
        namespace=NS,
        pool="ct",
        ae_title="TRIAGE",
        port=104,
        max_gateways=12,
        processes=False,
    ) as harness:
        yield harness
    assert not harness.errors


def create_pool(kube: KubeEmulator, *, replicas: int = 3, buckets: int = 4096) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GatewayPool",
        "metadata": {"name": "ct", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "buckets": buckets,
            "gateway": {"image": "registry.example.org/ai-triage:2.1", "aeTitle": "TRIAGE"},
            # No routers here: a move completes once the operator has waited this long.
            "handover": {"quietSeconds": 1, "maxDrainSeconds": 10},
        },
    }
    created: dict[str, Any] = custom(kube).create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, body
    )
    return created


def pool(kube: KubeEmulator) -> dict[str, Any]:
    found = kube.get("GatewayPool", "ct", NS)
    assert found is not None
    return found


def published_map(kube: KubeEmulator) -> Any:
    configmap = kube.get("ConfigMap", "ct-map", NS)
    if configmap is None or "map.json" not in (configmap.get("data") or {}):
        return None
    return parse_map(configmap["data"]["map.json"])


def map_version(kube: KubeEmulator) -> int:
    current = published_map(kube)
    return current.version if current is not None else 0


def all_children_exist(kube: KubeEmulator) -> bool:
    return all(kube.get(kind, name, NS) is not None for kind, name in CHILDREN)


def test_create_makes_every_child_owned_and_publishes_the_map(
    kube: KubeEmulator, operator: OperatorProcess, kubelet: GatewayKubelet
) -> None:
    created = create_pool(kube)
    wait_until(lambda: all_children_exist(kube), timeout=20, what="every child")
    # The map names gateways only once they are Ready: no map before that.
    assert map_version(kube) == 0 or kubelet.ready_ordinals()
    wait_until(lambda: map_version(kube) == 1, timeout=30, what="first map, gateways ready")
    assert kubelet.ready_ordinals() == {0, 1, 2}
    uid = created["metadata"]["uid"]
    for kind, name in CHILDREN:
        child = kube.get(kind, name, NS)
        assert child is not None
        [owner] = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("GatewayPool", "ct", uid), kind
        assert owner["controller"] is True
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "ct"
        assert labels["app.kubernetes.io/managed-by"] == "gatewaypool-operator"
    statefulset = kube.get("StatefulSet", "ct-gw", NS)
    assert statefulset is not None
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["serviceName"] == "ct-gw"
    deployment = kube.get("Deployment", "ct-router", NS)
    assert deployment is not None
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE
    assert "--map-configmap" in container["command"] + container.get("args", [])
    bucket_map = published_map(kube)
    assert bucket_map is not None
    assert bucket_map.version == 1
    assert [g.host for g in bucket_map.gateways] == [
        f"ct-gw-{i}.ct-gw.{NS}.svc.cluster.local" for i in range(3)
    ]
    assert {g.ae_title for g in bucket_map.gateways} == {"TRIAGE"}
    counts = sorted(bucket_map.bucket_counts().values())
    assert counts[-1] - counts[0] <= 1
    wait_until(
        lambda: (pool(kube).get("status") or {}).get("mapVersion") == 1,
        timeout=20,
        what="status.mapVersion",
    )
    status = pool(kube)["status"]
    assert status["selector"] == "app.kubernetes.io/instance=ct,app.kubernetes.io/component=gateway"
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}
    wait_until(
        lambda: any(e.get("reason") == "BucketMapPublished" for e in kube.objects("v1/events", NS)),
        timeout=20,
        what="BucketMapPublished event",
    )


def _settled(kube: KubeEmulator, replicas: int) -> bool:
    current = published_map(kube)
    return (
        (kube.get("StatefulSet", "ct-gw", NS) or {}).get("spec", {}).get("replicas") == replicas
        and current is not None
        and not current.moving
        and set(current.owners) == set(range(replicas))
    )


def _wait_scaled(kube: KubeEmulator, replicas: int) -> None:
    """Gateways started, buckets handed over, leaving gateways removed."""
    wait_until(lambda: _settled(kube, replicas), timeout=60, what=f"settled at {replicas}")


def test_scale_through_the_scale_subresource_and_the_spec(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    create_pool(kube)
    wait_until(lambda: map_version(kube) == 1, timeout=20, what="first map")
    first = published_map(kube)

    # kubectl scale gwp/ct --replicas=5 (and an HPA) write the scale subresource.
    custom(kube).patch_namespaced_custom_object_scale(
        GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 5}}
    )
    _wait_scaled(kube, 5)
    second = published_map(kube)
    assert list(second.owners) == rebalance(list(first.owners), 5)
    moved = sum(1 for a, b in zip(first.owners, second.owners, strict=True) if a != b)
    # Only what the two newcomers need moves: 4096 // 5 = 819 buckets each.
    assert moved == 2 * 819
    counts = sorted(second.bucket_counts().values())
    assert counts[-1] - counts[0] <= 1
    scale = custom(kube).get_namespaced_custom_object_scale(GROUP, VERSION, NS, PLURAL, "ct")
    assert scale["spec"]["replicas"] == 5

    # Editing spec.replicas directly does the same.
    custom(kube).patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 4}}
    )
    _wait_scaled(kube, 4)
    third = published_map(kube)
    assert list(third.owners) == rebalance(list(second.owners), 4)
    assert all(owner < 4 for owner in third.owners)


def test_a_deleted_child_comes_back(kube: KubeEmulator, operator: OperatorProcess) -> None:
    create_pool(kube)
    wait_until(lambda: all_children_exist(kube), timeout=20, what="every child")
    wait_until(lambda: map_version(kube) == 1, timeout=30, what="first map")
    before = kube.get("Service", "ct-router", NS)
    assert before is not None
    kubernetes.client.CoreV1Api(kube.api_client()).delete_namespaced_service(
        "ct-router", NS, _preload_content=False
    )
    assert kube.get("Service", "ct-router", NS) is None
    wait_until(
        lambda: kube.get("Service", "ct-router", NS) is not None, timeout=20, what="re-created"
    )
    after = kube.get("Service", "ct-router", NS)
    assert after is not None
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    assert after["spec"]["ports"] == before["spec"]["ports"]
    # Drift on a kept object is repaired too.
    kubernetes.client.AppsV1Api(kube.api_client()).patch_namespaced_stateful_set(
        "ct-gw", NS, {"spec": {"replicas": 9}}
    )
    wait_until(
        lambda: (kube.get("StatefulSet", "ct-gw", NS) or {})["spec"]["replicas"] == 3,
        timeout=20,
        what="drift repaired",
    )
    assert map_version(kube) == 1


def test_a_name_too_long_for_the_children_is_refused_before_anything_is_made(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    # Valid for the API server (a DNS subdomain), too long for the StatefulSet's pod labels.
    name = "ct-" + "x" * 47
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GatewayPool",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"replicas": 1, "gateway": {"image": "registry.example.org/ai-triage:2.1"}},
    }
    custom(kube).create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)

    def condition() -> dict[str, Any] | None:
        found = kube.get("GatewayPool", name, NS) or {}
        for item in (found.get("status") or {}).get("conditions") or []:
            if item["type"] == "Degraded" and item["status"] == "True":
                return dict(item)
        return None

    wait_until(lambda: condition() is not None, timeout=20, what="Degraded condition")
    refused = condition()
    assert refused is not None and refused["reason"] == "SpecRejected"
    assert refused["message"].startswith("metadata.name:")
    assert kube.get("StatefulSet", f"{name}-gw", NS) is None
    assert kube.get("Deployment", f"{name}-router", NS) is None


def test_an_unhonourable_spec_is_a_condition_and_leaves_the_pool_running(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    create_pool(kube, replicas=3, buckets=8)
    wait_until(lambda: map_version(kube) == 1, timeout=20, what="first map")
    # The API server's schema would refuse this; the operator must not trust that.
    custom(kube).patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 12}}
    )

    def degraded() -> dict[str, Any] | None:
        for condition in (pool(kube).get("status") or {}).get("conditions") or []:
            if condition["type"] == "Degraded" and condition["status"] == "True":
                return dict(condition)
        return None

    wait_until(lambda: degraded() is not None, timeout=20, what="Degraded condition")
    condition = degraded()
    assert condition is not None
    assert condition["reason"] == "SpecRejected"
    assert "spec.replicas" in condition["message"] and "12" in condition["message"]
    statefulset = kube.get("StatefulSet", "ct-gw", NS)
    assert statefulset is not None and statefulset["spec"]["replicas"] == 3
    assert map_version(kube) == 1
    # kopf posts Events from a queue, shortly after the handler.
    wait_until(
        lambda: any(e.get("reason") == "SpecRejected" for e in kube.objects("v1/events", NS)),
        timeout=20,
        what="SpecRejected event",
    )
    # A changed bucket count is refused the same way.
    custom(kube).patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 3, "buckets": 16}}
    )
    wait_until(
        lambda: "spec.buckets" in ((degraded() or {}).get("message") or ""),
        timeout=20,
        what="buckets change refused",
    )
    assert published_map(kube).buckets == 8


def test_operator_restart_changes_nothing(kube: KubeEmulator, operator: OperatorProcess) -> None:
    create_pool(kube)
    wait_until(lambda: all_children_exist(kube), timeout=20, what="every child")
    wait_until(lambda: map_version(kube) == 1, timeout=20, what="first map")
    uids = {(k, n): kube.get(k, n, NS)["metadata"]["uid"] for k, n in CHILDREN}  # type: ignore[index]
    counts = {kind: len(kube.objects(kind, NS)) for kind, _ in CHILDREN}
    map_text = kube.get("ConfigMap", "ct-map", NS)["data"]["map.json"]  # type: ignore[index]
    operator.stop()
    resumed = operator.count("on_change")
    operator.start()
    wait_until(lambda: operator.count("on_change") > resumed, timeout=30, what="resume handler ran")
    wait_until(lambda: operator.count("resync") >= 2, timeout=30, what="two resync passes")
    assert {(k, n): kube.get(k, n, NS)["metadata"]["uid"] for k, n in CHILDREN} == uids  # type: ignore[index]
    assert {kind: len(kube.objects(kind, NS)) for kind, _ in CHILDREN} == counts
    assert kube.get("ConfigMap", "ct-map", NS)["data"]["map.json"] == map_text  # type: ignore[index]


def test_deleting_the_pool_removes_what_it_owned(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    create_pool(kube)
    wait_until(lambda: all_children_exist(kube), timeout=20, what="every child")
    custom(kube).delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "ct")
    wait_until(
        lambda: not any(kube.get(kind, name, NS) for kind, name in CHILDREN),
        timeout=20,
        what="children deleted",
    )
    # kopf's finalizer (it keeps one while a timer runs) is removed once done.
    wait_until(lambda: not kube.objects("GatewayPool", NS), timeout=20, what="pool gone")


def router_objects(kube: KubeEmulator) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    deployment = kube.get("Deployment", "ct-router", NS)
    service = kube.get("Service", "ct-router", NS)
    policy = kube.get("NetworkPolicy", "ct-router", NS)
    assert deployment is not None and service is not None and policy is not None
    return deployment, service, policy


def tls_state(kube: KubeEmulator) -> tuple[int, bool]:
    """Secret volumes of the routers, and whether the Service and the policy have the TLS port.

    The operator writes the Deployment, the Service and the policy one after another.
    """
    deployment, service, policy = router_objects(kube)
    in_service = any(p["name"] == "dicom-tls" for p in service["spec"]["ports"])
    in_policy = any(p["port"] == 2762 for p in policy["spec"]["ingress"][0]["ports"])
    if in_service != in_policy:
        return -1, in_service
    return len(secret_volumes(deployment["spec"]["template"])), in_service


def sorted_ports(template: dict[str, Any]) -> dict[str, Any]:
    """A pod template with its containers' ports in name order (apply appends what it adds)."""
    result = copy.deepcopy(template)
    for container in result["spec"]["containers"]:
        container["ports"].sort(key=lambda port: port["name"])
    return result


def secret_volumes(template: dict[str, Any]) -> dict[str, str]:
    """The Secret volumes of a pod template: volume name to Secret name."""
    pod = template["spec"]
    return {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}


def gateway_template(kube: KubeEmulator) -> dict[str, Any]:
    statefulset = kube.get("StatefulSet", "ct-gw", NS)
    assert statefulset is not None
    template: dict[str, Any] = statefulset["spec"]["template"]
    return template


def test_tls_settings_reach_the_routers_and_go_away_with_them(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    created = create_pool(kube)
    wait_until(lambda: all_children_exist(kube), timeout=20, what="every child")
    plain_template = router_objects(kube)[0]["spec"]["template"]
    plain_gateways = gateway_template(kube)
    tls = {
        "secretName": "ct-router-tls",
        "port": 2762,
        "clientCASecretName": "modality-ca",
        "callerSubjects": [{"aeTitle": "CT01", "subject": "CN=ct01.example.org,O=Hospital"}],
    }
    custom(kube).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "ct",
        {
            "spec": {
                "router": {"allowedCallingAETitles": ["CT01", "MR1"], "tls": tls},
                "gateway": {
                    "tls": {"caSecretName": "gateway-ca", "serverCertSecretName": "gw-serving"}
                },
            }
        },
    )
    wait_until(lambda: tls_state(kube) == (3, True), timeout=20, what="TLS everywhere")
    deployment, service, policy = router_objects(kube)
    assert secret_volumes(deployment["spec"]["template"]) == {
        "tls-server": "ct-router-tls",
        "tls-client-ca": "modality-ca",
        "gateway-tls-ca": "gateway-ca",
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 65532
    [container] = pod["containers"]
    command = container["command"]
    assert command[command.index("--tls-cert") + 1] == "/etc/gatewaypool/tls/server/tls.crt"
    assert command[command.index("--tls-client-ca") + 1] == "/etc/gatewaypool/tls/client-ca/ca.crt"
    assert command[command.index("--caller-subject") + 1] == "CT01=CN=ct01.example.org,O=Hospital"
    assert (
        command[command.index("--gateway-tls-ca") + 1] == "/etc/gatewaypool/tls/gateway-ca/ca.crt"
    )
    assert {m["mountPath"] for m in container["volumeMounts"] if m.get("readOnly")} == {
        "/etc/gatewaypool/tls/server",
        "/etc/gatewaypool/tls/client-ca",
        "/etc/gatewaypool/tls/gateway-ca",
    }
    assert {(p["name"], p["containerPort"]) for p in container["ports"]} == {
        ("dicom", 11112),
        ("dicom-tls", 2762),
        ("http", 8080),
    }
    # The gateways mount the certificate they serve; the routers never see its key.
    wait_until(
        lambda: secret_volumes(gateway_template(kube)) == {"tls-server": "gw-serving"},
        timeout=20,
        what="the gateways' certificate mounted",
    )
    [gateway] = gateway_template(kube)["spec"]["containers"]
    assert {"name": "tls-server", "mountPath": "/etc/gatewaypool/tls/server", "readOnly": True} in (
        gateway["volumeMounts"]
    )
    assert gateway_template(kube)["spec"]["securityContext"]["fsGroup"] == 65532
    assert {(p["name"], p["port"]) for p in service["spec"]["ports"]} == {
        ("dicom", 11112),
        ("dicom-tls", 2762),
    }
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {11112, 2762, 8080}
    # Written by the operator's own manager: a later removal is a removal, not a leftover.
    assert any(
        entry["manager"] == "gatewaypool-operator" and entry["operation"] == "Apply"
        for entry in deployment["metadata"]["managedFields"]
    )

    # TLS only: the plain port goes from the routers, their Service and their policy.
    custom(kube).patch_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"router": {"plainPort": False}}}
    )
    wait_until(
        lambda: (
            [p["name"] for p in router_objects(kube)[1]["spec"]["ports"]] == ["dicom-tls"]
            and {p["port"] for p in router_objects(kube)[2]["spec"]["ingress"][0]["ports"]}
            == {2762, 8080}
        ),
        timeout=20,
        what="plain port gone from the Service and the policy",
    )
    deployment, _, policy = router_objects(kube)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    # Server-side apply keeps the items it had and appends new ones: compare as sets.
    assert {p["name"] for p in container["ports"]} == {"dicom-tls", "http"}
    assert "--no-plain-port" in container["command"] and "--port" not in container["command"]
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {2762, 8080}

    # Back to the first spec: the routers are as they were (no volumes, no TLS port or option).
    custom(kube).patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        "ct",
        {
            "spec": {
                "router": {"plainPort": None, "tls": None, "allowedCallingAETitles": None},
                "gateway": {"tls": None},
            }
        },
    )
    wait_until(lambda: tls_state(kube) == (0, False), timeout=20, what="TLS gone everywhere")
    wait_until(
        lambda: secret_volumes(gateway_template(kube)) == {},
        timeout=20,
        what="the gateways' certificate unmounted",
    )
    [gateway] = gateway_template(kube)["spec"]["containers"]
    assert gateway["volumeMounts"] == plain_gateways["spec"]["containers"][0]["volumeMounts"]
    deployment, service, policy = router_objects(kube)
    assert sorted_ports(deployment["spec"]["template"]) == sorted_ports(plain_template)
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("dicom", 11112)]
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {11112, 8080}
    assert created["metadata"]["uid"] == pool(kube)["metadata"]["uid"]
