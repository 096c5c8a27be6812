"""The RBAC the chart and the operator grant covers every API call made, and no more.

The chart is installed as a user installs it; the operator runs with its
ServiceAccount's token and each router with its own. A pool then lives its
whole life: creation with an autoscaler, a scale through the scale
subresource, a deleted child, a hand edit of every kind it owns, an
immutable change (the StatefulSet re-created), NetworkPolicies and the
autoscaler turned off, the routers given a spool (a StatefulSet replaces
their Deployment) and relieved of it (the Deployment replaces the
StatefulSet and its headless Service), deletion. The real API server's audit log
(:mod:`support.audit`) then says what each identity asked and what RBAC
decided: nothing was refused, and every (group, resource, verb) the chart
grants the operator, and every (ConfigMap, verb) the operator's Role grants
the routers, was used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from gatewaypool_local.peers.process import wait_until
from gatewaypool_operator.kubeapply import Cluster as KubeApi
from support.audit import AuditLog, Request, service_account
from support.provisioner import STORAGE_CLASS
from support.realcluster import Cluster
from support.realpool import RealPool

Triple = tuple[str, str, str]
#: Seconds between two looks at the cluster while waiting.
POLL = 0.5

#: Granted, but no request of the operator's shows it, each with its reason.
GRANTED_WITHOUT_A_REQUEST: frozenset[Triple] = frozenset(
    {
        # blockOwnerDeletion on the children's ownerReferences: the
        # OwnerReferencesPermissionEnforcement admission plugin (on in the
        # test cluster) asks the authorizer for it on each write; that is no
        # request of its own.
        ("gatewaypool.io", "gatewaypools/finalizers", "update"),
        # The routers' Role grants list and watch on the map ConfigMap; the API
        # server lets the operator grant only what it holds, so it holds them
        # without using them.
        ("", "configmaps", "list"),
        ("", "configmaps", "watch"),
    }
    # Server-side apply creates a missing child with a PATCH, which the API
    # server authorizes as "create" too; the request (and the audit) says patch.
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


def granted(rules: Iterable[Mapping[str, Any]]) -> set[Triple]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule.get("apiGroups", [""])
        for resource in rule.get("resources", [])
        for verb in rule.get("verbs", [])
    }


def chart_rules(installed: Iterable[Mapping[str, Any]]) -> set[Triple]:
    """What the installed chart grants its ServiceAccount: ClusterRole and Role rules."""
    return granted(
        rule
        for obj in installed
        if obj["kind"] in ("ClusterRole", "Role")
        for rule in obj.get("rules") or []
    )


def role_rules(role: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(ConfigMap name, verb) the routers' Role grants."""
    result: set[tuple[str, str]] = set()
    for rule in role["rules"]:
        assert rule["resources"] == ["configmaps"]
        assert rule["apiGroups"] == [""]
        for name in rule["resourceNames"]:
            result.update((name, verb) for verb in rule["verbs"])
    return result


def triples(requests: Iterable[Request]) -> set[Triple]:
    # Discovery (/api, /apis/GROUP/VERSION) names no resource and needs no rule.
    return {(r.group, r.full_resource, r.verb) for r in requests if r.resource}


def named_calls(requests: Iterable[Request]) -> set[tuple[str, str]]:
    """(object name, verb) of each call; a list or watch names its object by field selector."""
    return {(r.name, r.verb) for r in requests if r.resource}


