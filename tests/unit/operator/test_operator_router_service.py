"""The router Service and pods as a hospital network needs them (issue 25), and the pod
settings of issue 19 (pull Secrets, the gateway's users and its privileged port).

Every combination of the Service settings either is refused by the operator's
spec check or renders a Service that passes strict validation against the
real Kubernetes OpenAPI schemas and the API server's own rules of which
field goes with which type (`api_server_problems`, which is shown to catch
each rule). The Service never carries what the API server allocates.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gatewaypool_operator import exposure
from gatewaypool_operator.children.desired import build_children
from gatewaypool_operator.children.gateway import UNPRIVILEGED_PORT_SYSCTL
from gatewaypool_operator.conditions import ConditionReason, ConditionType
from gatewaypool_operator.drift import immutable_change
from gatewaypool_operator.events import Reason
from gatewaypool_operator.passdata import Observed
from gatewaypool_operator.plan import plan
from gatewaypool_operator.spec.fields import SpecError
from gatewaypool_operator.spec.parse import parse_spec
from gatewaypool_operator.spec.types import PoolSpec
from support.servicecombos import combinations

NAME, NAMESPACE = "ct", "radiology"
REPO = Path(__file__).resolve().parents[3]
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def spec_of(**extra: Any) -> PoolSpec:
    return parse_spec({"gateway": {"image": "gw:1"}} | extra, default_router_image="gp:1")


def children_of(spec: PoolSpec) -> dict[tuple[str, str], dict[str, Any]]:
    objects = build_children(
        name=NAME, namespace=NAMESPACE, spec=spec, map_data=None, gateway_replicas=1
    )
    return {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}


def router_service(spec: PoolSpec) -> dict[str, Any]:
    return children_of(spec)[("Service", "ct-router")]


def api_server_problems(service: Mapping[str, Any]) -> list[str]:
    """The API server's rules (pkg/apis/core/validation) of which Service field needs which
    type, for the fields the router Service may carry."""
    spec = service["spec"]
    kind = spec.get("type", "ClusterIP")
    problems = []
    if kind != "LoadBalancer":
        problems += [f"{key} needs LoadBalancer" for key in ("loadBalancerClass",) if key in spec]
        if spec.get("loadBalancerSourceRanges"):
            problems.append("loadBalancerSourceRanges needs LoadBalancer")
    if kind == "ClusterIP":
        if "externalTrafficPolicy" in spec:
            problems.append("externalTrafficPolicy needs NodePort or LoadBalancer")
        problems += [
            f"{p['name']}: nodePort on ClusterIP" for p in spec["ports"] if "nodePort" in p
        ]
    node_ports = [p["nodePort"] for p in spec["ports"] if "nodePort" in p]
    if len(set(node_ports)) != len(node_ports):
        problems.append("one nodePort twice")
    families = spec.get("ipFamilies") or []
    if len(set(families)) != len(families) or len(families) > 2:
        problems.append("ipFamilies not one or two different families")
    if len(families) == 2 and spec.get("ipFamilyPolicy") == "SingleStack":
        problems.append("SingleStack with two families")
    for allocated in ("clusterIP", "clusterIPs", "healthCheckNodePort"):
        if allocated in spec:
            problems.append(f"{allocated} is the API server's to allocate")
    return problems


COMBINATIONS = combinations()


def test_every_combination_is_refused_or_renders_a_service_the_api_server_takes() -> None:
    accepted = refused = 0
    for router in COMBINATIONS:
        try:
            spec = spec_of(router=router)
        except SpecError:
            refused += 1
            continue
        accepted += 1
        service = router_service(spec)
        assert api_server_problems(service) == [], router
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(service, version, strict=True)
    # Both sides are exercised: the checker and the builder.
    assert accepted > 100 and refused > 500, (accepted, refused)


def test_the_api_server_rules_here_catch_each_mistake() -> None:
    base = router_service(spec_of())
    for field, value in (
        ("loadBalancerClass", "example.com/lb"),
        ("loadBalancerSourceRanges", ["10.0.0.0/8"]),
        ("externalTrafficPolicy", "Local"),
        ("clusterIP", "10.96.0.10"),
        ("ipFamilies", ["IPv4", "IPv4"]),
    ):
        wrong = base | {"spec": base["spec"] | {field: value}}
        assert api_server_problems(wrong), field
    ports = [p | {"nodePort": 30104} for p in base["spec"]["ports"]]
    assert api_server_problems(base | {"spec": base["spec"] | {"ports": ports}})


def test_strict_validation_of_the_service_is_not_vacuous() -> None:
    service = router_service(spec_of())
    service["spec"]["externalTrafficPolicyy"] = "Local"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSIONS[0], strict=True)


def test_the_service_writes_what_the_spec_sets_and_nothing_allocated() -> None:
    service = router_service(
        spec_of(
            router={
                "tls": {"secretName": "router-tls"},
                "service": {
                    "type": "LoadBalancer",
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "1"},
                    "labels": {"site": "north"},
                    "loadBalancerSourceRanges": ["10.20.30.0/24"],
                    "externalTrafficPolicy": "Local",
                    "nodePorts": {"dicomTLS": 32762},
                },
            }
        )
    )
    assert service["metadata"]["name"] == "ct-router"
    assert service["metadata"]["annotations"] == {
        "service.beta.kubernetes.io/aws-load-balancer-internal": "1"
    }
    assert service["metadata"]["labels"]["site"] == "north"
    assert service["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
    spec = service["spec"]
    assert spec["type"] == "LoadBalancer"
    assert spec["loadBalancerSourceRanges"] == ["10.20.30.0/24"]
    assert spec["externalTrafficPolicy"] == "Local"
    # The plain port's node port is the API server's to choose, the TLS one is fixed.
    assert [port.get("nodePort") for port in spec["ports"]] == [None, 32762]
    assert not {"clusterIP", "clusterIPs", "healthCheckNodePort", "loadBalancerIP"} & set(spec)


def test_the_older_service_type_still_sets_the_type() -> None:
    spec = router_service(spec_of(router={"serviceType": "NodePort"}))["spec"]
    assert spec["type"] == "NodePort"


def test_a_type_change_keeps_the_name_and_is_no_recreation() -> None:
    live = router_service(spec_of(router={"service": {"type": "LoadBalancer"}}))
    for kind in ("ClusterIP", "NodePort"):
        desired = router_service(spec_of(router={"service": {"type": kind}}))
        assert desired["metadata"]["name"] == live["metadata"]["name"]
        assert immutable_change(desired, live) is None


def test_what_the_api_server_keeps_once_set_recreates_the_service() -> None:
    def lb(**service: Any) -> dict[str, Any]:
        return router_service(spec_of(router={"service": {"type": "LoadBalancer"} | service}))

    internal = lb(loadBalancerClass="example.com/internal")
    assert immutable_change(lb(loadBalancerClass="example.com/other"), internal) is not None
    assert immutable_change(lb(), internal) is not None
    assert immutable_change(lb(loadBalancerClass="example.com/internal"), internal) is None
    # Another type clears the class: no recreation.
    cluster_ip = router_service(spec_of())
    assert immutable_change(cluster_ip, internal) is None
    v4 = lb(ipFamilies=["IPv4"])
    assert immutable_change(lb(ipFamilies=["IPv6"]), v4) == ".spec.ipFamilies[0] differs"
    assert (
        immutable_change(lb(ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv4", "IPv6"]), v4)
        is None
    )


# --- router pods --------------------------------------------------------------------------

PLACEMENT = {
    "labels": {"tier": "ingress"},
    "annotations": {"example.org/owner": "radiology"},
    "nodeSelector": {"node-role.example.org/dicom-ingress": "true"},
    "tolerations": [{"key": "dicom-ingress", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    },
    "priorityClassName": "dicom-ingress",
    "topologySpreadConstraints": [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
        }
    ],
}


@pytest.mark.parametrize(
    ("kind", "router"),
    [("Deployment", {}), ("StatefulSet", {"spool": {"size": "10Gi"}})],
    ids=["deployment", "spooling-statefulset"],
)
def test_router_pods_carry_the_placement_fields(kind: str, router: dict[str, Any]) -> None:
    children = children_of(spec_of(router={"podTemplate": PLACEMENT} | router))
    deployment = children[(kind, "ct-router")]
    template = deployment["spec"]["template"]
    pod = template["spec"]
    assert template["metadata"]["labels"]["tier"] == "ingress"
    assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
    assert template["metadata"]["annotations"] == PLACEMENT["annotations"]
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert pod[key] == PLACEMENT[key], key
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["labelSelector"] == deployment["spec"]["selector"]
    assert pod["serviceAccountName"] == "ct-router"
    # The gateway pods are not touched by the router's template.
    gateway = children[("StatefulSet", "ct-gw")]["spec"]["template"]["spec"]
    assert "nodeSelector" not in gateway and "priorityClassName" not in gateway
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)


def test_router_pods_without_a_template_are_as_before() -> None:
    pod = children_of(spec_of())[("Deployment", "ct-router")]["spec"]["template"]["spec"]
    assert not {"nodeSelector", "tolerations", "affinity", "priorityClassName"} & set(pod)
    assert len(pod["topologySpreadConstraints"]) == 2  # the default spread


# --- NetworkPolicy and RouterExposed ------------------------------------------------------

MODALITIES = [{"ipBlock": {"cidr": "10.20.30.0/24"}}, {"ipBlock": {"cidr": "10.20.40.0/24"}}]


def test_router_from_restricts_the_dicom_ports_and_leaves_http_open() -> None:
    policy = children_of(spec_of(networkPolicy={"routerFrom": MODALITIES}))[
        ("NetworkPolicy", "ct-router")
    ]
    dicom, http = policy["spec"]["ingress"]
    assert dicom == {"from": MODALITIES, "ports": [{"protocol": "TCP", "port": 11112}]}
    assert http == {"ports": [{"protocol": "TCP", "port": 8080}]}
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(policy, version, strict=True)
    open_policy = children_of(spec_of())[("NetworkPolicy", "ct-router")]
    (rule,) = open_policy["spec"]["ingress"]
    assert "from" not in rule


LOAD_BALANCER = {"service": {"type": "LoadBalancer"}}


@pytest.mark.parametrize(
    ("extra", "exposed"),
    [
        ({}, False),
        ({"router": {"service": {"type": "NodePort"}}}, False),
        ({"router": LOAD_BALANCER}, True),
        ({"router": {"serviceType": "LoadBalancer"}}, True),
        (
            {
                "router": {
                    "service": LOAD_BALANCER["service"]
                    | {"loadBalancerSourceRanges": ["10.0.0.0/8"]}
                }
            },
            False,
        ),
        ({"router": LOAD_BALANCER, "networkPolicy": {"routerFrom": MODALITIES}}, False),
        (
            {
                "router": LOAD_BALANCER,
                "networkPolicy": {"routerFrom": MODALITIES, "enabled": False},
            },
            True,
        ),
        (
            {
                "router": LOAD_BALANCER,
                "networkPolicy": {"routerFrom": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]},
            },
            True,
        ),
        # A range of every address restricts nothing, whatever else is listed.
        (
            {
                "router": {
                    "service": LOAD_BALANCER["service"]
                    | {"loadBalancerSourceRanges": ["0.0.0.0/0"]}
                }
            },
            True,
        ),
        (
            {
                "router": {
                    "service": LOAD_BALANCER["service"]
                    | {"loadBalancerSourceRanges": ["10.20.30.0/24", "::/0"]}
                }
            },
            True,
        ),
        (
            {
                "router": LOAD_BALANCER,
                "networkPolicy": {"routerFrom": [*MODALITIES, {"ipBlock": {"cidr": "::/0"}}]},
            },
            True,
        ),
    ],
)
def test_router_exposure(extra: dict[str, Any], exposed: bool) -> None:
    assert exposure.router_exposure(spec_of(**extra))[0] is exposed


def exposed_conditions(decided: Any) -> list[dict[str, Any]]:
    status = decided.status_basis.status()
    return [c for c in status["conditions"] if c["type"] == ConditionType.ROUTER_EXPOSED]


def pool_body(spec: dict[str, Any], conditions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": "u1", "generation": 1},
        "spec": spec,
        "status": {"conditions": conditions},
    }


def test_router_exposed_appears_with_one_warning_and_clears() -> None:
    spec: dict[str, Any] = {"gateway": {"image": "gw:1"}, "router": LOAD_BALANCER}
    first = plan(Observed(pool_body(spec, [])), default_router_image="gp:1", now=NOW)
    (condition,) = exposed_conditions(first)
    assert (condition["status"], condition["reason"]) == (
        "True",
        ConditionReason.ANY_SOURCE_ADMITTED,
    )
    warnings = [e for e in first.events if e.reason is Reason.ROUTER_EXPOSED]
    assert [e.type for e in warnings] == ["Warning"]
    assert "reachable from any address" in warnings[0].message

    # The next pass, with the condition already True, says it again in status only.
    after = first.status_basis.status()["conditions"]
    again = plan(Observed(pool_body(spec, after)), default_router_image="gp:1", now=NOW)
    assert exposed_conditions(again) and not [
        e for e in again.events if e.reason is Reason.ROUTER_EXPOSED
    ]

    # Source ranges clear it.
    spec["router"] = {
        "service": LOAD_BALANCER["service"] | {"loadBalancerSourceRanges": ["10.20.30.0/24"]}
    }
    cleared = plan(Observed(pool_body(spec, after)), default_router_image="gp:1", now=NOW)
    assert exposed_conditions(cleared) == []
    assert not [e for e in cleared.events if e.reason is Reason.ROUTER_EXPOSED]


# --- pull Secrets and the gateway's users (issue 19) -----------------------------------------


def test_image_pull_secrets_reach_router_and_gateway_pods() -> None:
    children = children_of(spec_of(imagePullSecrets=[{"name": "registry"}]))
    for key in (("Deployment", "ct-router"), ("StatefulSet", "ct-gw")):
        pod = children[key]["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "registry"}], key
    plain = children_of(spec_of())
    assert "imagePullSecrets" not in plain[("StatefulSet", "ct-gw")]["spec"]["template"]["spec"]


def gateway_pod(spec: PoolSpec) -> dict[str, Any]:
    pod: dict[str, Any] = children_of(spec)[("StatefulSet", "ct-gw")]["spec"]["template"]["spec"]
    return pod


def test_gateway_security_context_defaults_are_safe() -> None:
    pod = gateway_pod(spec_of())
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert "runAsUser" not in security and "fsGroup" not in security
    assert pod["containers"][0]["securityContext"]["runAsNonRoot"] is True


def test_gateway_security_context_from_the_spec() -> None:
    pod = gateway_pod(
        spec_of(
            gateway={
                "image": "orthancteam/orthanc:24.1.2",
                "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 3000},
            }
        )
    )
    security = pod["securityContext"]
    assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (
        1000,
        1000,
        3000,
    )
    root = gateway_pod(
        spec_of(gateway={"image": "gw:1", "securityContext": {"runAsNonRoot": False}})
    )
    assert root["securityContext"]["runAsNonRoot"] is False
    assert root["containers"][0]["securityContext"]["runAsNonRoot"] is False


@pytest.mark.parametrize(
    ("port", "sysctl"), [(104, "104"), (1023, "1023"), (1024, None), (4242, None)]
)
def test_a_privileged_gateway_port_gets_the_unprivileged_port_sysctl(
    port: int, sysctl: str | None
) -> None:
    statefulset = children_of(spec_of(gateway={"image": "gw:1", "port": port}))[
        ("StatefulSet", "ct-gw")
    ]
    sysctls = statefulset["spec"]["template"]["spec"]["securityContext"].get("sysctls")
    if sysctl is None:
        assert sysctls is None
    else:
        assert sysctls == [{"name": UNPRIVILEGED_PORT_SYSCTL, "value": sysctl}]
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(statefulset, version, strict=True)


# --- the cluster domain (issue 19) -------------------------------------------------------------


def test_the_cluster_domain_ends_every_gateway_host_in_the_map() -> None:
    from gatewaypool_operator.mapgateways import desired_gateways

    spec = spec_of(replicas=2)
    hosts = [
        g.host
        for g in desired_gateways(
            name=NAME, namespace=NAMESPACE, spec=spec, count=2, cluster_domain="hospital.internal"
        )
    ]
    assert hosts == [
        "ct-gw-0.ct-gw.radiology.svc.hospital.internal",
        "ct-gw-1.ct-gw.radiology.svc.hospital.internal",
    ]
    default = desired_gateways(name=NAME, namespace=NAMESPACE, spec=spec, count=1)
    assert default[0].host == "ct-gw-0.ct-gw.radiology.svc.cluster.local"


def test_the_operator_option_takes_the_environment_and_refuses_a_bad_domain(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from gatewaypool_operator import cli

    def parsed(*argv: str) -> argparse.Namespace:
        parser = argparse.ArgumentParser()
        cli.register(parser.add_subparsers())
        return parser.parse_args(["operator", *argv])

    monkeypatch.setenv("GATEWAYPOOL_CLUSTER_DOMAIN", "hospital.internal")
    assert parsed().cluster_domain == "hospital.internal"
    assert parsed("--cluster-domain", "other.example").cluster_domain == "other.example"
    assert cli.run(parsed("--cluster-domain", "Not A Domain")) == 2
    assert "--cluster-domain" in capsys.readouterr().out


def test_the_modality_vlan_example_is_reachable_only_from_its_subnets() -> None:
    pool = yaml.safe_load((REPO / "examples" / "modality-vlan.yaml").read_text())
    spec = parse_spec(pool["spec"], default_router_image="gp:1")
    children = children_of(spec)
    service = children[("Service", "ct-router")]
    assert service["metadata"]["annotations"] == {"metallb.io/loadBalancerIPs": "10.20.0.50"}
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert service["spec"]["loadBalancerSourceRanges"] == ["10.20.30.0/24", "10.20.40.0/24"]
    assert exposure.router_exposure(spec)[0] is False
    policy = children[("NetworkPolicy", "ct-router")]["spec"]["ingress"][0]
    assert [peer["ipBlock"]["cidr"] for peer in policy["from"]] == [
        "10.20.30.0/24",
        "10.20.40.0/24",
    ]
    pod = children[("Deployment", "ct-router")]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"example.org/dicom-ingress": "true"}


def doc_specs(section: str) -> list[dict[str, Any]]:
    """The ``spec`` of every YAML block in a section of docs/operations.md."""
    text = (REPO / "docs" / "operations.md").read_text()
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", part, re.DOTALL)
    return [yaml.safe_load(block)["spec"] for block in blocks]


def test_the_documented_set_ups_render_what_the_docs_say() -> None:
    # MetalLB with a fixed address, a cloud's internal load balancer, NodePort
    # behind the hospital's own load balancer.
    metallb, internal, node_port = (
        spec_of(**extra) for extra in doc_specs("Reaching the router from the modalities")
    )
    rendered = {}
    for key, spec in (("metallb", metallb), ("internal", internal), ("nodeport", node_port)):
        service = router_service(spec)
        assert api_server_problems(service) == [], key
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(service, version, strict=True)
        rendered[key] = service
    assert rendered["metallb"]["metadata"]["annotations"]["metallb.io/loadBalancerIPs"]
    assert (
        rendered["internal"]["metadata"]["annotations"][
            "service.beta.kubernetes.io/azure-load-balancer-internal"
        ]
        == "true"
    )
    for spec in (metallb, internal):
        assert exposure.router_exposure(spec)[0] is False
        assert spec.router.service.external_traffic_policy == "Local"
    assert rendered["nodeport"]["spec"]["type"] == "NodePort"
    assert [p["nodePort"] for p in rendered["nodeport"]["spec"]["ports"]] == [30104, 32762]


def test_the_documented_network_policies_admit_the_modality_subnets() -> None:
    [extra] = doc_specs("Network policies")
    children = children_of(spec_of(**extra))
    router_rule = children[("NetworkPolicy", "ct-router")]["spec"]["ingress"][0]
    assert router_rule["from"] == extra["networkPolicy"]["routerFrom"]
    assert all("ipBlock" in peer for peer in router_rule["from"])
    gateway_rules = children[("NetworkPolicy", "ct-gw")]["spec"]["ingress"]
    assert extra["networkPolicy"]["extraIngress"][0] in gateway_rules
    for key in (("NetworkPolicy", "ct-router"), ("NetworkPolicy", "ct-gw")):
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(children[key], version, strict=True)
