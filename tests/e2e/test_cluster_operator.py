"""The operator on the real control plane: its children, scaling, drift, refusals and restarts.

One chart install serves the module: the operator runs as the chart's
Deployment with its ServiceAccount's token and checks drift every
`RESYNC_SECONDS`. Each test makes pools of its own in that namespace and
deletes them afterwards. The real StatefulSet, Deployment and garbage
collector controllers act on what the operator writes; the gateways are
DCMTK ``storescp`` (little CPU, Ready when its port answers); no DICOM
traffic flows: none of these tests is about traffic.

What only a real control plane does, and these tests rely on:

- the schema and its CEL rules refuse an unhonourable ``spec.replicas``, a
  changed ``spec.buckets`` or a pool name too long for its children at the
  write (422), through the scale subresource too; what they let through,
  the operator must refuse itself;
- the StatefulSet controller makes the pods a drifted ``replicas`` asks
  for, and they become Ready: the operator must still publish only the
  gateways its spec wants;
- the garbage collector, not the test, deletes what a deleted pool owned;
- a 5xx comes from a real admission webhook that does not answer.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from gatewaypool.assignment import rebalance
from gatewaypool.bucketmap import BucketMap, parse_map
from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from gatewaypool_local.peers.process import wait_until
from gatewaypool_operator.kubeapply import Cluster as KubeApi
from support.certs import TestCA
from support.nodes import Pod
from support.realcluster import IMAGE_REPOSITORY, IMAGE_TAG, Cluster, namespace_for
from support.realpool import RealPool

DCMTK_IMAGE = "registry.example.org/test/dcmtk:1"
ROUTER_IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
#: Drift checks of this module's operator, in seconds.
RESYNC_SECONDS = 2
#: Seconds between two looks at the server: the kubelet stand-in and the Service proxy
#: the operator reaches the API server through run in this process, and a tight loop of
#: reads would starve them.
POLL_SECONDS = 0.5
#: Every child of a pool, as (kind, suffix of the pool's name).
CHILDREN = [
    ("StatefulSet", "gw"),
    ("Service", "gw"),
    ("NetworkPolicy", "gw"),
    ("PodDisruptionBudget", "gw"),
    ("Deployment", "router"),
    ("Service", "router"),
    ("ServiceAccount", "router"),
    ("Role", "router"),
    ("RoleBinding", "router"),
    ("NetworkPolicy", "router"),
    ("PodDisruptionBudget", "router"),
    ("ConfigMap", "map"),
    ("ConfigMap", "routers"),
]


def wait(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    wait_until(predicate, timeout=timeout, what=what, interval=POLL_SECONDS)


def storescp(ae_title: str = "TRIAGE", port: int = 104) -> dict[str, Any]:
    """A DCMTK storescp gateway (``spec.gateway``)."""
    return {
        "image": DCMTK_IMAGE,
        "command": ["storescp"],
        "args": ["--aetitle", ae_title, str(port)],
        "aeTitle": ae_title,
        "port": port,
    }


@dataclass
class Operated:
    """The module's namespace and operator, and the pools the running test made."""

    cluster: Cluster
    namespace: str
    operator: str  # the operator's Deployment
    kube: KubeApi
    pools: list[RealPool] = field(default_factory=list)

    def pool(self, name: str, spec: dict[str, Any]) -> RealPool:
        """Create pool `name` with `spec` (one router unless it says); deleted after the test."""
        pool = RealPool(self.cluster, self.namespace, name)
        pool.create({"router": {"replicas": 1}, **spec})
        self.pools.append(pool)
        return pool

    def read(self, kind: str, name: str) -> dict[str, Any] | None:
        return self.kube.read(kind, self.namespace, name)

    def operator_pods(self) -> list[Pod]:
        """The operator's pods this kubelet ran, oldest first."""
        return [
            pod
            for pod in self.cluster.kubelet.pods(self.namespace)
            if pod.name.startswith(f"{self.operator}-")
        ]

    def operator_log(self) -> str:
        return "".join(self.cluster.kubelet.log(pod) for pod in self.operator_pods())

    def resyncs(self) -> int:
        """Drift checks the operator has made (its log's ``pools checked`` lines)."""
        return self.operator_log().count("pools checked")

    def wait_resyncs(self, count: int) -> None:
        mark = self.resyncs()
        wait(
            lambda: self.resyncs() >= mark + count,
            timeout=30 + 5 * count * RESYNC_SECONDS,
            what=f"{count} more drift checks",
        )

    def events(self, name: str) -> list[str]:
        """Reasons of the Events about GatewayPool `name`."""
        core: Any = kubernetes.client.CoreV1Api(self.cluster.api())
        listed = core.list_namespaced_event(
            self.namespace,
            field_selector=f"involvedObject.kind=GatewayPool,involvedObject.name={name}",
        )
        return [str(event.reason) for event in listed.items]

    def pods(self, pool: str, component: str) -> list[dict[str, Any]]:
        return self.cluster.pods(
            self.namespace,
            f"app.kubernetes.io/instance={pool},app.kubernetes.io/component={component}",
        )