def test_every_call_is_granted_and_every_grant_is_used(
    cluster: Cluster, cluster_namespace: str
) -> None:
    namespace = cluster_namespace
    audit = AuditLog(cluster.audit_log)
    since = audit.mark()
    installed = cluster.install(namespace, values={"operator": {"resyncSeconds": 2}})
    kube = KubeApi(cluster.api())
    apps: Any = kubernetes.client.AppsV1Api(cluster.api())
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    try:
        [account] = [o for o in installed if o["kind"] == "ServiceAccount"]
        pool = RealPool(cluster, namespace, "ct")
        pool.create(
            {
                "replicas": 2,
                "buckets": 16,
                "gateway": {
                    "image": "registry.example.org/test/dcmtk:1",
                    "command": ["storescp"],
                    "args": ["104"],
                    "port": 104,
                },
                "router": {"replicas": 1},
                "handover": {"quietSeconds": 1, "maxDrainSeconds": 10},
                "autoscaling": {
                    "minReplicas": 2,
                    "maxReplicas": 4,
                    "targets": {"studiesInFlight": 4},
                },
            }
        )
        # The router watches its map and reports the version it routes by.
        wait_until(lambda: pool.settled(2, 1), timeout=180, what="2 gateways", interval=POLL)
        # The HPA owns the replicas: a hand scale would be undone as soon as it
        # reads studies in flight (whenever Prometheus and the adapter run in
        # this session). Raising its floor has its controller scale the pool.
        pool.patch_spec({"autoscaling": {"minReplicas": 3}})
        wait_until(lambda: pool.settled(3, 1), timeout=180, what="3 gateways", interval=POLL)
        core.delete_namespaced_service("ct-router", namespace)
        wait_until(
            lambda: kube.read("Service", namespace, "ct-router") is not None,
            timeout=60,
            what="Service re-created",
            interval=POLL,
        )
        # A hand edit of every kind the pool owns is repaired.
        for kind, name in DRIFTABLE:
            kube.patch(
                {
                    "kind": kind,
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "labels": {"app.kubernetes.io/name": "hand-edited"},
                    },
                }
            )

        def repaired(kind: str, name: str) -> bool:
            labels = (kube.read(kind, namespace, name) or {})["metadata"]["labels"]
            return bool(labels["app.kubernetes.io/name"] == "gatewaypool")

        for kind, name in DRIFTABLE:
            wait_until(
                partial(repaired, kind, name),
                timeout=60,
                what=f"{kind} {name} repaired",
                interval=POLL,
            )
        router_role = kube.read("Role", namespace, "ct-router")
        assert router_role is not None
        # An immutable field: the StatefulSet is deleted (pods orphaned) and
        # created again; turning the NetworkPolicies off deletes them, and
        # dropping spec.autoscaling the autoscaler.
        old = apps.read_namespaced_stateful_set("ct-gw", namespace).metadata.uid
        pool.patch_spec(
            {
                "gateway": {"storage": {"size": "1Gi"}},
                "networkPolicy": {"enabled": False},
                "autoscaling": None,
            }
        )
        wait_until(
            lambda: (
                (kube.read("StatefulSet", namespace, "ct-gw") or {})
                .get("metadata", {})
                .get("uid", old)
                != old
                and kube.read("NetworkPolicy", namespace, "ct-gw") is None
                and kube.read("HorizontalPodAutoscaler", namespace, "ct") is None
            ),
            timeout=90,
            what="StatefulSet re-created, NetworkPolicies and autoscaler deleted",
            interval=POLL,
        )
        # A spool: the router StatefulSet replaces the Deployment once Ready
        # (deployments: delete); no spool: the Deployment is back and the
        # StatefulSet and its headless Service go (services: delete).
        pool.patch_spec({"router": {"spool": {"size": "1Mi", "storageClassName": STORAGE_CLASS}}})
        wait_until(
            lambda: kube.read("Deployment", namespace, "ct-router") is None,
            timeout=120,
            what="router Deployment replaced by a StatefulSet",
            interval=POLL,
        )
        pool.patch_spec({"router": {"spool": None}})
        wait_until(
            lambda: (
                kube.read("StatefulSet", namespace, "ct-router") is None
                and kube.read("Service", namespace, "ct-router-pods") is None
            ),
            timeout=120,
            what="router StatefulSet replaced by a Deployment",
            interval=POLL,
        )
        pool.custom.delete_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, "ct")

        def gone() -> bool:
            try:
                pool.get()
            except ApiException as exc:
                return bool(exc.status == 404)
            return False

        wait_until(gone, timeout=60, what="pool gone", interval=POLL)
    finally:
        cluster.uninstall(installed)

    operator = audit.requests(
        since=since, user=service_account(namespace, str(account["metadata"]["name"]))
    )
    router = audit.requests(since=since, user=service_account(namespace, "ct-router"))
    assert operator, "no operator request audited"
    assert router, "no router request audited"
    denied = [f"{r.verb} {r.uri} ({r.code})" for r in (*operator, *router) if r.denied]
    assert denied == [], f"requests the API server refused: {denied}"

    operator_used = triples(operator)
    chart = chart_rules(installed)
    assert operator_used <= chart, (
        f"calls the chart does not grant: {sorted(operator_used - chart)}"
    )
    unused = chart - operator_used - GRANTED_WITHOUT_A_REQUEST
    assert not unused, f"granted but never used: {sorted(unused)}"

    assert {(r.group, r.resource) for r in router} <= {("", "configmaps")}, sorted(triples(router))
    router_used = named_calls(router)
    role = role_rules(router_role)
    assert router_used <= role, (
        f"router calls its Role does not grant: {sorted(router_used - role)}"
    )
    assert role == router_used, f"router Role grants unused: {sorted(role - router_used)}"


def test_the_audit_log_shows_a_refused_call(cluster: Cluster, cluster_namespace: str) -> None:
    """The check above can fail: a call RBAC refuses is in the log, as refused, under its user."""
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    core.create_namespaced_service_account(cluster_namespace, {"metadata": {"name": "nobody"}})
    token = core.create_namespaced_service_account_token(
        "nobody", cluster_namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    configuration = kubernetes.client.Configuration()
    configuration.host = cluster.plane.endpoints.server
    configuration.ssl_ca_cert = str(cluster.plane.endpoints.ca)
    configuration.api_key = {"authorization": f"Bearer {token}"}
    audit = AuditLog(cluster.audit_log)
    since = audit.mark()
    nobody: Any = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
    try:
        nobody.list_namespaced_secret(cluster_namespace)
    except ApiException as exc:
        assert exc.status == 403
    else:
        raise AssertionError("a ServiceAccount without a Role listed Secrets")
    [request] = audit.requests(since=since, user=service_account(cluster_namespace, "nobody"))
    assert (request.verb, request.resource, request.namespace) == (
        "list",
        "secrets",
        cluster_namespace,
    )
    assert request.denied and request.decision == "forbid", request
