"""What a pool owns, as data: names, labels, selectors, ports, security, RBAC, validity."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes_validate
import pytest

from gatewaypool_operator.children.desired import (
    build_children,
    optional_children,
    routers_configmap,
)
from gatewaypool_operator.children.names import (
    gateway_dns_name,
    labels,
    owner_reference,
    selector_labels,
    selector_string,
)
from gatewaypool_operator.spec.parse import MAX_NAME_LENGTH, parse_spec
from gatewaypool_operator.spec.types import PoolSpec
from support import specs

NAME = specs.POOL_NAME
NAMESPACE = specs.POOL_NAMESPACE
OPERATOR_IMAGE = "registry.example.org/gatewaypool:0.1.0"
MAP_JSON = '{"version":1}'  # opaque to the builder
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())

MINIMAL = specs.minimal()
FULL = specs.full()
SPECS = {"minimal": MINIMAL, "full": FULL}


def parse(raw: Mapping[str, Any]) -> PoolSpec:
    return parse_spec(raw, default_router_image=OPERATOR_IMAGE)


def build(raw: Mapping[str, Any] = MINIMAL, **overrides: Any) -> dict[tuple[str, str], Any]:
    spec = parse(raw)
    arguments: dict[str, Any] = {
        "name": NAME,
        "namespace": NAMESPACE,
        "spec": spec,
        "map_data": {"map.json": MAP_JSON},
        "gateway_replicas": spec.replicas,
    } | overrides
    objects = build_children(**arguments)
    by_key = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}
    assert len(by_key) == len(objects), "two children with one kind and name"
    return by_key


@pytest.fixture(params=sorted(SPECS))
def children(request: pytest.FixtureRequest) -> dict[tuple[str, str], Any]:
    return build(SPECS[request.param])


def pod_specs(children: Mapping[tuple[str, str], Any]) -> Iterator[dict[str, Any]]:
    for (kind, _), obj in children.items():
        if kind in ("StatefulSet", "Deployment"):
            yield obj["spec"]["template"]["spec"]


def containers(children: Mapping[tuple[str, str], Any]) -> Iterator[dict[str, Any]]:
    for pod in pod_specs(children):
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


def matches(selector: Mapping[str, str], pod_labels: Mapping[str, str]) -> bool:
    return all(pod_labels.get(key) == value for key, value in selector.items())


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


# --- names, labels, namespaces -----------------------------------------------


def test_the_pool_owns_exactly_the_contracts_objects() -> None:
    assert set(build()) == {
        ("StatefulSet", "ct-triage-gw"),
        ("Service", "ct-triage-gw"),
        ("Deployment", "ct-triage-router"),
        ("Service", "ct-triage-router"),
        ("ServiceAccount", "ct-triage-router"),
        ("Role", "ct-triage-router"),
        ("RoleBinding", "ct-triage-router"),
        ("ConfigMap", "ct-triage-map"),
        ("NetworkPolicy", "ct-triage-gw"),
        ("NetworkPolicy", "ct-triage-router"),
        ("PodDisruptionBudget", "ct-triage-gw"),
        ("PodDisruptionBudget", "ct-triage-router"),
    }


def test_the_routers_configmap_is_separate_and_empty() -> None:
    """Routers write into it: the operator creates it once, so it is not a child to apply."""
    assert ("ConfigMap", "ct-triage-routers") not in build()
    assert routers_configmap(name=NAME, namespace=NAMESPACE)["data"] == {}


def test_every_child_has_the_pool_labels_namespace_and_no_owner(
    children: dict[tuple[str, str], Any],
) -> None:
    components = {
        "StatefulSet": "gateway",
        "Service": None,
        "Deployment": "router",
        "ServiceAccount": "router",
        "Role": "router",
        "RoleBinding": "router",
        "ConfigMap": "map",
        "NetworkPolicy": None,
        "PodDisruptionBudget": None,
        "HorizontalPodAutoscaler": "gateway",
    }
    for (kind, name), obj in children.items():
        metadata = obj["metadata"]
        assert metadata["namespace"] == NAMESPACE
        component = components[kind] or ("gateway" if name.endswith("-gw") else "router")
        assert metadata["labels"] == {
            "app.kubernetes.io/name": "gatewaypool",
            "app.kubernetes.io/instance": NAME,
            "app.kubernetes.io/managed-by": "gatewaypool-operator",
            "app.kubernetes.io/component": component,
        }
        assert "ownerReferences" not in metadata  # kopf.adopt adds it at the edge
        assert set(metadata) == {"name", "namespace", "labels"}  # no server fields


def test_labels_refuse_an_unknown_component() -> None:
    with pytest.raises(ValueError, match="gatway"):
        labels(NAME, "gatway")
    with pytest.raises(ValueError):
        selector_labels(NAME, "operator")


def test_selector_string_is_the_contracts() -> None:
    assert selector_string(NAME) == (
        "app.kubernetes.io/instance=ct-triage,app.kubernetes.io/component=gateway"
    )


def test_selector_string_selects_the_gateway_pods() -> None:
    pod_labels = build()[("StatefulSet", "ct-triage-gw")]["spec"]["template"]["metadata"]["labels"]
    selector = dict(term.split("=") for term in selector_string(NAME).split(","))
    assert matches(selector, pod_labels)


# --- selectors ---------------------------------------------------------------


def test_workload_selectors_match_their_pod_templates(children: dict[tuple[str, str], Any]) -> None:
    statefulset = children[("StatefulSet", "ct-triage-gw")]
    deployment = children[("Deployment", "ct-triage-router")]
    gateway_pod = statefulset["spec"]["template"]["metadata"]["labels"]
    router_pod = deployment["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"] == {"matchLabels": selector_labels(NAME, "gateway")}
    assert deployment["spec"]["selector"] == {"matchLabels": selector_labels(NAME, "router")}
    assert matches(statefulset["spec"]["selector"]["matchLabels"], gateway_pod)
    assert matches(deployment["spec"]["selector"]["matchLabels"], router_pod)
    # ... and never each other's pods
    assert not matches(statefulset["spec"]["selector"]["matchLabels"], router_pod)
    assert not matches(deployment["spec"]["selector"]["matchLabels"], gateway_pod)
    assert matches(children[("Service", "ct-triage-gw")]["spec"]["selector"], gateway_pod)
    assert matches(children[("Service", "ct-triage-router")]["spec"]["selector"], router_pod)
    for kind in ("NetworkPolicy", "PodDisruptionBudget"):
        obj = children[(kind, "ct-triage-gw")]
        selector = obj["spec"].get("podSelector") or obj["spec"]["selector"]
        assert matches(selector["matchLabels"], gateway_pod)
        assert not matches(selector["matchLabels"], router_pod)


def test_pools_do_not_select_each_others_pods() -> None:
    ours = build()[("StatefulSet", "ct-triage-gw")]
    other = build_children(
        name="mr-triage",
        namespace=NAMESPACE,
        spec=parse(MINIMAL),
        map_data=None,
        gateway_replicas=1,
    )
    other_pod = next(obj for obj in other if obj["kind"] == "StatefulSet")["spec"]["template"]
    assert not matches(ours["spec"]["selector"]["matchLabels"], other_pod["metadata"]["labels"])


def test_user_pod_labels_and_annotations_reach_only_the_gateway_pods() -> None:
    children = build(FULL)
    template = children[("StatefulSet", "ct-triage-gw")]["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "radiology"
    assert template["annotations"] == {"example.org/note": "free text"}
    router_template = children[("Deployment", "ct-triage-router")]["spec"]["template"]["metadata"]
    assert "team" not in router_template["labels"]


def test_no_spec_hash_or_other_annotation_forces_restarts() -> None:
    for raw in SPECS.values():
        for obj in build(raw).values():
            for value in walk(obj):
                assert not (isinstance(value, str) and "spec-hash" in value)
    minimal = build(MINIMAL)
    for kind, name in (("StatefulSet", "ct-triage-gw"), ("Deployment", "ct-triage-router")):
        assert "annotations" not in minimal[(kind, name)]["spec"]["template"]["metadata"]


# --- gateways ----------------------------------------------------------------


def test_statefulset_replicas_come_from_the_caller() -> None:
    """While scaling down, leaving pods stay until their buckets moved."""
    statefulset = build(MINIMAL, gateway_replicas=5)[("StatefulSet", "ct-triage-gw")]
    assert statefulset["spec"]["replicas"] == 5
    with pytest.raises(ValueError, match="gateway_replicas"):
        build(MINIMAL, gateway_replicas=-1)


def test_gateway_readiness_is_a_tcp_probe_on_the_dicom_port(
    children: dict[tuple[str, str], Any],
) -> None:
    statefulset = children[("StatefulSet", "ct-triage-gw")]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["tcpSocket"] == {"port": "dicom"}
    assert "dicom" in {port["name"] for port in container["ports"]}


def test_headless_service(children: dict[tuple[str, str], Any]) -> None:
    service = children[("Service", "ct-triage-gw")]
    statefulset = children[("StatefulSet", "ct-triage-gw")]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    spec = service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    (port,) = spec["ports"]
    assert port["name"] == "dicom"
    assert port["port"] == container["ports"][0]["containerPort"]
    assert port["targetPort"] == "dicom"
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]


def test_gateway_dns_names() -> None:
    assert gateway_dns_name(NAME, NAMESPACE, 0) == (
        "ct-triage-gw-0.ct-triage-gw.radiology.svc.cluster.local"
    )
    assert gateway_dns_name("p", "ns", 1023) == "p-gw-1023.p-gw.ns.svc.cluster.local"


def test_dns_name_is_pod_name_dot_service_name() -> None:
    children = build()
    statefulset = children[("StatefulSet", "ct-triage-gw")]
    service = children[("Service", "ct-triage-gw")]
    for ordinal in range(3):
        pod = f"{statefulset['metadata']['name']}-{ordinal}"
        assert gateway_dns_name(NAME, NAMESPACE, ordinal) == (
            f"{pod}.{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
        )


def test_the_longest_pool_name_gives_valid_names_and_labels() -> None:
    name = "p" * MAX_NAME_LENGTH
    children = build_children(
        name=name,
        namespace=NAMESPACE,
        spec=parse(MINIMAL),
        map_data=None,
        gateway_replicas=1024,
    )
    for obj in children:
        assert len(obj["metadata"]["name"]) <= 63
    # pod name of the highest ordinal, and the StatefulSet's revision label
    assert len(f"{name}-gw-1023") <= 63
    assert len(f"{name}-gw-") + 10 <= 63
    for label in gateway_dns_name(name, NAMESPACE, 1023).split("."):
        assert len(label) <= 63


# --- network policy and disruption budget -------------------------------------


def test_network_policy_lets_only_this_pools_routers_reach_gateways(
    children: dict[tuple[str, str], Any],
) -> None:
    policy = children[("NetworkPolicy", "ct-triage-gw")]["spec"]
    statefulset = children[("StatefulSet", "ct-triage-gw")]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    port = container["ports"][0]["containerPort"]
    router_pod = children[("Deployment", "ct-triage-router")]["spec"]["template"]["metadata"]
    assert policy["podSelector"] == {"matchLabels": selector_labels(NAME, "gateway")}
    assert policy["policyTypes"] == ["Ingress"]  # anything not allowed below is denied
    rule = policy["ingress"][0]  # then spec.networkPolicy.extraIngress, if any
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}  # no namespaceSelector, no ipBlock: this namespace only
    assert peer["podSelector"] == {"matchLabels": selector_labels(NAME, "router")}
    assert matches(peer["podSelector"]["matchLabels"], router_pod["labels"])
    assert not matches(
        peer["podSelector"]["matchLabels"],
        statefulset["spec"]["template"]["metadata"]["labels"],
    )
    assert rule["ports"] == [{"protocol": "TCP", "port": port}]


def test_routers_policy_opens_the_dicom_and_http_ports_to_anyone(
    children: dict[tuple[str, str], Any],
) -> None:
    policy = children[("NetworkPolicy", "ct-triage-router")]["spec"]
    assert policy["podSelector"] == {"matchLabels": selector_labels(NAME, "router")}
    (rule,) = policy["ingress"]
    assert "from" not in rule
    assert rule["ports"] == [{"protocol": "TCP", "port": 11112}, {"protocol": "TCP", "port": 8080}]


def test_network_policies_can_be_turned_off() -> None:
    built = build({**MINIMAL, "networkPolicy": {"enabled": False}})
    assert not [key for key in built if key[0] == "NetworkPolicy"]


def test_an_empty_spread_list_means_no_constraints() -> None:
    raw = copy.deepcopy(MINIMAL)
    raw["gateway"]["podTemplate"] = {"topologySpreadConstraints": []}
    raw["router"] = {"topologySpreadConstraints": []}
    built = build(raw)
    for key in (("StatefulSet", "ct-triage-gw"), ("Deployment", "ct-triage-router")):
        assert "topologySpreadConstraints" not in built[key]["spec"]["template"]["spec"]


# --- security -----------------------------------------------------------------


def test_every_pod_and_container_is_locked_down(children: dict[tuple[str, str], Any]) -> None:
    pods = list(pod_specs(children))
    assert len(pods) == 2
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    for container in containers(children):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "privileged" not in context
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_router_runs_as_the_images_nonroot_user(children: dict[tuple[str, str], Any]) -> None:
    pod = children[("Deployment", "ct-triage-router")]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["runAsGroup"] == 65532


def test_gateway_user_is_left_to_the_image(children: dict[tuple[str, str], Any]) -> None:
    pod = children[("StatefulSet", "ct-triage-gw")]["spec"]["template"]["spec"]
    assert "runAsUser" not in pod["securityContext"]
    (container,) = pod["containers"]
    assert "runAsUser" not in container["securityContext"]


def test_role_is_least_privilege(children: dict[tuple[str, str], Any]) -> None:
    role = children[("Role", "ct-triage-router")]
    assert role["apiVersion"] == "rbac.authorization.k8s.io/v1"
    grants: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""]
        assert rule["resources"] == ["configmaps"]
        assert "*" not in rule["verbs"]
        assert rule["resourceNames"], "a rule without resourceNames covers every ConfigMap"
        for name in rule["resourceNames"]:
            grants.setdefault(name, set()).update(rule["verbs"])
    assert grants == {
        "ct-triage-map": {"list", "watch"},
        "ct-triage-routers": {"patch"},
    }
    assert not any(isinstance(v, str) and "*" in v for v in walk(role["rules"]))


def test_router_identity_is_bound_to_the_role(children: dict[tuple[str, str], Any]) -> None:
    binding = children[("RoleBinding", "ct-triage-router")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "ct-triage-router",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "ct-triage-router", "namespace": NAMESPACE}
    ]
    pod = children[("Deployment", "ct-triage-router")]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ct-triage-router"
    assert ("ServiceAccount", "ct-triage-router") in children


# --- router ----------------------------------------------------------------------


def router_container(children: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    deployment = children[("Deployment", "ct-triage-router")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def test_router_command_carries_what_the_gateways_accept() -> None:
    # Set in the pool's spec, the lists replace the routers' probes; in order.
    spec = {
        **FULL,
        "gateway": {
            **FULL["gateway"],
            "acceptedTransferSyntaxes": ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"],
            "sopClasses": ["1.2.840.10008.5.1.4.1.1.2", "1.3.12.2.1107.5.9.1"],
        },
    }
    command = router_container(build(spec))["command"]
    given = [
        (arg, command[i + 1])
        for i, arg in enumerate(command)
        if arg in ("--accepted-transfer-syntax", "--sop-class")
    ]
    assert given == [
        ("--accepted-transfer-syntax", "1.2.840.10008.1.2"),
        ("--accepted-transfer-syntax", "1.2.840.10008.1.2.1"),
        ("--sop-class", "1.2.840.10008.5.1.4.1.1.2"),
        ("--sop-class", "1.3.12.2.1107.5.9.1"),
    ]
    # Not set: no option, the routers probe.
    plain = router_container(build(FULL))["command"]
    assert "--accepted-transfer-syntax" not in plain
    assert "--sop-class" not in plain


@pytest.mark.parametrize(
    ("cpu", "workers"),
    [("1", "1"), ("2", "2"), ("1500m", "2"), ("250m", "1"), (3, "3"), ("2.5", "3"), ("4000m", "4")],
)
def test_router_runs_a_worker_per_requested_core(cpu: str | int, workers: str) -> None:
    raw = {**MINIMAL, "router": {"resources": {"requests": {"cpu": cpu}}}}
    command = router_container(build(raw))["command"]
    assert command[-2:] == ["--workers", workers]
    assert command.count("--workers") == 1


def test_router_without_a_cpu_request_counts_its_own_cpus() -> None:
    # No flag: the router reads its cgroup quota (set by a CPU limit) itself.
    raw = {**MINIMAL, "router": {"resources": {"limits": {"cpu": "2"}}}}
    assert "--workers" not in router_container(build(raw))["command"]
    assert "--workers" not in router_container(build(FULL))["command"]


def test_the_routers_liveness_waits_for_a_slow_start(children: dict[tuple[str, str], Any]) -> None:
    # Liveness waits for a startup probe that gives a slow start minutes, not 30 s.
    container = router_container(children)
    startup = container["startupProbe"]
    assert startup["httpGet"] == container["livenessProbe"]["httpGet"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


# --- bucket map -------------------------------------------------------------------


def test_map_configmap_without_a_map_is_empty() -> None:
    configmap = build(MINIMAL, map_data=None)[("ConfigMap", "ct-triage-map")]
    assert configmap["data"] == {}


# --- ownership and purity ------------------------------------------------------------


def test_owner_reference() -> None:
    pool = {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "metadata": {"name": NAME, "namespace": NAMESPACE, "uid": "1234-abcd"},
    }
    assert owner_reference(pool) == {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "name": NAME,
        "uid": "1234-abcd",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    bare = {"metadata": {"name": NAME, "uid": "u"}}
    assert owner_reference(bare)["apiVersion"] == "gatewaypool.io/v1alpha1"
    assert owner_reference(bare)["kind"] == "GatewayPool"


@pytest.mark.parametrize("metadata", [{}, {"name": NAME}, {"name": NAME, "uid": ""}, {"uid": "u"}])
def test_owner_reference_needs_name_and_uid(metadata: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="uid"):
        owner_reference({"metadata": metadata})


def test_children_are_fresh_data_each_time() -> None:
    spec = parse(FULL)

    def make() -> list[dict[str, Any]]:
        return build_children(
            name=NAME,
            namespace=NAMESPACE,
            spec=spec,
            map_data={"map.json": MAP_JSON},
            gateway_replicas=4,
        )

    first = make()
    pristine = copy.deepcopy(first)
    for obj in first:  # an applier that edits what it got must not change the next result
        for value in walk(obj):
            if isinstance(value, dict):
                value["poisoned"] = True
            elif isinstance(value, list):
                value.append("poisoned")
    assert make() == pristine
    assert json.loads(json.dumps(pristine)) == pristine  # plain JSON types only


# --- validity against the real Kubernetes schemas --------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(SPECS))
def test_every_child_passes_strict_kubernetes_validation(variant: str, version: str) -> None:
    objects = [
        *build(SPECS[variant]).values(),
        *build(SPECS[variant], map_data=None).values(),
        routers_configmap(name=NAME, namespace=NAMESPACE),
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_is_not_vacuous() -> None:
    statefulset = copy.deepcopy(build()[("StatefulSet", "ct-triage-gw")])
    statefulset["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_VERSIONS[0], strict=True)


def test_scale_down_settings_reach_the_statefulset() -> None:
    spec = parse_spec(
        {
            "gateway": {
                "image": "gw:1",
                "terminationGracePeriodSeconds": 90,
                "storage": {"size": "5Gi", "whenScaled": "Delete"},
            }
        },
        default_router_image="op:1",
    )
    [sts] = [
        obj
        for obj in build_children(
            name="ct", namespace="ns", spec=spec, map_data=None, gateway_replicas=2
        )
        if obj["kind"] == "StatefulSet"
    ]
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenScaled": "Delete",
        "whenDeleted": "Retain",
    }
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90


# --- the HorizontalPodAutoscaler -------------------------------------------------------

TARGETS: dict[str, dict[str, int]] = {
    "cpu": {"cpuUtilization": 70},
    "studies": {"studiesInFlight": 4},
    "both": {"cpuUtilization": 70, "studiesInFlight": 4},
}
SCALE_DOWNS: dict[str, dict[str, int] | None] = {
    "default": None,
    "set": {"stabilizationSeconds": 900, "periodSeconds": 120},
}


def autoscaled(
    targets: Mapping[str, int],
    scale_down: Mapping[str, int] | None = None,
    *,
    max_drain: int = 600,
) -> dict[str, Any]:
    autoscaling: dict[str, Any] = {"minReplicas": 2, "maxReplicas": 8, "targets": dict(targets)}
    if scale_down is not None:
        autoscaling["scaleDown"] = dict(scale_down)
    return {
        "gateway": {
            "image": "registry.example.org/ai-triage:2.1",
            "resources": {"requests": {"cpu": "1"}},
        },
        "handover": {"quietSeconds": 30, "maxDrainSeconds": max_drain},
        "autoscaling": autoscaling,
    }


def autoscaler(raw: Mapping[str, Any]) -> dict[str, Any]:
    hpa: dict[str, Any] = build(raw)[("HorizontalPodAutoscaler", NAME)]
    return hpa


@pytest.mark.parametrize("targets", sorted(TARGETS))
def test_the_autoscaler_measures_only_the_targets_that_are_set(targets: str) -> None:
    metrics = autoscaler(autoscaled(TARGETS[targets]))["spec"]["metrics"]
    kinds = [metric["type"] for metric in metrics]
    assert (
        kinds == {"cpu": ["Resource"], "studies": ["Pods"], "both": ["Resource", "Pods"]}[targets]
    )


@pytest.mark.parametrize(
    ("max_drain", "scale_down", "window", "period"),
    [
        (600, None, 600, 60),
        (120, None, 300, 60),
        (3600, None, 3600, 60),
        (600, {"stabilizationSeconds": 900, "periodSeconds": 120}, 900, 120),
        (600, {"periodSeconds": 1}, 600, 1),
    ],
)
def test_the_autoscalers_scale_down_waits_for_a_drain(
    max_drain: int, scale_down: dict[str, int] | None, window: int, period: int
) -> None:
    behavior = autoscaler(autoscaled(TARGETS["studies"], scale_down, max_drain=max_drain))
    down = behavior["spec"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] == window
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": period}]


def test_without_autoscaling_there_is_no_autoscaler_and_it_is_optional() -> None:
    assert not [key for key in build(MINIMAL) if key[0] == "HorizontalPodAutoscaler"]
    # Optional: a pool whose spec drops autoscaling gets its autoscaler deleted.
    assert ("HorizontalPodAutoscaler", NAME) in optional_children(NAME)
    assert ("HorizontalPodAutoscaler", NAME) in build(FULL)


def test_the_autoscaler_never_scales_the_statefulset_itself() -> None:
    # It scales the pool; the operator moves buckets before the StatefulSet follows.
    children = build(FULL)
    target = children[("HorizontalPodAutoscaler", NAME)]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("GatewayPool", NAME)
    assert children[("StatefulSet", "ct-triage-gw")]["spec"]["replicas"] == 4


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("scale_down", sorted(SCALE_DOWNS))
@pytest.mark.parametrize("targets", sorted(TARGETS))
def test_the_autoscaler_passes_strict_kubernetes_validation(
    targets: str, scale_down: str, version: str
) -> None:
    hpa = autoscaler(autoscaled(TARGETS[targets], SCALE_DOWNS[scale_down]))
    kubernetes_validate.validate(hpa, version, strict=True)


def test_strict_validation_of_the_autoscaler_is_not_vacuous() -> None:
    hpa = copy.deepcopy(autoscaler(autoscaled(TARGETS["studies"])))
    hpa["spec"]["metrics"][0]["pods"]["target"]["averageValues"] = "4"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, K8S_VERSIONS[0], strict=True)


# --- DICOM TLS ----------------------------------------------------------------------

CT01_SUBJECT = "CN=ct01.radiology.example.org,O=Example Hospital"
TLS_SPECS: dict[str, dict[str, Any]] = {
    "plain-and-tls": {**MINIMAL, "router": {"tls": {"secretName": "router-tls"}}},
    "tls-only": {
        **MINIMAL,
        "router": {"plainPort": False, "tls": {"secretName": "router-tls", "port": 11112}},
    },
    "mtls": {
        **MINIMAL,
        "router": {
            "allowedCallingAETitles": ["CT01", "MR1"],
            "tls": {
                "secretName": "router-tls",
                "clientCASecretName": "modality-ca",
                "callerSubjects": [
                    {"aeTitle": "CT01", "subject": CT01_SUBJECT},
                    {"aeTitle": "MR1", "subject": "CN=mr1,O=Example Hospital"},
                ],
            },
        },
    },
    "gateway-tls": {**MINIMAL, "gateway": {**MINIMAL["gateway"], "tls": {"caSecretName": "gw-ca"}}},
    "gateway-mtls": {
        **MINIMAL,
        "gateway": {
            **MINIMAL["gateway"],
            "tls": {"caSecretName": "gw-ca", "clientCertSecretName": "router-to-gw"},
        },
    },
    "gateway-serves-mounted-cert": {
        **MINIMAL,
        "gateway": {
            **MINIMAL["gateway"],
            "tls": {"caSecretName": "gw-ca", "serverCertSecretName": "gw-serving"},
        },
    },
    "everything": {
        **FULL,
        "router": {
            **FULL["router"],
            "allowedCallingAETitles": ["CT1", "MR ROOM 2"],
            "plainPort": False,
            "tls": {
                "secretName": "router-tls",
                "clientCASecretName": "modality-ca",
                "callerSubjects": [{"aeTitle": "CT1", "subject": CT01_SUBJECT}],
            },
        },
        "gateway": {
            **FULL["gateway"],
            "tls": {
                "caSecretName": "gw-ca",
                "clientCertSecretName": "router-to-gw",
                "serverCertSecretName": "gw-serving",
            },
        },
    },
}
TLS = "/etc/gatewaypool/tls"


def router_pod(children: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    pod: dict[str, Any] = children[("Deployment", "ct-triage-router")]["spec"]["template"]["spec"]
    return pod


def option(command: list[str], name: str) -> str | None:
    return command[command.index(name) + 1] if name in command else None


def test_without_tls_nothing_of_it_is_rendered() -> None:
    children = build(MINIMAL)
    command = router_container(children)["command"]
    assert not [arg for arg in command if "tls" in arg or arg == "--caller-subject"]
    assert "fsGroup" not in router_pod(children)["securityContext"]
    assert [volume["name"] for volume in router_pod(children)["volumes"]] == ["tmp"]


def test_tls_only_has_no_plain_port_anywhere() -> None:
    children = build(TLS_SPECS["tls-only"])
    container = router_container(children)
    assert [port["name"] for port in container["ports"]] == ["dicom-tls", "http"]
    command = container["command"]
    assert "--no-plain-port" in command
    assert "--port" not in command
    # The Service's TLS port is the spec's; the container's stays 2762.
    assert option(command, "--tls-port") == "2762"
    assert children[("Service", "ct-triage-router")]["spec"]["ports"] == [
        {"name": "dicom-tls", "port": 11112, "targetPort": "dicom-tls", "protocol": "TCP"}
    ]
    (rule,) = children[("NetworkPolicy", "ct-triage-router")]["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 2762}, {"protocol": "TCP", "port": 8080}]


def test_probes_stay_on_the_http_port_whatever_the_dicom_ports() -> None:
    for spec in TLS_SPECS.values():
        container = router_container(build(spec))
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


@pytest.mark.parametrize(("variant", "client"), [("gateway-tls", False), ("gateway-mtls", True)])
def test_gateway_tls_options(variant: str, client: bool) -> None:
    children = build(TLS_SPECS[variant])
    command = router_container(children)["command"]
    assert option(command, "--gateway-tls-ca") == f"{TLS}/gateway-ca/ca.crt"
    if client:
        assert option(command, "--gateway-tls-cert") == f"{TLS}/gateway-client/tls.crt"
        assert option(command, "--gateway-tls-key") == f"{TLS}/gateway-client/tls.key"
    else:
        assert "--gateway-tls-cert" not in command
        assert "--gateway-tls-key" not in command
    # No inbound TLS: the router's own ports are as before.
    assert "--tls-cert" not in command
    assert [p["name"] for p in router_container(children)["ports"]] == ["dicom", "http"]


@pytest.mark.parametrize("variant", sorted(TLS_SPECS))
def test_secrets_are_mounted_read_only_with_only_the_keys_used(variant: str) -> None:
    pod = router_pod(build(TLS_SPECS[variant]))
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    (container,) = pod["containers"]
    for mount in container["volumeMounts"]:
        assert "subPath" not in mount  # a subPath mount never sees a rotated Secret
        if "secret" in volumes[mount["name"]]:
            assert mount["readOnly"] is True
            assert mount["mountPath"].startswith(f"{TLS}/")
    # Every file the command names is in a mounted folder, from a projected key, and
    # no key is projected that the command does not name.
    files = {
        f"{mount['mountPath']}/{item['path']}"
        for mount in container["volumeMounts"]
        for item in volumes[mount["name"]].get("secret", {}).get("items", [])
    }
    named = {arg for arg in container["command"] if arg.startswith(TLS)}
    assert named == files


def secret_volume(name: str, secret: str, *keys: str) -> dict[str, Any]:
    return {
        "name": name,
        "secret": {
            "secretName": secret,
            "items": [{"key": key, "path": key} for key in keys],
            "defaultMode": 0o440,
        },
    }


def test_the_router_user_can_read_the_secret_files_and_nobody_else() -> None:
    # Secret files are root's, mode 0440; the kubelet gives them the pod's fsGroup,
    # which is the group the router runs as.
    for variant, spec in TLS_SPECS.items():
        security = router_pod(build(spec))["securityContext"]
        assert security["fsGroup"] == security["runAsGroup"] == 65532, variant
        assert security["runAsUser"] == 65532
        for volume in router_pod(build(spec))["volumes"]:
            if "secret" in volume:
                assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
                assert volume["secret"]["defaultMode"] & 0o040  # group-readable


def test_gateways_are_untouched_by_tls_without_a_server_certificate() -> None:
    # How a gateway image serves TLS is its own business unless the spec names its certificate.
    plain = build(MINIMAL)
    for variant in ("plain-and-tls", "mtls", "gateway-tls", "gateway-mtls"):
        secure = build(TLS_SPECS[variant])
        for key in (("StatefulSet", "ct-triage-gw"), ("Service", "ct-triage-gw")):
            assert secure[key] == plain[key], (variant, key)


def gateway_pod(children: Mapping[tuple[str, str], Any]) -> dict[str, Any]:
    pod: dict[str, Any] = children[("StatefulSet", "ct-triage-gw")]["spec"]["template"]["spec"]
    return pod


def test_gateways_mount_the_certificate_they_serve() -> None:
    children = build(TLS_SPECS["gateway-serves-mounted-cert"])
    pod = gateway_pod(children)
    assert pod["volumes"] == [
        {"name": "tmp", "emptyDir": {}},
        secret_volume("tls-server", "gw-serving", "tls.crt", "tls.key"),
    ]
    (container,) = pod["containers"]
    assert container["volumeMounts"] == [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "tls-server", "mountPath": f"{TLS}/server", "readOnly": True},
    ]
    # Root's files, mode 0440: the fsGroup lets any non-root gateway user read them.
    assert pod["securityContext"]["fsGroup"] == 65532
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The routers mount only what they use: the CA, not the gateways' key.
    assert [v["name"] for v in router_pod(children)["volumes"]] == ["tmp", "gateway-tls-ca"]
    # Nothing else of the gateways changes.
    plain = gateway_pod(build(MINIMAL))
    for key in set(pod) - {"volumes", "containers", "securityContext"}:
        assert pod[key] == plain[key], key


def test_the_server_certificate_mounts_beside_the_gateways_storage() -> None:
    pod = gateway_pod(build(TLS_SPECS["everything"]))
    (container,) = pod["containers"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["tls-server"] == f"{TLS}/server"
    assert "data" in mounts and mounts["data"] != mounts["tls-server"]
    assert pod["securityContext"]["fsGroup"] == 65532


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("variant", sorted(TLS_SPECS))
def test_tls_children_pass_strict_kubernetes_validation(variant: str, version: str) -> None:
    children = build(TLS_SPECS[variant])
    for key in (
        ("Deployment", "ct-triage-router"),
        ("Service", "ct-triage-router"),
        ("NetworkPolicy", "ct-triage-router"),
        ("StatefulSet", "ct-triage-gw"),
    ):
        kubernetes_validate.validate(children[key], version, strict=True)


def test_strict_validation_of_a_secret_volume_is_not_vacuous() -> None:
    deployment = copy.deepcopy(build(TLS_SPECS["mtls"])[("Deployment", "ct-triage-router")])
    deployment["spec"]["template"]["spec"]["volumes"][1]["secret"]["secretNme"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def router_accepts(command: list[str]) -> Any:
    """The router's own command line parser and configuration model, given `command`."""
    from gatewaypool.cli import build_parser
    from gatewaypool_router.cli import config_from_args

    assert command[:2] == ["gatewaypool", "router"]
    return config_from_args(build_parser().parse_args(command[1:]))