@pytest.fixture(scope="module")
def operated(cluster: Cluster) -> Iterator[Operated]:
    with cluster.namespace(namespace_for("operator")) as namespace:
        installed = cluster.install(
            namespace, values={"operator": {"resyncSeconds": RESYNC_SECONDS}}
        )
        try:
            [deployment] = [o for o in installed if o["kind"] == "Deployment"]
            yield Operated(
                cluster, namespace, str(deployment["metadata"]["name"]), KubeApi(cluster.api())
            )
        finally:
            cluster.uninstall(installed)


# -- what the server holds -------------------------------------------------------------------


def children(name: str) -> list[tuple[str, str]]:
    return [(kind, f"{name}-{suffix}") for kind, suffix in CHILDREN]


def all_children_exist(ns: Operated, name: str) -> bool:
    return all(ns.read(kind, child) is not None for kind, child in children(name))


def published(ns: Operated, name: str) -> BucketMap | None:
    data = (ns.read("ConfigMap", f"{name}-map") or {}).get("data") or {}
    return parse_map(data["map.json"]) if "map.json" in data else None


def map_version(ns: Operated, name: str) -> int:
    current = published(ns, name)
    return current.version if current is not None else 0


def ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def conditions(pool: RealPool) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in pool.status().get("conditions") or []}


def degraded(pool: RealPool) -> dict[str, Any] | None:
    found = conditions(pool).get("Degraded")
    return found if found is not None and found["status"] == "True" else None


def gateway_replicas(ns: Operated, name: str) -> int | None:
    statefulset = ns.read("StatefulSet", f"{name}-gw")
    return None if statefulset is None else int(statefulset["spec"]["replicas"])


def settled(ns: Operated, pool: RealPool, replicas: int) -> bool:
    """The StatefulSet at `replicas`, the map owned by exactly those gateways, nothing moving."""
    current = published(ns, pool.name)
    return (
        gateway_replicas(ns, pool.name) == replicas
        and current is not None
        and not current.moving
        and set(current.owners) == set(range(replicas))
        and pool.settled(replicas, 1)
    )


def wait_settled(ns: Operated, pool: RealPool, replicas: int) -> None:
    """Gateways started, buckets handed over, leaving gateways removed."""
    wait(lambda: settled(ns, pool, replicas), timeout=120, what=f"settled at {replicas}")


# -- children, scaling, drift ------------------------------------------------------------------


