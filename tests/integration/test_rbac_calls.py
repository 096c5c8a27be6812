"""The RBAC the chart and the operator grant covers every API call actually made.

The operator and a router run as real processes against the API emulator,
each with a kubeconfig carrying its own bearer token, through a pool's whole
life: creation, a scale through the scale subresource, a deleted child, a
refused spec, deletion. Every request is recorded; the calls of each token
become (API group, resource, verb) triples and are checked against what the
chart's ClusterRole grants the operator and what the operator's Role grants
the routers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import helm_python
import kmock
import kubernetes.client
import yaml

from gatewaypool_local.peers import wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_operator import children
from gatewaypool_operator.kubeapply import Cluster
from gatewaypool_operator.spec import parse_spec
from support.cluster import GROUP, NS, PLURAL, REPO, VERSION
from support.kubeemu import KubeEmulator
from support.kubelet import GatewayKubelet
from support.operatorproc import OperatorProcess

Triple = tuple[str, str, str]

#: Granted but not exercised against the emulator, each with its reason.
GRANTED_FOR_REAL_CLUSTERS: frozenset[Triple] = frozenset(
    {
        # blockOwnerDeletion on ownerReferences needs it under the
        # OwnerReferencesPermissionEnforcement admission plugin (no admission here).
        ("gatewaypool.io", "gatewaypools/finalizers", "update"),
        # The routers' Role grants list and watch on the map ConfigMap; RBAC
        # forbids granting more than one holds, so the operator holds them
        # without using them.
        ("", "configmaps", "list"),
        ("", "configmaps", "watch"),
    }
    # Server-side apply creates a missing child with a PATCH, which the API
    # server authorizes as "create" (and "patch"); requests record a patch.
    | {
        (group, resource, "create")
        for group, resource in (
            ("", "services"),
            ("", "serviceaccounts"),
            ("apps", "deployments"),
            ("apps", "statefulsets"),
            ("rbac.authorization.k8s.io", "roles"),
            ("rbac.authorization.k8s.io", "rolebindings"),
            ("networking.k8s.io", "networkpolicies"),
            ("policy", "poddisruptionbudgets"),
            ("autoscaling", "horizontalpodautoscalers"),
        )
    }
)


DRIFTABLE = [
    ("ServiceAccount", "ct-router"),
    ("Role", "ct-router"),
    ("RoleBinding", "ct-router"),
    ("Service", "ct-gw"),
    ("Service", "ct-router"),
    ("StatefulSet", "ct-gw"),
    ("Deployment", "ct-router"),
    ("NetworkPolicy", "ct-gw"),
    ("PodDisruptionBudget", "ct-gw"),
    ("NetworkPolicy", "ct-router"),
    ("PodDisruptionBudget", "ct-router"),
    ("HorizontalPodAutoscaler", "ct"),
]


def drift(kube: KubeEmulator, kind: str, name: str) -> None:
    """Change a label the operator owns, as a hand edit would."""
    Cluster(kube.api_client()).patch(
        {
            "kind": kind,
            "metadata": {
                "name": name,
                "namespace": NS,
                "labels": {"app.kubernetes.io/name": "hand-edited"},
            },
        }
    )


def kubeconfig_with_token(source: Path, target: Path, token: str) -> Path:
    config = yaml.safe_load(source.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    target.write_text(yaml.safe_dump(config))
    return target


def triples(requests: Iterable[kmock.Request], token: str) -> set[Triple]:
    verbs = {
        kmock.action.FETCH: "get",
        kmock.action.LIST: "list",
        kmock.action.WATCH: "watch",
        kmock.action.CREATE: "create",
        kmock.action.DELETE: "delete",
    }
    found: set[Triple] = set()
    for request in requests:
        if request.headers.get("Authorization") != f"Bearer {token}":
            continue
        if request.resource is None or request.action is None or not request.resource.plural:
            continue  # discovery (/apis/GROUP/VERSION): no RBAC needed
        if request.action is kmock.action.UPDATE:
            verb = "update" if str(request.method).upper().endswith("PUT") else "patch"
        else:
            verb = verbs[request.action]
        resource = request.resource.plural or ""
        if request.subresource:
            resource = f"{resource}/{request.subresource}"
        found.add((request.resource.group or "", resource, verb))
    return found


def named_calls(requests: Iterable[kmock.Request], token: str) -> set[tuple[str, str]]:
    """(object name, verb) of every ConfigMap call a token made.

    A watch names its object through a field selector, as RBAC by
    resourceNames requires.
    """
    found: set[tuple[str, str]] = set()
    for request in requests:
        if request.headers.get("Authorization") != f"Bearer {token}":
            continue
        if request.resource is None or request.resource.plural != "configmaps":
            continue
        name = request.name
        selector = str(request.params.get("fieldSelector", ""))
        if name is None and selector.startswith("metadata.name="):
            name = selector.removeprefix("metadata.name=")
        [(_group, _resource, verb)] = triples([request], token)
        found.add((str(name), verb))
    return found


def granted(rules: Iterable[Mapping[str, Any]]) -> set[Triple]:
    result: set[Triple] = set()
    for rule in rules:
        for group in rule.get("apiGroups", [""]):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    result.add((group, resource, verb))
    return result


def chart_operator_rules() -> set[Triple]:
    files = helm_python.Chart.load(REPO / "charts" / "gatewaypool").render(
        {}, name="gwp", namespace="gatewaypool-system", is_install=True
    )
    rules: list[dict[str, Any]] = []
    for path, text in files.items():
        if path.endswith(".yaml"):
            for doc in yaml.safe_load_all(text):
                if doc and doc["kind"] == "ClusterRole":
                    rules.extend(doc.get("rules") or [])
    return granted(rules)


def router_role_rules() -> set[tuple[str, str]]:
    """(ConfigMap name, verb) the routers' Role grants."""
    spec = parse_spec({"gateway": {"image": "scp:1"}}, default_router_image="gp:1")
    objects = children.build_children(
        name="ct", namespace=NS, spec=spec, map_data=None, gateway_replicas=1
    )
    [role] = [obj for obj in objects if obj["kind"] == "Role"]
    result: set[tuple[str, str]] = set()
    for rule in role["rules"]:
        assert rule["resources"] == ["configmaps"]
        assert rule["apiGroups"] == [""]
        for name in rule["resourceNames"]:
            result.update((name, verb) for verb in rule["verbs"])
    return result