@pytest.mark.parametrize("variant", sorted(SPECS))
def test_the_router_accepts_the_command_it_is_given(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "ct-triage-router-0")  # the Deployment's env sets it
    config = router_accepts(router_container(build(SPECS[variant]))["command"])
    assert config.ae_title == parse(SPECS[variant]).router.ae_title
    assert config.port == 11112


def test_the_pools_timeouts_reach_the_router_and_unset_ones_keep_its_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dataclasses

    from gatewaypool_router.config import RouterConfig

    monkeypatch.setenv("POD_NAME", "ct-triage-router-0")
    defaults = {field.name: field.default for field in dataclasses.fields(RouterConfig)}
    untouched = router_accepts(router_container(build(specs.minimal()))["command"])
    waits = ("gateway_timeout", "connect_timeout", "acse_timeout", "idle_timeout")
    waits += ("gateway_idle_release", "stall_warning")
    assert [getattr(untouched, name) for name in waits] == [defaults[name] for name in waits]
    spec = specs.minimal()
    spec["router"] = {
        "timeouts": {
            "gatewaySeconds": 120,
            "connectSeconds": 2,
            "associationRequestSeconds": 15,
            "senderIdleSeconds": 3600,
            "gatewayIdleReleaseSeconds": 4,
            "stallWarningSeconds": 30,
        }
    }
    config = router_accepts(router_container(build(spec))["command"])
    assert [getattr(config, name) for name in waits] == [120, 2, 15, 3600, 4, 30]


@pytest.mark.parametrize("variant", sorted(TLS_SPECS))
def test_the_router_accepts_the_tls_command_it_is_given(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAME", "ct-triage-router-0")
    spec = parse(TLS_SPECS[variant])
    config = router_accepts(router_container(build(TLS_SPECS[variant]))["command"])
    assert config.plain_port is spec.router.plain_port
    if spec.router.tls is not None:
        assert str(config.tls_cert) == f"{TLS}/server/tls.crt"
        assert str(config.tls_key) == f"{TLS}/server/tls.key"
        assert config.tls_port == 2762
        assert len(config.caller_subjects) == len(spec.router.tls.caller_subjects)
    else:
        assert config.tls_cert is None
    if spec.gateway.tls is not None:
        assert str(config.gateway_tls_ca) == f"{TLS}/gateway-ca/ca.crt"
        assert (config.gateway_tls_cert is None) is (
            spec.gateway.tls.client_cert_secret_name is None
        )