def test_a_pool_owns_every_child_and_publishes_its_map_once_a_gateway_is_ready(
    ns: Operated,
) -> None:
    pool = ns.pool(
        "ct",
        {"replicas": 3, "gateway": storescp(), "handover": {"quietSeconds": 1}},
    )
    created = pool.get()
    wait(lambda: all_children_exist(ns, "ct"), timeout=60, what="every child")
    wait(lambda: map_version(ns, "ct") >= 1, timeout=90, what="the first map")
    # The first map deals the buckets evenly over the gateways Ready at that pass
    # (rule 1 of handover/decide.py): a gateway Ready a pass later gets its share by
    # a handover. It names all three by their DNS names.
    bucket_map = published(ns, "ct")
    assert bucket_map is not None
    assert bucket_map.version == 1
    assert [g.host for g in bucket_map.gateways] == [
        f"ct-gw-{i}.ct-gw.{ns.namespace}.svc.cluster.local" for i in range(3)
    ]
    assert {g.ae_title for g in bucket_map.gateways} == {"TRIAGE"}
    first = {name: n for name, n in bucket_map.bucket_counts().items() if n}
    ready_now = {p["metadata"]["name"] for p in ns.pods("ct", "gateway") if ready(p)}
    assert first.keys() <= ready_now
    assert max(first.values()) - min(first.values()) <= 1
    # Then every gateway owns its share.
    wait_settled(ns, pool, 3)
    bucket_map = published(ns, "ct")
    assert bucket_map is not None
    counts = sorted(bucket_map.bucket_counts().values())
    assert counts[0] > 0 and counts[-1] - counts[0] <= 1
    uid = created["metadata"]["uid"]
    for kind, name in children("ct"):
        child = ns.read(kind, name)
        assert child is not None, (kind, name)
        [owner] = child["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("GatewayPool", "ct", uid), kind
        assert owner["controller"] is True
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "ct"
        assert labels["app.kubernetes.io/managed-by"] == "gatewaypool-operator"
    statefulset = ns.read("StatefulSet", "ct-gw")
    assert statefulset is not None
    assert statefulset["spec"]["replicas"] == 3
    assert statefulset["spec"]["serviceName"] == "ct-gw"
    deployment = ns.read("Deployment", "ct-router")
    assert deployment is not None
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == ROUTER_IMAGE
    assert "--map-configmap" in container.get("command", []) + container.get("args", [])
    version = bucket_map.version
    wait(lambda: pool.status().get("mapVersion") == version, timeout=30, what="status.mapVersion")
    status = pool.status()
    assert status["selector"] == "app.kubernetes.io/instance=ct,app.kubernetes.io/component=gateway"
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Progressing", "Degraded"}
    wait(
        lambda: "BucketMapPublished" in ns.events("ct"),
        timeout=30,
        what="BucketMapPublished event",
    )


def test_scale_through_the_scale_subresource_and_the_spec(ns: Operated) -> None:
    pool = ns.pool(
        "sc",
        {
            "replicas": 3,
            "gateway": storescp(),
            "handover": {"quietSeconds": 1, "maxDrainSeconds": 60},
        },
    )
    wait_settled(ns, pool, 3)
    first = published(ns, "sc")
    assert first is not None

    # kubectl scale gwp/sc --replicas=5 (and an HPA) write the scale subresource.
    pool.scale(5)
    wait_settled(ns, pool, 5)
    second = published(ns, "sc")
    assert second is not None
    # Only what the two newcomers need moves: 4096 // 5 = 819 buckets each, and only
    # to them (in one step, or in two when one is Ready a pass before the other).
    moved = [(a, b) for a, b in zip(first.owners, second.owners, strict=True) if a != b]
    assert {b for _, b in moved} == {3, 4}
    assert len(moved) == 2 * 819
    counts = sorted(second.bucket_counts().values())
    assert counts[-1] - counts[0] <= 1
    scale = pool.custom.get_namespaced_custom_object_scale(
        API_GROUP, API_VERSION, ns.namespace, PLURAL, "sc"
    )
    assert scale["spec"]["replicas"] == 5
    assert scale["status"]["replicas"] == 5

    # Editing spec.replicas directly does the same.
    pool.patch_spec({"replicas": 4})
    wait_settled(ns, pool, 4)
    third = published(ns, "sc")
    assert third is not None
    assert list(third.owners) == rebalance(list(second.owners), 4)
    assert all(owner < 4 for owner in third.owners)


def test_a_deleted_child_comes_back_and_drift_is_repaired(ns: Operated) -> None:
    pool = ns.pool("dc", {"replicas": 2, "gateway": storescp(), "handover": {"quietSeconds": 1}})
    wait(lambda: all_children_exist(ns, "dc"), timeout=60, what="every child")
    # Settled: a gateway Ready a pass after the first map gets its share by a handover.
    wait_settled(ns, pool, 2)
    version = map_version(ns, "dc")
    before = ns.read("Service", "dc-router")
    assert before is not None
    core: Any = kubernetes.client.CoreV1Api(ns.cluster.api())
    core.delete_namespaced_service("dc-router", ns.namespace)
    wait(
        lambda: (
            (ns.read("Service", "dc-router") or before)["metadata"]["uid"]
            != before["metadata"]["uid"]
        ),
        timeout=60,
        what="the router Service re-created",
    )
    after = ns.read("Service", "dc-router")
    assert after is not None
    assert after["spec"]["ports"] == before["spec"]["ports"]

    # Drift on a kept object is repaired too. Meanwhile the real StatefulSet
    # controller starts the pods 9 replicas ask for, and they become Ready:
    # the map must not name them, as the spec does not want them.
    apps: Any = kubernetes.client.AppsV1Api(ns.cluster.api())
    apps.patch_namespaced_stateful_set("dc-gw", ns.namespace, {"spec": {"replicas": 9}})
    wait(lambda: gateway_replicas(ns, "dc") == 2, timeout=60, what="drift repaired")
    wait(
        lambda: (
            sorted(p["metadata"]["name"] for p in ns.pods("dc", "gateway"))
            == ["dc-gw-0", "dc-gw-1"]
        ),
        timeout=90,
        what="the extra gateway pods gone",
    )
    assert map_version(ns, "dc") == version
    assert pool.status().get("mapVersion") == version


def test_a_name_too_long_for_the_children_is_refused_before_anything_is_made(
    ns: Operated,
) -> None:
    # An object name (a DNS subdomain), too long for the StatefulSet's pod labels: the
    # CRD's rule refuses it at the write. (The operator refuses it too, for a CRD
    # without that rule: tests/unit/operator/test_crd_refusals.py.)
    name = "ct-" + "x" * 47
    with pytest.raises(ApiException) as refused:
        ns.pool(name, {"replicas": 1, "gateway": storescp()})
    assert refused.value.status == 422
    assert "metadata.name must be a DNS label" in str(refused.value.body)
    for kind, child in children(name):
        assert ns.read(kind, child) is None, (kind, child)


def test_an_unhonourable_spec_is_refused_and_leaves_the_pool_running(ns: Operated) -> None:
    pool = ns.pool(
        "uh",
        {"replicas": 3, "buckets": 8, "gateway": storescp(), "handover": {"quietSeconds": 1}},
    )
    wait_settled(ns, pool, 3)
    version = map_version(ns, "uh")
    statefulset = ns.read("StatefulSet", "uh-gw")
    assert statefulset is not None

    # The real server's CEL rules refuse these at the write, through the
    # scale subresource too.
    writes: list[tuple[str, Callable[[], None]]] = [
        ("spec.replicas", lambda: pool.patch_spec({"replicas": 12})),
        ("spec.replicas", lambda: pool.scale(12)),
        ("spec.buckets", lambda: pool.patch_spec({"buckets": 16})),
    ]
    for field_path, write in writes:
        with pytest.raises(ApiException) as refused:
            write()
        assert refused.value.status == 422
        [cause] = json.loads(str(refused.value.body))["details"]["causes"]
        assert cause["field"] == field_path, cause

    # What the schema lets through (support.specfaults.SCHEMA_CANNOT), the operator
    # refuses itself, and says so: here an annotation key that is not a qualified name.
    gateway = {**storescp(), "podTemplate": {"annotations": {"scrape me": "true"}}}
    pool.patch_spec({"gateway": gateway})
    wait(lambda: degraded(pool) is not None, timeout=60, what="Degraded condition")
    condition = degraded(pool)
    assert condition is not None
    assert condition["reason"] == "SpecRejected"
    assert "spec.gateway.podTemplate.annotations" in condition["message"]
    assert "scrape me" in condition["message"]
    # kopf posts Events from a queue, shortly after the handler.
    wait(lambda: "SpecRejected" in ns.events("uh"), timeout=30, what="SpecRejected event")
    ns.wait_resyncs(2)
    now = ns.read("StatefulSet", "uh-gw")
    assert now is not None
    assert now["metadata"]["generation"] == statefulset["metadata"]["generation"]
    assert now["spec"] == statefulset["spec"]
    current = published(ns, "uh")
    assert current is not None and current.version == version and current.buckets == 8
    assert pool.get()["spec"]["buckets"] == 8


def test_an_operator_restart_changes_nothing(ns: Operated) -> None:
    pool = ns.pool("rs", {"replicas": 2, "gateway": storescp()})
    wait(lambda: all_children_exist(ns, "rs"), timeout=60, what="every child")
    wait(lambda: pool.settled(2, 1), timeout=120, what="settled")

    def uids() -> dict[tuple[str, str], str]:
        found = {(k, n): ns.read(k, n) for k, n in children("rs")}
        return {key: obj["metadata"]["uid"] for key, obj in found.items() if obj is not None}

    def counts() -> dict[str, int]:
        labels = {"app.kubernetes.io/instance": "rs"}
        return {
            kind: len(ns.kube.find(kind, ns.namespace, labels=labels))
            for kind in {kind for kind, _ in CHILDREN} | {"Pod"}
        }

    def pod_uids() -> set[str]:
        return {p["metadata"]["uid"] for c in ("gateway", "router") for p in ns.pods("rs", c)}

    before, counted, pods = uids(), counts(), pod_uids()
    map_text = pool.map_text()
    [old] = [p for p in ns.operator_pods() if not p.done]
    core: Any = kubernetes.client.CoreV1Api(ns.cluster.api())
    core.delete_namespaced_pod(old.name, ns.namespace)

    def new_operator() -> Pod | None:
        running = [p for p in ns.operator_pods() if not p.done and p.uid != old.uid]
        return running[0] if running else None

    wait(lambda: new_operator() is not None, timeout=90, what="a new operator pod")
    started = new_operator()
    assert started is not None

    def new_log() -> str:
        return ns.cluster.kubelet.log(started)

    wait(
        lambda: "Resuming is processed" in new_log() and new_log().count("pools checked") >= 2,
        timeout=90,
        what="the resume handler and two drift checks in the new operator",
    )
    assert old.done
    assert uids() == before
    assert counts() == counted
    assert pod_uids() == pods
    assert pool.map_text() == map_text


def test_deleting_the_pool_removes_what_it_owned(ns: Operated) -> None:
    pool = ns.pool("del", {"replicas": 2, "gateway": storescp()})
    wait(lambda: all_children_exist(ns, "del"), timeout=60, what="every child")
    wait(lambda: len(ns.pods("del", "gateway")) == 2, timeout=60, what="gateway pods")
    pool.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, ns.namespace, PLURAL, "del")
    # The real garbage collector deletes the children, and their pods with them.
    wait(
        lambda: not any(ns.read(kind, name) for kind, name in children("del")),
        timeout=90,
        what="children deleted",
    )
    wait(
        lambda: not ns.pods("del", "gateway") and not ns.pods("del", "router"),
        timeout=90,
        what="pods deleted",
    )

    def pool_gone() -> bool:
        try:
            pool.get()
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        return False

    # The operator's finalizer is removed once it is done.
    wait(pool_gone, timeout=60, what="pool gone")