def test_every_call_is_granted_and_every_grant_is_used(tmp_path: Path) -> None:
    with KubeEmulator(keep_requests=True) as kube:
        kube.apply_crd(REPO / "crds" / "gatewaypool.io_gatewaypools.yaml")
        kube.create_namespace(NS)
        operator_config = kubeconfig_with_token(
            kube.kubeconfig_path, tmp_path / "operator.kubeconfig", "operator"
        )
        router_config = kubeconfig_with_token(
            kube.kubeconfig_path, tmp_path / "router.kubeconfig", "router"
        )
        operator = OperatorProcess(
            tmp_path / "operator.log", kubeconfig=operator_config, extra_args=["--resync", "1"]
        )
        router: RouterProcess | None = None
        kubelet = GatewayKubelet(
            kube,
            tmp_path / "kubelet",
            namespace=NS,
            pool="ct",
            ae_title="GATEWAY",
            port=104,
            max_gateways=4,
            processes=False,
        )
        kubelet.start()
        operator.start()
        try:
            custom = kubernetes.client.CustomObjectsApi(kube.api_client())
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                NS,
                PLURAL,
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "GatewayPool",
                    "metadata": {"name": "ct", "namespace": NS},
                    "spec": {
                        "replicas": 2,
                        "buckets": 16,
                        "gateway": {"image": "scp:1"},
                        "handover": {"quietSeconds": 1, "maxDrainSeconds": 10},
                        "autoscaling": {"maxReplicas": 4, "targets": {"studiesInFlight": 4}},
                    },
                },
            )
            wait_until(
                lambda: (
                    "map.json" in ((kube.get("ConfigMap", "ct-map", NS) or {}).get("data") or {})
                ),
                timeout=30,
                what="map published",
            )
            router = RouterProcess(
                tmp_path / "router",
                extra_args=[
                    "--map-configmap",
                    f"{NS}/ct-map",
                    "--report-configmap",
                    f"{NS}/ct-routers",
                    "--pod-name",
                    "ct-router-0",
                    "--kubeconfig",
                    str(router_config),
                ],
            )
            router.start()
            custom.patch_namespaced_custom_object_scale(
                GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 3}}
            )
            wait_until(
                lambda: router.metric("gatewaypool_router_map_version") >= 2,
                timeout=30,
                what="router on a newer version",
            )
            kubernetes.client.CoreV1Api(kube.api_client()).delete_namespaced_service(
                "ct-router", NS, _preload_content=False
            )
            wait_until(
                lambda: kube.get("Service", "ct-router", NS) is not None,
                timeout=30,
                what="service re-created",
            )
            # Drift on every kind the pool owns is repaired with a patch.
            for kind, name in DRIFTABLE:
                drift(kube, kind, name)
            for kind, name in DRIFTABLE:
                wait_until(
                    lambda kind=kind, name=name: (
                        (kube.get(kind, name, NS) or {})["metadata"]["labels"][
                            "app.kubernetes.io/name"
                        ]
                        == "gatewaypool"
                    ),
                    timeout=30,
                    what=f"{kind} {name} repaired",
                )
            # An immutable field: the StatefulSet is deleted (pods orphaned) and
            # created again; turning the NetworkPolicies off deletes them, and
            # dropping spec.autoscaling the autoscaler.
            custom.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                NS,
                PLURAL,
                "ct",
                {
                    "spec": {
                        "gateway": {"image": "scp:1", "storage": {"size": "1Gi"}},
                        "networkPolicy": {"enabled": False},
                        "autoscaling": None,
                    }
                },
            )
            wait_until(
                lambda: (
                    "volumeClaimTemplates"
                    in (kube.get("StatefulSet", "ct-gw", NS) or {}).get("spec", {})
                    and kube.get("NetworkPolicy", "ct-gw", NS) is None
                    and kube.get("HorizontalPodAutoscaler", "ct", NS) is None
                ),
                timeout=30,
                what="StatefulSet recreated, NetworkPolicies and autoscaler deleted",
            )
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 40}}
            )
            wait_until(
                lambda: any(
                    e.get("reason") == "SpecRejected" for e in kube.objects("v1/events", NS)
                ),
                timeout=30,
                what="spec refused",
            )
            router.stop()
            custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "ct")
            wait_until(lambda: not kube.objects("GatewayPool", NS), timeout=60, what="pool gone")
        finally:
            if router is not None:
                router.stop()
            operator.stop()
            kubelet.stop()
        requests = kube.requests()

    operator_used = triples(requests, "operator")
    router_used = named_calls(requests, "router")
    chart = chart_operator_rules()
    role = router_role_rules()
    assert operator_used, "no operator request recorded"
    assert router_used, "no router request recorded"
    assert operator_used <= chart, (
        f"calls the chart does not grant: {sorted(operator_used - chart)}"
    )
    assert chart - operator_used <= GRANTED_FOR_REAL_CLUSTERS, (
        f"granted but never used: {sorted(chart - operator_used - GRANTED_FOR_REAL_CLUSTERS)}"
    )
    assert router_used <= role, (
        f"router calls its Role does not grant: {sorted(router_used - role)}"
    )
    assert role == router_used, f"router Role grants unused: {sorted(role - router_used)}"