# -- TLS settings ------------------------------------------------------------------------------


def router_objects(ns: Operated) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    deployment = ns.read("Deployment", "tls-router")
    service = ns.read("Service", "tls-router")
    policy = ns.read("NetworkPolicy", "tls-router")
    assert deployment is not None and service is not None and policy is not None
    return deployment, service, policy


def secret_volumes(template: dict[str, Any]) -> dict[str, str]:
    """The Secret volumes of a pod template: volume name to Secret name."""
    pod = template["spec"]
    return {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes") or [] if "secret" in v}


def tls_state(ns: Operated) -> tuple[int, bool]:
    """Secret volumes of the routers, and whether the Service and the policy have the TLS port.

    The operator writes the Deployment, the Service and the policy one after another.
    """
    deployment, service, policy = router_objects(ns)
    in_service = any(p["name"] == "dicom-tls" for p in service["spec"]["ports"])
    in_policy = any(p["port"] == 2762 for p in policy["spec"]["ingress"][0]["ports"])
    if in_service != in_policy:
        return -1, in_service
    return len(secret_volumes(deployment["spec"]["template"])), in_service


def sorted_ports(template: dict[str, Any]) -> dict[str, Any]:
    """A pod template with its containers' ports in name order (apply appends what it adds)."""
    result: dict[str, Any] = json.loads(json.dumps(template))
    for container in result["spec"]["containers"]:
        container["ports"].sort(key=lambda port: port["name"])
    return result


def gateway_template(ns: Operated) -> dict[str, Any]:
    statefulset = ns.read("StatefulSet", "tls-gw")
    assert statefulset is not None
    template: dict[str, Any] = statefulset["spec"]["template"]
    return template


def test_tls_settings_reach_the_routers_and_go_away_with_them(ns: Operated) -> None:
    pool = ns.pool("tls", {"replicas": 1, "gateway": storescp()})
    created = pool.get()
    wait(lambda: all_children_exist(ns, "tls"), timeout=60, what="every child")
    plain_template = router_objects(ns)[0]["spec"]["template"]
    plain_gateways = gateway_template(ns)
    tls = {
        "secretName": "tls-router-tls",
        "port": 2762,
        "clientCASecretName": "modality-ca",
        "callerSubjects": [{"aeTitle": "CT01", "subject": "CN=ct01.example.org,O=Hospital"}],
    }
    pool.patch_spec(
        {
            "router": {"allowedCallingAETitles": ["CT01", "MR1"], "tls": tls},
            "gateway": {
                "tls": {"caSecretName": "gateway-ca", "serverCertSecretName": "gw-serving"}
            },
        }
    )
    wait(lambda: tls_state(ns) == (3, True), timeout=60, what="TLS everywhere")
    deployment, service, policy = router_objects(ns)
    assert secret_volumes(deployment["spec"]["template"]) == {
        "tls-server": "tls-router-tls",
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
    wait(
        lambda: secret_volumes(gateway_template(ns)) == {"tls-server": "gw-serving"},
        timeout=60,
        what="the gateways' certificate mounted",
    )
    [gateway] = gateway_template(ns)["spec"]["containers"]
    assert {"name": "tls-server", "mountPath": "/etc/gatewaypool/tls/server", "readOnly": True} in (
        gateway["volumeMounts"]
    )
    assert gateway_template(ns)["spec"]["securityContext"]["fsGroup"] == 65532
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
    pool.patch_spec({"router": {"plainPort": False}})
    wait(
        lambda: (
            [p["name"] for p in router_objects(ns)[1]["spec"]["ports"]] == ["dicom-tls"]
            and {p["port"] for p in router_objects(ns)[2]["spec"]["ingress"][0]["ports"]}
            == {2762, 8080}
        ),
        timeout=60,
        what="plain port gone from the Service and the policy",
    )
    deployment, _, policy = router_objects(ns)
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    # Server-side apply keeps the items it had and appends new ones: compare as sets.
    assert {p["name"] for p in container["ports"]} == {"dicom-tls", "http"}
    assert "--no-plain-port" in container["command"] and "--port" not in container["command"]
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {2762, 8080}

    # Back to the first spec: the routers are as they were (no volumes, no TLS port or option).
    pool.patch_spec(
        {
            "router": {"plainPort": None, "tls": None, "allowedCallingAETitles": None},
            "gateway": {"tls": None},
        }
    )
    wait(lambda: tls_state(ns) == (0, False), timeout=60, what="TLS gone everywhere")
    wait(
        lambda: secret_volumes(gateway_template(ns)) == {},
        timeout=60,
        what="the gateways' certificate unmounted",
    )
    [gateway] = gateway_template(ns)["spec"]["containers"]
    assert gateway["volumeMounts"] == plain_gateways["spec"]["containers"][0]["volumeMounts"]
    deployment, service, policy = router_objects(ns)
    assert sorted_ports(deployment["spec"]["template"]) == sorted_ports(plain_template)
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("dicom", 11112)]
    assert {p["port"] for p in policy["spec"]["ingress"][0]["ports"]} == {11112, 8080}
    assert created["metadata"]["uid"] == pool.get()["metadata"]["uid"]


# -- what a pass writes, and what a server error does ------------------------------------------


def test_passes_during_a_handover_with_nothing_new_write_no_status(ns: Operated) -> None:
    """An autoscaler's /scale write at the version it read must not meet a status write.

    While a move waits (here: for the router to have been up `quietSeconds`),
    the router reports every two seconds and every drift check runs a pass;
    the world they see differs only in the reports' times. None may write
    the pool (its status), or its resourceVersion would move under the
    HorizontalPodAutoscaler, whose rescale would then fail with 409.

    The pool settles with a short ``quietSeconds`` first: a first map is dealt
    over the gateways Ready at that pass (rule 1), and when one comes up a
    pass later its share moves like any other, which with 600 s would not
    settle within the test.
    """
    pool = ns.pool(
        "hv",
        {
            "replicas": 2,
            "buckets": 16,
            "gateway": storescp(),
            "handover": {"quietSeconds": 2, "maxDrainSeconds": 1200},
        },
    )
    wait(lambda: pool.settled(2, 1), timeout=120, what="two gateways, one router")
    pool.patch_spec({"handover": {"quietSeconds": 600}})
    generation = pool.get()["metadata"]["generation"]
    wait(
        lambda: pool.status().get("observedGeneration") == generation,
        timeout=60,
        what="the long quietSeconds taken in",
    )
    pool.scale(1)
    wait(
        lambda: map_version(ns, "hv") >= 2 and bool(pool.status().get("movingBuckets")),
        timeout=60,
        what="a move under way",
    )
    marked = published(ns, "hv")
    map_text = pool.map_text()
    assert marked is not None and marked.moving
    # The router's fresh report on the marking version is taken in.
    wait(lambda: pool.status().get("routers") == "1/1", timeout=60, what="router in sync")
    ns.wait_resyncs(1)
    waiting = pool.status()
    assert waiting["movingBuckets"] == len(marked.moving)
    assert "oldestMoveSince" in waiting
    version = pool.get()["metadata"]["resourceVersion"]
    reports = (ns.read("ConfigMap", "hv-routers") or {})["metadata"]["resourceVersion"]
    ns.wait_resyncs(3)
    # The router reported meanwhile, so the passes saw fresh news: only its time was new.
    assert (ns.read("ConfigMap", "hv-routers") or {})["metadata"]["resourceVersion"] != reports
    assert pool.get()["metadata"]["resourceVersion"] == version
    assert pool.status() == waiting
    assert pool.map_text() == map_text


@dataclass
class Review:
    """One admission review the webhook received."""

    uid: str
    operation: str
    name: str


class HangingUpWebhook:
    """An HTTPS admission webhook that reads each review and hangs up without an answer.

    With ``failurePolicy: Fail`` the API server then refuses the write with
    500 InternalError ("failed calling webhook"), as it does for a webhook
    whose pods are down.
    """

    def __init__(self, folder: Path) -> None:
        ca = TestCA(folder)
        issued = ca.issue("webhook", "127.0.0.1")
        self.ca_bundle = ca.bundle.read_bytes()
        self.reviews: list[Review] = []
        reviews = self.reviews

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(body)["request"]
                reviews.append(
                    Review(request["uid"], request["operation"], request.get("name") or "")
                )
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(issued.cert), str(issued.key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HangingUpWebhook:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def failing_statefulset_writes(
    ns: Operated, tmp_path: Path
) -> Iterator[tuple[HangingUpWebhook, str]]:
    """Writes of the StatefulSet ``se-gw`` in the module's namespace fail with a 500.

    Yields the webhook and the name of its ValidatingWebhookConfiguration.
    """
    name = f"fail-se-gw-{ns.namespace}"
    admission: Any = kubernetes.client.AdmissionregistrationV1Api(ns.cluster.api())
    with HangingUpWebhook(tmp_path / "webhook") as webhook:
        admission.create_validating_webhook_configuration(
            {
                "metadata": {"name": name},
                "webhooks": [
                    {
                        "name": "refuse.gatewaypool.test",
                        "clientConfig": {
                            "url": f"https://127.0.0.1:{webhook.port}/validate",
                            "caBundle": base64.b64encode(webhook.ca_bundle).decode(),
                        },
                        "rules": [
                            {
                                "apiGroups": ["apps"],
                                "apiVersions": ["v1"],
                                "resources": ["statefulsets"],
                                "operations": ["CREATE", "UPDATE"],
                            }
                        ],
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": ns.namespace}
                        },
                        "matchConditions": [
                            {"name": "se-gw", "expression": "object.metadata.name == 'se-gw'"}
                        ],
                        "failurePolicy": "Fail",
                        "sideEffects": "None",
                        "admissionReviewVersions": ["v1"],
                        "timeoutSeconds": 5,
                    }
                ],
            }
        )
        try:
            yield webhook, name
        finally:
            try:
                admission.delete_validating_webhook_configuration(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def test_a_server_error_on_one_child_degrades_the_pool_and_the_others_are_written(
    ns: Operated, failing_statefulset_writes: tuple[HangingUpWebhook, str]
) -> None:
    """A 5xx that outlasts the retries is one child's refusal, not the end of the pass."""
    webhook, configuration = failing_statefulset_writes
    pool = ns.pool("se", {"replicas": 2, "gateway": storescp()})
    wait(lambda: degraded(pool) is not None, timeout=60, what="Degraded condition")
    condition = degraded(pool)
    assert condition is not None
    assert condition["reason"] == "ApplyRefused"
    assert condition["message"].startswith("StatefulSet se-gw: ")
    assert "failed calling webhook" in condition["message"]
    # Written after the StatefulSet in the same pass:
    for kind, name in [
        ("NetworkPolicy", "se-gw"),
        ("Deployment", "se-router"),
        ("Service", "se-router"),
        ("ConfigMap", "se-routers"),
    ]:
        assert ns.read(kind, name) is not None, (kind, name)
    assert ns.read("StatefulSet", "se-gw") is None
    tries = {review.uid for review in webhook.reviews if review.name == "se-gw"}
    assert len(tries) > 1, "a 500 is retried before it counts as a refusal"

    # Once the server answers again, a later pass writes it.
    admission: Any = kubernetes.client.AdmissionregistrationV1Api(ns.cluster.api())
    admission.delete_validating_webhook_configuration(configuration)
    wait(
        lambda: ns.read("StatefulSet", "se-gw") is not None and degraded(pool) is None,
        timeout=60,
        what="the StatefulSet written and the pool no longer Degraded",
    )


# -- two operator replicas ---------------------------------------------------------------------


def _peers(cluster: Cluster, namespace: str) -> dict[str, int]:
    """Live replicas in the namespace's KopfPeering: pod name -> priority."""
    custom: Any = kubernetes.client.CustomObjectsApi(cluster.api())
    try:
        peering = custom.get_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", "gatewaypool"
        )
    except ApiException as exc:
        if exc.status == 404:
            return {}
        raise
    # kopf's identity for a replica is "<host name>/<pid>/<random>"; the host name is the pod's.
    return {
        identity.split("/")[0]: int(info["priority"])
        for identity, info in (peering.get("status") or {}).items()
        if int(info.get("lifetime", 0)) > 0
    }


def test_one_operator_replica_works_and_the_other_takes_over(
    cluster: Cluster, cluster_namespace: str
) -> None:
    """The chart's peering: two replicas with random priorities; the higher one works."""
    namespace = cluster_namespace
    installed = cluster.install(
        namespace,
        values={"operator": {"peering": {"enabled": True, "replicas": 2}, "logLevel": "info"}},
    )
    try:
        [deployment] = [o for o in installed if o["kind"] == "Deployment"]
        operator = deployment["metadata"]["name"]
        wait(lambda: len(_peers(cluster, namespace)) == 2, timeout=60, what="two peers")
        peers = _peers(cluster, namespace)
        active, standby = sorted(peers, key=lambda name: peers[name], reverse=True)
        kubelet = cluster.kubelet

        def log(name: str) -> str:
            pod = kubelet.pod(namespace, name)
            return kubelet.log(pod) if pod is not None else ""

        def paused(name: str) -> bool:
            # A peered kopf starts paused and says so only when it resumes; one that
            # resumed before its peer came pauses again.
            text = log(name)
            return text.rfind("Pausing operations") >= text.rfind("Resuming operations")

        wait(lambda: "Resuming operations" in log(active), timeout=60, what="active works")
        wait(lambda: paused(standby), timeout=60, what="the standby paused")
        mark = len(log(standby))
        pool = RealPool(cluster, namespace, "pp")
        pool.create({"replicas": 2, "gateway": storescp(), "router": {"replicas": 1}})
        kube = KubeApi(cluster.api())

        def replicas() -> int | None:
            found = kube.read("StatefulSet", namespace, "pp-gw")
            return None if found is None else int(found["spec"]["replicas"])

        wait(lambda: replicas() == 2, timeout=60, what="pool created")
        wait(lambda: log(active).count("pools checked") >= 2, timeout=60, what="active resyncs")
        meanwhile = log(standby)[mark:]
        assert "Resuming operations" not in meanwhile, "the standby must stay paused"
        assert "Creation is processed" not in meanwhile
        assert "pools checked" not in meanwhile, "the standby's resync must not run"

        # The active replica goes, as a scale-down of the Deployment takes it:
        # the ReplicaSet deletes the pod with the lowest deletion cost.
        core: Any = kubernetes.client.CoreV1Api(cluster.api())
        core.patch_namespaced_pod(
            active,
            namespace,
            {"metadata": {"annotations": {"controller.kubernetes.io/pod-deletion-cost": "-1000"}}},
        )
        apps: Any = kubernetes.client.AppsV1Api(cluster.api())
        apps.patch_namespaced_deployment_scale(operator, namespace, {"spec": {"replicas": 1}})
        wait(
            lambda: "Resuming operations" in log(standby)[mark:],
            timeout=60,
            what="the standby resumes",
        )
        pool.scale(3)
        wait(lambda: replicas() == 3, timeout=60, what="scaled by the standby")
        gone = kubelet.pod(namespace, active)
        assert gone is not None and gone.done, "the active replica's pod was the one removed"
    finally:
        # While an operator runs to remove its finalizer, or the namespace never goes.
        custom: Any = kubernetes.client.CustomObjectsApi(cluster.api())
        try:
            custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, "pp")
        except ApiException as exc:
            if exc.status != 404:
                raise
        cluster.uninstall(installed)
