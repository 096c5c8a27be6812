"""The Helm chart, rendered by the real Helm engine, and the Dockerfile.

There is no cluster here, so each job of one is done by a stand-in:

- ``helm-python-sdk`` is Helm v4 itself: ``Chart.render`` is ``helm template``
  (it enforces ``values.schema.json``), ``helm_python.lint`` is ``helm lint``;
- ``kubernetes-validate --strict`` checks every rendered built-in object
  against the real OpenAPI schemas of Kubernetes;
- ``jsonschema`` checks the example GatewayPool against the CRD's
  ``openAPIV3Schema``.

``EXPECTED_OPERATOR_RULES`` is the operator's RBAC, declared once: the chart
must grant exactly that, and the operator's own code must need no more.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from gatewaypool_operator import cli
from gatewaypool_operator.children.desired import build_children, routers_configmap
from gatewaypool_operator.kubeapply import OWNED_KINDS
from gatewaypool_operator.spec.parse import parse_spec
from support import chart as helm_chart
from support.chart import CHART, objects_in

ROOT = Path(__file__).resolve().parents[3]
CRD_FILE = "gatewaypool.io_gatewaypools.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

RELEASE = "gwp"
RELEASE_NAMESPACE = "gatewaypool-system"
FULLNAME = "gwp-gatewaypool"
KUBERNETES_VERSION = kubernetes_validate.latest_version()

Rules = dict[tuple[str, str], frozenset[str]]

#: What the operator may do in every namespace it manages pools in, as
#: (API group, resource) -> verbs. rbac.scope cluster grants it cluster-wide,
#: rbac.scope namespaces in each watched namespace.
EXPECTED_OPERATOR_RULES: Rules = {
    # kopf lists and watches the pools, patches their annotations and status;
    # each reconcile pass reads its pool afresh under the pool's lock.
    ("gatewaypool.io", "gatewaypools"): frozenset({"get", "list", "watch", "patch"}),
    ("gatewaypool.io", "gatewaypools/status"): frozenset({"patch"}),
    # blockOwnerDeletion on the children's ownerReferences (admission plugin
    # OwnerReferencesPermissionEnforcement).
    ("gatewaypool.io", "gatewaypools/finalizers"): frozenset({"update"}),
    # What a pool owns: read, create, repair. The API server's garbage
    # collector deletes it with the pool. "list" and "watch" on ConfigMaps: the
    # routers' Role grants them, and RBAC lets the operator grant only what it holds.
    ("", "configmaps"): frozenset({"get", "list", "watch", "create", "patch"}),
    # The routers' headless Service NAME-router-pods goes with spec.router.spool.
    ("", "services"): frozenset({"get", "create", "patch", "delete"}),
    ("", "serviceaccounts"): frozenset({"get", "create", "patch"}),
    # Deleted with propagationPolicy Orphan and created again to change an
    # immutable field (spec.gateway.storage): pods and volumes stay. The
    # routers are a Deployment, or a StatefulSet with spec.router.spool: the
    # kind the spec no longer asks for is deleted once the other is ready.
    ("apps", "statefulsets"): frozenset({"get", "create", "patch", "delete"}),
    ("apps", "deployments"): frozenset({"get", "create", "patch", "delete"}),
    ("rbac.authorization.k8s.io", "roles"): frozenset({"get", "create", "patch"}),
    ("rbac.authorization.k8s.io", "rolebindings"): frozenset({"get", "create", "patch"}),
    # Deleted when spec.networkPolicy.enabled is false.
    ("networking.k8s.io", "networkpolicies"): frozenset({"get", "create", "patch", "delete"}),
    ("policy", "poddisruptionbudgets"): frozenset({"get", "create", "patch"}),
    # The autoscaler of a pool with spec.autoscaling: read (its status says
    # whether it can scale), created, repaired, deleted when the field goes.
    ("autoscaling", "horizontalpodautoscalers"): frozenset({"get", "create", "patch", "delete"}),
    # Gateway pods (Ready ones receive buckets) and router pods (whose reports
    # a handover waits for, and status.routersTotal).
    ("", "pods"): frozenset({"list"}),
    # The routers' spool claims that no router mounts (status.spool.idleClaims).
    ("", "persistentvolumeclaims"): frozenset({"list"}),
    # kopf posts core/v1 Events (never patches them); so does the operator.
    ("", "events"): frozenset({"create"}),
}

#: Cluster-scoped, always: kopf lists and watches CRDs to find its resource.
EXPECTED_CLUSTER_RULES: Rules = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): frozenset({"list", "watch"}),
}

#: Cluster-scoped, when the operator watches given namespaces: kopf lists and
#: watches namespaces to notice one created later.
EXPECTED_NAMESPACE_SCAN_RULES: Rules = {
    ("", "namespaces"): frozenset({"list", "watch"}),
}

# Value sets every test below renders.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "namespaced": {"rbac": {"scope": "namespaces"}, "watchNamespaces": ["radiology", "cardiology"]},
    "templated-crds": {"crds": {"templated": True}},
    "peering": {"operator": {"peering": {"enabled": True, "replicas": 3}}},
    "templated-crds-not-kept": {"crds": {"templated": True, "keep": False}},
    "templated-crds-peering": {
        "crds": {"templated": True},
        "operator": {"peering": {"enabled": True, "replicas": 2}},
        "rbac": {"scope": "namespaces"},
        "watchNamespaces": ["radiology", "cardiology"],
    },
    "extras": {
        "examplePool": {"enabled": True},
        "podMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "DICOM"}},
    },
    "extras-namespaced": {
        "rbac": {"scope": "namespaces"},
        "watchNamespaces": ["radiology"],
        "examplePool": {"enabled": True, "namespace": "radiology", "name": "ct-triage"},
        "podMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "10s"},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    },
    "autoscaling": {
        "podMonitor": {"enabled": True},
        "autoscaling": {
            "prometheusAdapter": {
                "rules": {"enabled": True, "namespace": "monitoring", "rateWindow": "1m"}
            },
            "keda": {
                "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
                "scaledObjects": [
                    {
                        "pool": "ct-triage",
                        "namespace": "radiology",
                        "maxReplicas": 8,
                        "studiesInFlight": 4,
                    },
                    {
                        "pool": "archive",
                        "minReplicas": 2,
                        "maxReplicas": 6,
                        "studiesInFlight": 10,
                        "scaleDown": {"stabilizationSeconds": 900, "periodSeconds": 120},
                    },
                ],
            },
        },
    },
    "custom": {
        "fullnameOverride": "dicom-operator",
        "clusterDomain": "hospital.internal",
        "image": {
            "repository": "registry.internal:5000/radiology/gatewaypool",
            "digest": "sha256:" + "ab" * 32,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "regcred"}],
        "watchNamespaces": ["radiology"],
        "operator": {
            "logLevel": "debug",
            "logFormat": "text",
            "resyncSeconds": 12.5,
            "resources": {
                "requests": {"cpu": "200m", "memory": "256Mi"},
                "limits": {"cpu": 1, "memory": "1Gi"},
            },
            "podLabels": {"team": "radiology-it"},
            "podAnnotations": {"example.org/owner": "pacs-team"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dicom", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "system-cluster-critical",
        },
        "serviceAccount": {"name": "dicom-operator-sa", "annotations": {"a": "b"}},
    },
}


def _scaled_object(**fields: Any) -> dict[str, Any]:
    """An autoscaling.keda.scaledObjects entry; a field set to None is left out."""
    entry: dict[str, Any] = {"pool": "ct-triage", "maxReplicas": 4, "studiesInFlight": 4}
    entry.update(fields)
    return {key: value for key, value in entry.items() if value is not None}


# Bad values: the schema must refuse each one, naming the key.
BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    "typo at the top": ({"watchNamespace": ["radiology"]}, "watchNamespace"),
    "typo inside": ({"image": {"repositry": "x/y"}}, "repositry"),
    "typo in operator": ({"operator": {"logformat": "text"}}, "logformat"),
    "string for a number": ({"operator": {"resyncSeconds": "30"}}, "resyncSeconds"),
    "zero resync": ({"operator": {"resyncSeconds": 0}}, "resyncSeconds"),
    "string for a boolean": ({"podMonitor": {"enabled": "yes"}}, "enabled"),
    "bad scope": ({"rbac": {"scope": "namespace"}}, "scope"),
    "bad log format": ({"operator": {"logFormat": "xml"}}, "logFormat"),
    "bad pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    "namespaces without namespaces": ({"rbac": {"scope": "namespaces"}}, "watchNamespaces"),
    "bad namespace name": ({"watchNamespaces": ["Radiology_1"]}, "watchNamespaces"),
    "list for a map": ({"operator": {"nodeSelector": ["linux"]}}, "nodeSelector"),
    "bad quantity": ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, "memory"),
    "bad digest": ({"image": {"digest": "latest"}}, "digest"),
    "selector label in podLabels": (
        {"operator": {"podLabels": {"app.kubernetes.io/component": "x"}}},
        "podLabels",
    ),
    "example pool without gateway": ({"examplePool": {"spec": {"gateway": None}}}, "gateway"),
    "typo in autoscaling": ({"autoscaling": {"keda": {"scaledObject": []}}}, "scaledObject"),
    "bad rate window": (
        {"autoscaling": {"prometheusAdapter": {"rules": {"rateWindow": "2 minutes"}}}},
        "rateWindow",
    ),
    "scaled object to zero": (
        {"autoscaling": {"keda": {"scaledObjects": [_scaled_object(minReplicas=0)]}}},
        "minReplicas",
    ),
    "scaled object without target": (
        {"autoscaling": {"keda": {"scaledObjects": [_scaled_object(studiesInFlight=None)]}}},
        "studiesInFlight",
    ),
    "scaled object typo": (
        {"autoscaling": {"keda": {"scaledObjects": [_scaled_object(maxReplica=3)]}}},
        "maxReplica",
    ),
    "scale-down window over an hour": (
        {
            "autoscaling": {
                "keda": {
                    "scaledObjects": [_scaled_object(scaleDown={"stabilizationSeconds": 3601})]
                }
            }
        },
        "stabilizationSeconds",
    ),
    "keda address without scheme": (
        {"autoscaling": {"keda": {"serverAddress": "prometheus:9090"}}},
        "serverAddress",
    ),
}

# The rendered kinds that kubernetes-validate has no schema for.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("gatewaypool.io/v1alpha1", "GatewayPool"),
    ("kopf.dev/v1", "ClusterKopfPeering"),
    ("kopf.dev/v1", "KopfPeering"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
CLUSTER_SCOPED_KINDS = {
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ClusterKopfPeering",
}

ROUTER_METRICS = (
    "gatewaypool_router_instances_total",
    "gatewaypool_router_bytes_total",
    "gatewaypool_router_forward_seconds_bucket",
    "gatewaypool_router_active_associations",
    "gatewaypool_router_refusals_total",
    "gatewaypool_router_gateway_failures_total",
    "gatewaypool_router_map_version",
    "gatewaypool_router_studies_in_flight",
)


# --- rendering --------------------------------------------------------------


def render_files(values: Mapping[str, Any]) -> dict[str, str]:
    """``helm template`` of the chart as release `RELEASE`: template path -> rendered text."""
    return helm_chart.render_files(values, release=RELEASE, namespace=RELEASE_NAMESPACE)


@functools.cache
def _rendered(value_set: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    files = render_files(VALUE_SETS[value_set])
    return files, objects_in(files)


def objects_of(value_set: str) -> list[dict[str, Any]]:
    return _rendered(value_set)[1]


def notes_of(value_set: str) -> str:
    files = _rendered(value_set)[0]
    return next(text for path, text in files.items() if path.endswith("NOTES.txt"))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects rendered"
    return found[0]


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["operator"]
    return dict(containers[0])


def granted(rules: list[dict[str, Any]]) -> Rules:
    """(group, resource) -> verbs of a list of PolicyRules."""
    result: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, (
            f"only plain rules are expected (no resourceNames, no nonResourceURLs): {rule}"
        )
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                result.setdefault((group, resource), set()).update(rule["verbs"])
    return {key: frozenset(verbs) for key, verbs in result.items()}


def load_crd() -> dict[str, Any]:
    crd: dict[str, Any] = yaml.safe_load((ROOT / "crds" / CRD_FILE).read_text())
    return crd


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings_in(item)
    else:
        yield str(value)


# --- lint and schema ---------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_strict_lint_passes(value_set: str) -> None:
    report = helm_python.lint(CHART, VALUE_SETS[value_set], strict=True)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "gatewaypool"
    assert chart["type"] == "application"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert chart["appVersion"] == "0.1.0" == pyproject["project"]["version"]


@pytest.mark.parametrize(("values", "key"), BAD_VALUES.values(), ids=list(BAD_VALUES))
def test_schema_refuses_bad_values(values: dict[str, Any], key: str) -> None:
    with pytest.raises(helm_python.HelmError, match=key):
        render_files(values)
    report = helm_python.lint(CHART, values, strict=True)
    assert any(key in error for error in report["errors"]), report


def test_schema_is_strict_at_every_level() -> None:
    """Every object in values.schema.json with properties refuses others."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    spec_fields = "/properties/examplePool/properties/spec/properties/"

    def walk(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, Mapping):
            # A record refuses unknown keys; a map (additionalProperties: a
            # schema) types its values. Below the pool's spec, the CRD decides.
            loose = node.get("additionalProperties", True) is True
            if "properties" in node and loose and not path.startswith(spec_fields):
                yield path
            for key, item in node.items():
                # if/then only add conditions to the records they name.
                if key not in {"if", "then"}:
                    yield from walk(item, f"{path}/{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                yield from walk(item, f"{path}/{index}")

    assert list(walk(schema, "")) == []
    assert sum(1 for _ in walk({"properties": {"a": {"properties": {}}}}, "")) == 2


def test_default_values_match_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(values)
    helm_chart.chart().validate_schema(values)


def test_namespaced_scope_needs_the_example_pool_in_a_watched_namespace() -> None:
    values = {
        "rbac": {"scope": "namespaces"},
        "watchNamespaces": ["radiology"],
        "examplePool": {"enabled": True, "namespace": "cardiology"},
    }
    with pytest.raises(helm_python.HelmError, match="not in watchNamespaces"):
        render_files(values)


def test_existing_service_account_needs_a_name() -> None:
    with pytest.raises(helm_python.HelmError, match=r"serviceAccount\.name is required"):
        render_files({"serviceAccount": {"create": False}})
    objects = objects_in(render_files({"serviceAccount": {"create": False, "name": "mine"}}))
    assert of_kind(objects, "ServiceAccount") == []
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "mine"


# --- every object ------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_built_in_objects_pass_kubernetes_validate_strict(value_set: str) -> None:
    checked = 0
    for obj in objects_of(value_set):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 4


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_objects_are_named_labelled_and_placed(value_set: str) -> None:
    objects = objects_of(value_set)
    seen = set()
    for obj in objects:
        metadata = obj["metadata"]
        key = (obj["kind"], metadata.get("namespace"), metadata["name"])
        assert key not in seen, f"{key} rendered twice"
        seen.add(key)
        assert len(metadata["name"]) <= 63
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        if obj["kind"] in CLUSTER_SCOPED_KINDS:
            assert "namespace" not in metadata
        else:
            # `helm template | kubectl apply` must put everything where `helm install` would.
            assert metadata["namespace"], f"{key} has no namespace"


def test_default_render_is_the_operator_and_its_rbac() -> None:
    kinds = sorted(obj["kind"] for obj in objects_of("default"))
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]


def test_rbac_create_false_renders_no_rbac() -> None:
    kinds = {obj["kind"] for obj in objects_in(render_files({"rbac": {"create": False}}))}
    assert kinds == {"Deployment", "ServiceAccount"}


# --- RBAC ----------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_rbac_has_no_wildcards(value_set: str) -> None:
    for obj in objects_of(value_set):
        if obj["kind"] in {"Role", "ClusterRole"}:
            assert "*" not in "".join(strings_in(obj["rules"]))
            assert "aggregationRule" not in obj


#: With operator.peering.enabled: kopf keeps each replica's record in the
#: peering object; the operator's resync reads it to stand by with kopf.
EXPECTED_PEERING_RULES: Rules = {
    ("kopf.dev", "clusterkopfpeerings"): frozenset({"get", "list", "watch", "patch"}),
    ("kopf.dev", "kopfpeerings"): frozenset({"get", "list", "watch", "patch"}),
}


def test_peering_runs_replicas_in_one_peering() -> None:
    objects = objects_of("peering")
    [peering] = of_kind(objects, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "gatewaypool"
    args = _parse_operator_args(operator_container(objects)["args"])
    assert args.peering == "gatewaypool"
    assert args.priority is None  # each replica draws a random one
    role = one(objects, "ClusterRole")
    assert granted(role["rules"]) == (
        EXPECTED_OPERATOR_RULES | EXPECTED_CLUSTER_RULES | EXPECTED_PEERING_RULES
    )
    assert of_kind(objects_of("default"), "ClusterKopfPeering") == []


@pytest.mark.parametrize("value_set", ["default", "templated-crds", "extras"])
def test_cluster_scope_grants_exactly_the_expected_rules(value_set: str) -> None:
    objects = objects_of(value_set)
    assert of_kind(objects, "Role") == []
    assert of_kind(objects, "RoleBinding") == []
    role = one(objects, "ClusterRole")
    assert granted(role["rules"]) == EXPECTED_OPERATOR_RULES | EXPECTED_CLUSTER_RULES


def test_cluster_scope_watching_given_namespaces_may_list_namespaces() -> None:
    role = one(objects_of("custom"), "ClusterRole")
    assert granted(role["rules"]) == (
        EXPECTED_OPERATOR_RULES | EXPECTED_CLUSTER_RULES | EXPECTED_NAMESPACE_SCAN_RULES
    )


def test_namespaced_scope_grants_roles_in_the_watched_namespaces_only() -> None:
    objects = objects_of("namespaced")
    watched = VALUE_SETS["namespaced"]["watchNamespaces"]
    cluster_role = one(objects, "ClusterRole")
    assert granted(cluster_role["rules"]) == EXPECTED_CLUSTER_RULES | EXPECTED_NAMESPACE_SCAN_RULES

    roles = of_kind(objects, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == sorted(watched)
    for role in roles:
        assert granted(role["rules"]) == EXPECTED_OPERATOR_RULES

    bindings = of_kind(objects, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": FULLNAME,
        }


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_bindings_name_the_operator_service_account(value_set: str) -> None:
    objects = objects_of(value_set)
    deployment = one(objects, "Deployment")
    service_account_name = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    for service_account in of_kind(objects, "ServiceAccount"):
        assert service_account["metadata"]["name"] == service_account_name
        assert service_account["metadata"]["namespace"] == RELEASE_NAMESPACE
    role_names = {
        (role["kind"], role["metadata"].get("namespace"), role["metadata"]["name"])
        for role in objects
        if role["kind"] in {"Role", "ClusterRole"}
    }
    bindings = of_kind(objects, "RoleBinding") + of_kind(objects, "ClusterRoleBinding")
    assert bindings
    for binding in bindings:
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": service_account_name,
                "namespace": RELEASE_NAMESPACE,
            }
        ]
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if ref["kind"] == "Role" else None
        assert (ref["kind"], namespace, ref["name"]) in role_names


def _resource_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    group = obj["apiVersion"].rpartition("/")[0]
    plural = {"NetworkPolicy": "networkpolicies", "PodDisruptionBudget": "poddisruptionbudgets"}
    kind = str(obj["kind"])
    return group, plural.get(kind, kind.lower() + "s")


def _pool_children() -> list[dict[str, Any]]:
    spec = parse_spec(
        {
            "replicas": 3,
            "gateway": {"image": "orthancteam/orthanc:24.1.2"},
            "autoscaling": {"maxReplicas": 8, "targets": {"studiesInFlight": 4}},
        },
        default_router_image="registry.example.org/gatewaypool/gatewaypool:0.1.0",
    )
    built = build_children(
        name="ct-triage",
        namespace="radiology",
        spec=spec,
        map_data={"map.json": '{"version":1}'},
        gateway_replicas=3,
    )
    return [*built, routers_configmap(name="ct-triage", namespace="radiology")]


def test_the_rules_cover_every_child_the_operator_builds() -> None:
    """The operator reads, creates, patches each child; the garbage collector deletes them."""
    built = _pool_children()
    assert {obj["kind"] for obj in built} == set(OWNED_KINDS)
    for obj in built:
        verbs = EXPECTED_OPERATOR_RULES.get(_resource_of(obj), frozenset())
        assert {"get", "create", "patch"} <= verbs, obj["kind"]


def test_the_operator_holds_what_it_grants_the_routers() -> None:
    """RBAC refuses a Role granting more than its creator holds (no escalation)."""
    roles = [obj for obj in _pool_children() if obj["kind"] == "Role"]
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    held = EXPECTED_OPERATOR_RULES.get((group, resource), frozenset())
                    assert set(rule["verbs"]) <= held, (group, resource, rule["verbs"])


# --- the operator Deployment ---------------------------------------------------


def _parse_operator_args(args: list[str]) -> argparse.Namespace:
    """Parse the container's args with the operator's real command line."""
    parser = argparse.ArgumentParser(prog="gatewaypool")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(args)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_operator_deployment(value_set: str) -> None:
    objects = objects_of(value_set)
    values = VALUE_SETS[value_set]
    deployment = one(objects, "Deployment")
    spec = deployment["spec"]
    peering = values.get("operator", {}).get("peering", {})
    if peering.get("enabled"):
        assert spec["replicas"] == peering["replicas"]
        assert spec["strategy"] == {"type": "RollingUpdate"}
    else:
        assert spec["replicas"] == 1
        assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]
    assert pod["metadata"]["labels"].items() >= spec["selector"]["matchLabels"].items()
    assert spec["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"

    pod_spec = pod["spec"]
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] == 65532
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}

    container = operator_container(objects)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}

    tmp_mounts = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp_mounts) == 1
    volume = next(v for v in pod_spec["volumes"] if v["name"] == tmp_mounts[0]["name"])
    assert "emptyDir" in volume

    env = {item["name"]: item for item in container["env"]}
    assert env["GATEWAYPOOL_IMAGE"] == {"name": "GATEWAYPOOL_IMAGE", "value": container["image"]}
    assert env["GATEWAYPOOL_CLUSTER_DOMAIN"]["value"] == values.get(
        "clusterDomain", "cluster.local"
    )

    assert container["resources"] == values.get("operator", {}).get(
        "resources", {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    )

    # The probe asks kopf's liveness endpoint, where the operator serves it.
    args = _parse_operator_args(container["args"])
    assert args.command == "operator"
    assert args.liveness == "http://0.0.0.0:8081/healthz"
    probe = container["livenessProbe"]["httpGet"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert probe["path"] == "/healthz"
    assert ports.get(probe["port"], probe["port"]) == 8081
    # The operator's own metrics (handovers), on a named port for scraping.
    assert args.metrics == "0.0.0.0:8082"
    assert ports["metrics"] == 8082
    # Standalone (one replica) unless peering is enabled.
    assert args.peering == ("gatewaypool" if peering.get("enabled") else None)

    operator_values = values.get("operator", {})
    assert args.namespace == values.get("watchNamespaces", [])
    assert args.resync == float(operator_values.get("resyncSeconds", 30))
    assert args.log_format == operator_values.get("logFormat", "json")
    assert args.log_level == operator_values.get("logLevel", "info")


def test_default_image_is_the_app_version() -> None:
    container = operator_container(objects_of("default"))
    assert container["image"] == "registry.example.org/gatewaypool/gatewaypool:0.1.0"
    assert container["imagePullPolicy"] == "IfNotPresent"


def test_custom_image_resources_and_scheduling() -> None:
    values = VALUE_SETS["custom"]
    objects = objects_of("custom")
    deployment = one(objects, "Deployment")
    assert deployment["metadata"]["name"] == "dicom-operator"
    pod_spec = deployment["spec"]["template"]["spec"]
    container = operator_container(objects)
    image = values["image"]
    assert container["image"] == f"{image['repository']}@{image['digest']}"
    assert container["imagePullPolicy"] == "Always"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["GATEWAYPOOL_IMAGE"] == container["image"]
    # The operator names gateways in the bucket map with the cluster's own domain.
    assert env["GATEWAYPOOL_CLUSTER_DOMAIN"] == "hospital.internal"
    assert pod_spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_spec["serviceAccountName"] == "dicom-operator-sa"
    assert pod_spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod_spec["tolerations"] == values["operator"]["tolerations"]
    assert pod_spec["priorityClassName"] == "system-cluster-critical"
    metadata = deployment["spec"]["template"]["metadata"]
    assert metadata["labels"]["team"] == "radiology-it"
    assert metadata["annotations"] == {"example.org/owner": "pacs-team"}
    assert one(objects, "ServiceAccount")["metadata"]["annotations"] == {"a": "b"}


def test_tag_override() -> None:
    files = render_files({"image": {"tag": "0.2.0-rc.1"}})
    deployment = yaml.safe_load(next(t for p, t in files.items() if p.endswith("deployment.yaml")))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/gatewaypool/gatewaypool:0.2.0-rc.1"


# --- CRDs ------------------------------------------------------------------------


def test_chart_crd_is_the_repository_crd() -> None:
    chart_crd = CHART / "crds" / CRD_FILE
    assert chart_crd.read_bytes() == (ROOT / "crds" / CRD_FILE).read_bytes(), (
        f"copy crds/{CRD_FILE} to charts/gatewaypool/crds/"
    )
    assert sorted(crd["filename"] for crd in helm_chart.chart().crds) == [
        f"gatewaypool/crds/{CRD_FILE}",
        "gatewaypool/crds/kopf.dev_peerings.yaml",
    ]


def test_crds_are_not_templated_by_default() -> None:
    assert of_kind(objects_of("default"), "CustomResourceDefinition") == []


@pytest.mark.parametrize("value_set", ["templated-crds", "templated-crds-not-kept"])
def test_templated_crd_is_the_repository_crd(value_set: str) -> None:
    rendered = one(objects_of(value_set), "CustomResourceDefinition")
    crd = load_crd()
    assert rendered["apiVersion"] == crd["apiVersion"]
    assert rendered["spec"] == crd["spec"]
    assert rendered["metadata"]["name"] == crd["metadata"]["name"]
    assert rendered["metadata"]["labels"].items() >= crd["metadata"]["labels"].items()
    annotations = rendered["metadata"].get("annotations") or {}
    keep = VALUE_SETS[value_set]["crds"].get("keep", True)
    assert (annotations.get("helm.sh/resource-policy") == "keep") is keep


@pytest.mark.parametrize("value_set", ["templated-crds-peering", "peering-templated-cluster"])
def test_templated_crds_with_peering_install_kopfs_crds_and_then_the_peering(
    value_set: str,
) -> None:
    """``helm install --skip-crds`` skips crds/: the release must bring kopf's CRDs itself.

    Helm maps every object of a release before creating any, so the peering
    objects are post-install/post-upgrade hooks (mapped after the CRDs
    exist), owned by the release so that the next upgrade adopts them.
    """
    values = VALUE_SETS.get(value_set) or {
        "crds": {"templated": True, "keep": False},
        "operator": {"peering": {"enabled": True}},
    }
    objects = objects_in(render_files(values))
    rendered = {c["metadata"]["name"]: c for c in of_kind(objects, "CustomResourceDefinition")}
    source = [
        d for d in yaml.safe_load_all((CHART / "crds" / "kopf.dev_peerings.yaml").read_text())
    ]
    assert {d["metadata"]["name"] for d in source if d} <= rendered.keys()
    keep = values["crds"].get("keep", True)
    for crd in filter(None, source):
        copy = rendered[crd["metadata"]["name"]]
        assert copy["spec"] == crd["spec"]
        assert copy["metadata"]["labels"]["app.kubernetes.io/component"] == "crd"
        annotations = copy["metadata"].get("annotations") or {}
        assert (annotations.get("helm.sh/resource-policy") == "keep") is keep
    served = {c["spec"]["names"]["kind"] for c in rendered.values()}
    peerings = [o for o in objects if o["apiVersion"] == "kopf.dev/v1"]
    assert peerings
    for peering in peerings:
        assert peering["kind"] in served
        annotations = peering["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
        assert "helm.sh/hook-delete-policy" not in annotations
        assert annotations["meta.helm.sh/release-name"] == RELEASE
        assert annotations["meta.helm.sh/release-namespace"] == RELEASE_NAMESPACE
        assert peering["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_peering_without_templated_crds_is_a_plain_object() -> None:
    """crds/ is installed before the templates: no hook, and kopf's CRDs only there."""
    objects = objects_of("peering")
    assert of_kind(objects, "CustomResourceDefinition") == []
    peering = one(objects, "ClusterKopfPeering")
    assert "annotations" not in peering["metadata"]


# --- example pool, PodMonitor, dashboard -------------------------------------------


def unknown_fields(value: Any, schema: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """Fields the API server would prune (and `kubectl apply` refuse)."""
    if isinstance(value, Mapping) and not schema.get("x-kubernetes-preserve-unknown-fields"):
        properties = schema.get("properties")
        for key, item in value.items():
            if properties is not None and key in properties:
                yield from unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), Mapping):
                yield from unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
            elif properties is not None:
                yield f"{path}.{key}"
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{index}]")


@pytest.mark.parametrize("value_set", ["extras", "extras-namespaced"])
def test_example_pool_is_a_valid_gateway_pool(value_set: str) -> None:
    pool = one(objects_of(value_set), "GatewayPool")
    crd = load_crd()
    version = next(v for v in crd["spec"]["versions"] if v["storage"])
    assert pool["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert pool["kind"] == crd["spec"]["names"]["kind"]
    schema = version["schema"]["openAPIV3Schema"]
    jsonschema.Draft202012Validator(schema).validate(pool)
    assert list(unknown_fields(pool, schema)) == []
    example = VALUE_SETS[value_set]["examplePool"]
    assert pool["metadata"]["namespace"] == example.get("namespace", RELEASE_NAMESPACE)
    assert pool["metadata"]["name"] == example.get("name", "example")


def test_example_pool_check_refuses_a_bad_pool() -> None:
    values = {"examplePool": {"enabled": True, "spec": {"gateway": {"image": "x", "port": 0}}}}
    files = render_files(values)
    pool = yaml.safe_load(next(t for p, t in files.items() if p.endswith("example-pool.yaml")))
    version = load_crd()["spec"]["versions"][0]
    with pytest.raises(jsonschema.ValidationError, match="minimum"):
        jsonschema.Draft202012Validator(version["schema"]["openAPIV3Schema"]).validate(pool)


@pytest.mark.parametrize("value_set", ["extras", "extras-namespaced"])
def test_pod_monitor_scrapes_the_routers(value_set: str) -> None:
    values = VALUE_SETS[value_set]
    monitor = one(objects_of(value_set), "PodMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"namespaceSelector", "selector", "podMetricsEndpoints"}
    assert monitor["spec"]["selector"] == {
        "matchLabels": {
            "app.kubernetes.io/name": "gatewaypool",
            "app.kubernetes.io/component": "router",
        }
    }
    watched = values.get("watchNamespaces")
    expected_selector = {"matchNames": watched} if watched else {"any": True}
    assert monitor["spec"]["namespaceSelector"] == expected_selector
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == values["podMonitor"].get("interval", "30s")
    assert endpoint.get("scrapeTimeout") == values["podMonitor"].get("scrapeTimeout")
    # The pool's name as label "pool", which the dashboard filters on.
    assert endpoint["relabelings"] == [
        {
            "sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
            "targetLabel": "pool",
        }
    ]
    assert monitor["metadata"]["labels"].items() >= values["podMonitor"].get("labels", {}).items()


def test_router_pods_match_the_pod_monitor() -> None:
    """The operator's router pods carry the labels and the port the PodMonitor selects."""
    monitor = one(objects_of("extras"), "PodMonitor")
    deployment = next(
        obj
        for obj in _pool_children()
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == "ct-triage-router"
    )
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()
    ports = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads((CHART / "dashboards" / "gatewaypool.json").read_text())
    return dashboard


def _panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def test_dashboard_shows_every_router_metric() -> None:
    dashboard = _dashboard()
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for metric in ROUTER_METRICS:
        assert any(metric in expr for expr in exprs), metric
    joined = "\n".join(exprs)
    assert "by (gateway, outcome)" in joined
    assert "by (reason)" in joined
    assert "histogram_quantile(0.5," in joined
    assert "histogram_quantile(0.99," in joined
    for expr in exprs:
        # Every query honours the namespace and pool selectors.
        assert expr.count("{") == expr.count('namespace=~"$namespace", pool=~"$pool"'), expr
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "pool"}
    assert dashboard["uid"] == "gatewaypool-routers"


@pytest.mark.parametrize("value_set", ["extras", "extras-namespaced"])
def test_dashboard_config_map(value_set: str) -> None:
    values = VALUE_SETS[value_set]["grafanaDashboard"]
    config_map = one(objects_of(value_set), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == values.get("namespace", RELEASE_NAMESPACE)
    assert json.loads(config_map["data"]["gatewaypool.json"]) == _dashboard()


# --- autoscaling: Prometheus Adapter rules and KEDA ScaledObjects ------------------

AUTOSCALING_EXAMPLES = ROOT / "examples" / "autoscaling"

#: The fields of Prometheus Adapter's configuration (DiscoveryRule and its parts
#: in pkg/config/config.go of kubernetes-sigs/prometheus-adapter). The adapter
#: loads it with yaml.UnmarshalStrict: any other field stops the adapter.
ADAPTER_RULE_FIELDS = {
    "seriesQuery",
    "seriesFilters",
    "resources",
    "name",
    "metricsQuery",
    "labelValueReplacements",
}
ADAPTER_RESOURCE_FIELDS = {"template", "overrides"}
ADAPTER_NAME_FIELDS = {"matches", "as"}

#: Per-gateway Pods metric -> (the router series it is made of, summed as a rate).
PER_GATEWAY_METRICS = {
    "gatewaypool_studies_in_flight": ("gatewaypool_router_studies_in_flight", False),
    "gatewaypool_instances_per_second": ("gatewaypool_router_instances_total", True),
    "gatewaypool_bytes_per_second": ("gatewaypool_router_bytes_total", True),
}

#: The fields of a KEDA ScaledObject and of its prometheus trigger (KEDA 2.17
#: docs: reference/scaledobject-spec.md and scalers/prometheus.md).
KEDA_SPEC_FIELDS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
KEDA_TARGET_FIELDS = {"apiVersion", "kind", "name", "envSourceContainerName"}
KEDA_ADVANCED_FIELDS = {
    "restoreToOriginalReplicaCount",
    "horizontalPodAutoscalerConfig",
    "scalingModifiers",
}
KEDA_HPA_CONFIG_FIELDS = {"name", "behavior"}
KEDA_TRIGGER_FIELDS = {
    "type",
    "metadata",
    "name",
    "useCachedMetrics",
    "authenticationRef",
    "metricType",
}
KEDA_PROMETHEUS_METADATA = {
    "serverAddress",
    "query",
    "threshold",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "queryParameters",
    "unsafeSsl",
}


def adapter_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The parsed config.yaml of the one ConfigMap holding adapter rules."""
    [config_map] = [obj for obj in of_kind(objects, "ConfigMap") if "config.yaml" in obj["data"]]
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["config.yaml"])
    return config


def check_adapter_rules(rules: list[dict[str, Any]], rate_window: str) -> None:
    """The three per-gateway metrics, each from its router series, summed by gateway."""
    by_metric = {}
    for rule in rules:
        assert set(rule) <= ADAPTER_RULE_FIELDS, rule
        assert set(rule["resources"]) <= ADAPTER_RESOURCE_FIELDS, rule
        assert set(rule["name"]) <= ADAPTER_NAME_FIELDS, rule
        by_metric[rule["name"]["as"]] = rule
    assert set(by_metric) == set(PER_GATEWAY_METRICS)
    for metric, (series, is_rate) in PER_GATEWAY_METRICS.items():
        rule = by_metric[metric]
        assert re.fullmatch(rule["name"]["matches"], series), metric
        assert rule["seriesQuery"].startswith(series + "{"), metric
        assert 'namespace!=""' in rule["seriesQuery"]
        assert 'gateway!=""' in rule["seriesQuery"]
        # The gateway label names a pod, the namespace label its namespace;
        # the router's own "pod" label names nothing.
        assert rule["resources"] == {
            "overrides": {
                "namespace": {"resource": "namespace"},
                "gateway": {"resource": "pod"},
            }
        }
        # GroupBy is the gateway label: the sum adds up router replicas and outcomes.
        selected = "<<.Series>>{<<.LabelMatchers>>}"
        summed = f"rate({selected}[{rate_window}])" if is_rate else selected
        assert rule["metricsQuery"] == f"sum({summed}) by (<<.GroupBy>>)", metric


def safe_behavior(stabilization_seconds: int, period_seconds: int) -> dict[str, Any]:
    """The HPA behavior of the contract: prompt scale-up, one gateway per period down."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": 0,
            "policies": [
                {"type": "Percent", "value": 100, "periodSeconds": 15},
                {"type": "Pods", "value": 4, "periodSeconds": 15},
            ],
            "selectPolicy": "Max",
        },
        "scaleDown": {
            "stabilizationWindowSeconds": stabilization_seconds,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": period_seconds}],
            "selectPolicy": "Min",
        },
    }


def default_stabilization_seconds() -> int:
    """max(300, spec.handover.maxDrainSeconds) for a pool with the CRD's defaults."""
    version = next(v for v in load_crd()["spec"]["versions"] if v["storage"])
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    max_drain = spec["properties"]["handover"]["properties"]["maxDrainSeconds"]["default"]
    return max(300, int(max_drain))


def check_gateway_pool_target(target: Mapping[str, Any], pool: str) -> None:
    """A reference to the pool's scale subresource, as the CRD declares it."""
    crd = load_crd()
    version = next(v for v in crd["spec"]["versions"] if v["storage"])
    assert target == {
        "apiVersion": f"{crd['spec']['group']}/{version['name']}",
        "kind": crd["spec"]["names"]["kind"],
        "name": pool,
    }
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"


def check_behavior(behavior: dict[str, Any]) -> None:
    """An autoscaling/v2 HPA with this behavior passes kubernetes-validate --strict."""
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "check", "namespace": "radiology"},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "gatewaypool.io/v1alpha1",
                "kind": "GatewayPool",
                "name": "x",
            },
            "maxReplicas": 2,
            "behavior": behavior,
        },
    }
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)


def check_scaled_object(
    obj: Mapping[str, Any],
    *,
    pool: str,
    namespace: str,
    replicas: tuple[int, int],
    studies_in_flight: int,
    scale_down: tuple[int, int],
    server_address: str,
) -> None:
    assert (obj["apiVersion"], obj["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert obj["metadata"]["name"] == pool
    assert obj["metadata"]["namespace"] == namespace
    spec = obj["spec"]
    assert set(spec) <= KEDA_SPEC_FIELDS
    assert set(spec["scaleTargetRef"]) <= KEDA_TARGET_FIELDS
    check_gateway_pool_target(spec["scaleTargetRef"], pool)
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == replicas
    assert set(spec["advanced"]) <= KEDA_ADVANCED_FIELDS
    hpa_config = spec["advanced"]["horizontalPodAutoscalerConfig"]
    assert set(hpa_config) <= KEDA_HPA_CONFIG_FIELDS
    assert hpa_config["behavior"] == safe_behavior(*scale_down)
    check_behavior(hpa_config["behavior"])
    [trigger] = spec["triggers"]
    assert set(trigger) <= KEDA_TRIGGER_FIELDS
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    metadata = trigger["metadata"]
    assert set(metadata) <= KEDA_PROMETHEUS_METADATA
    # The CRD types every metadata value as a string.
    assert all(isinstance(value, str) for value in metadata.values()), metadata
    assert metadata["serverAddress"] == server_address
    assert metadata["query"] == (
        f'sum(gatewaypool_router_studies_in_flight{{namespace="{namespace}", pool="{pool}"}})'
    )
    assert metadata["threshold"] == str(studies_in_flight)
    assert metadata["ignoreNullValues"] == "false"


def test_autoscaling_helpers_are_off_by_default() -> None:
    objects = objects_of("default")
    assert of_kind(objects, "ScaledObject") == []
    assert of_kind(objects, "ConfigMap") == []
    assert "Prometheus Adapter" not in notes_of("default")
    assert "KEDA" not in notes_of("default")


def test_adapter_config_serves_the_per_gateway_metrics() -> None:
    objects = objects_of("autoscaling")
    [config_map] = of_kind(objects, "ConfigMap")
    # The adapter's pod mounts it: it lives in the adapter's namespace.
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["name"] == f"{FULLNAME}-adapter-rules"
    config = adapter_config(objects)
    assert set(config) == {"rules"}
    check_adapter_rules(config["rules"], "1m")
    # The checker fails on a rule that maps labels by template (the router's
    # own "pod" label would then name a pod) and on another rate window.
    bad = [dict(config["rules"][0], resources={"template": "<<.Resource>>"}), *config["rules"][1:]]
    with pytest.raises(AssertionError):
        check_adapter_rules(bad, "1m")
    with pytest.raises(AssertionError):
        check_adapter_rules(config["rules"], "2m")
    notes = notes_of("autoscaling")
    assert f"--set rules.existing={FULLNAME}-adapter-rules" in notes
    # The PodMonitor that gives the series their "namespace" label is on too.
    assert one(objects, "PodMonitor")


def test_adapter_rules_name_and_namespace_default() -> None:
    values = {"autoscaling": {"prometheusAdapter": {"rules": {"enabled": True, "name": "mine"}}}}
    [config_map] = of_kind(objects_in(render_files(values)), "ConfigMap")
    assert config_map["metadata"]["name"] == "mine"
    assert config_map["metadata"]["namespace"] == RELEASE_NAMESPACE


def test_adapter_examples_are_the_chart_rules() -> None:
    objects = objects_in(
        render_files({"autoscaling": {"prometheusAdapter": {"rules": {"enabled": True}}}})
    )
    rendered = adapter_config(objects)["rules"]
    check_adapter_rules(rendered, "2m")
    plain = yaml.safe_load((AUTOSCALING_EXAMPLES / "prometheus-adapter-config.yaml").read_text())
    assert plain == {"rules": rendered}
    values = yaml.safe_load((AUTOSCALING_EXAMPLES / "prometheus-adapter-values.yaml").read_text())
    assert values["rules"]["custom"] == rendered


def test_keda_scaled_objects_scale_the_listed_pools() -> None:
    objects = objects_of("autoscaling")
    keda = VALUE_SETS["autoscaling"]["autoscaling"]["keda"]
    scaled = {obj["metadata"]["name"]: obj for obj in of_kind(objects, "ScaledObject")}
    assert sorted(scaled) == ["archive", "ct-triage"]
    check_scaled_object(
        scaled["ct-triage"],
        pool="ct-triage",
        namespace="radiology",
        replicas=(1, 8),
        studies_in_flight=4,
        scale_down=(default_stabilization_seconds(), 60),
        server_address=keda["serverAddress"],
    )
    check_scaled_object(
        scaled["archive"],
        pool="archive",
        namespace=RELEASE_NAMESPACE,
        replicas=(2, 6),
        studies_in_flight=10,
        scale_down=(900, 120),
        server_address=keda["serverAddress"],
    )
    # The query's "pool" label is the one the chart's PodMonitor adds.
    relabelings = one(objects, "PodMonitor")["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert [r["targetLabel"] for r in relabelings] == ["pool"]
    notes = notes_of("autoscaling")
    assert "radiology/ct-triage" in notes
    assert f"{RELEASE_NAMESPACE}/archive" in notes


def test_scaled_object_check_can_fail() -> None:
    [scaled] = [
        obj
        for obj in of_kind(objects_of("autoscaling"), "ScaledObject")
        if obj["metadata"]["name"] == "ct-triage"
    ]
    wrong_kind = json.loads(json.dumps(scaled))
    wrong_kind["spec"]["scaleTargetRef"]["kind"] = "StatefulSet"
    with pytest.raises(AssertionError):
        check_scaled_object(
            wrong_kind,
            pool="ct-triage",
            namespace="radiology",
            replicas=(1, 8),
            studies_in_flight=4,
            scale_down=(default_stabilization_seconds(), 60),
            server_address=VALUE_SETS["autoscaling"]["autoscaling"]["keda"]["serverAddress"],
        )
    bad_behavior = safe_behavior(600, 60)
    bad_behavior["scaleDown"]["selectPolicy"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        check_behavior(bad_behavior)


KEDA_REFUSALS = {
    "max below min": (
        {
            "serverAddress": "http://p:9090",
            "scaledObjects": [_scaled_object(minReplicas=3, maxReplicas=2)],
        },
        "maxReplicas 2 below minReplicas 3",
    ),
    "one pool twice": (
        {"serverAddress": "http://p:9090", "scaledObjects": [_scaled_object(), _scaled_object()]},
        "lists pool gatewaypool-system/ct-triage twice",
    ),
    "no prometheus": (
        {"scaledObjects": [_scaled_object()]},
        r"autoscaling\.keda\.serverAddress is required",
    ),
}


@pytest.mark.parametrize(("keda", "message"), KEDA_REFUSALS.values(), ids=list(KEDA_REFUSALS))
def test_keda_values_are_checked(keda: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render_files({"autoscaling": {"keda": keda}})


def test_keda_example_is_the_chart_object() -> None:
    (example,) = yaml.safe_load_all((AUTOSCALING_EXAMPLES / "keda-scaledobject.yaml").read_text())
    server_address = example["spec"]["triggers"][0]["metadata"]["serverAddress"]
    check_scaled_object(
        example,
        pool="ct-triage",
        namespace="radiology",
        replicas=(1, 8),
        studies_in_flight=4,
        scale_down=(default_stabilization_seconds(), 60),
        server_address=server_address,
    )
    values = {
        "autoscaling": {
            "keda": {
                "serverAddress": server_address,
                "scaledObjects": [
                    {
                        "pool": "ct-triage",
                        "namespace": "radiology",
                        "maxReplicas": 8,
                        "studiesInFlight": 4,
                    }
                ],
            }
        }
    }
    rendered = one(objects_in(render_files(values)), "ScaledObject")
    del rendered["metadata"]["labels"]
    assert rendered == example


def test_own_hpa_example_reads_an_adapter_metric() -> None:
    (hpa,) = yaml.safe_load_all((AUTOSCALING_EXAMPLES / "hpa-bytes-per-second.yaml").read_text())
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    check_gateway_pool_target(hpa["spec"]["scaleTargetRef"], "archive")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "gatewaypool_bytes_per_second"
    assert metric["pods"]["metric"]["name"] in PER_GATEWAY_METRICS
    assert hpa["spec"]["behavior"] == safe_behavior(default_stabilization_seconds(), 60)


def test_autoscaling_examples_are_all_checked_and_none_is_a_pool() -> None:
    files = sorted(path.name for path in AUTOSCALING_EXAMPLES.glob("*.yaml"))
    assert files == [
        "hpa-bytes-per-second.yaml",
        "keda-scaledobject.yaml",
        "prometheus-adapter-config.yaml",
        "prometheus-adapter-values.yaml",
    ]
    for path in AUTOSCALING_EXAMPLES.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc.get("kind") != "GatewayPool", path.name
    # tests/unit/operator/test_crd.py checks examples/*.yaml as GatewayPools: not these.
    assert not any(p.parent == AUTOSCALING_EXAMPLES for p in (ROOT / "examples").glob("*.yaml"))


def test_autoscaling_docs_name_the_metrics_and_link_files_that_exist() -> None:
    operations = (ROOT / "docs" / "operations.md").read_text()
    for metric in [*PER_GATEWAY_METRICS, "gatewaypool_router_studies_in_flight"]:
        assert f"`{metric}" in operations, metric
    chart_readme = (CHART / "README.md").read_text()
    for key in ("autoscaling.prometheusAdapter.rules.enabled", "autoscaling.keda.scaledObjects"):
        assert f"`{key}`" in chart_readme, key
    docs = [
        ROOT / "README.md",
        ROOT / "docs" / "operations.md",
        CHART / "README.md",
        AUTOSCALING_EXAMPLES / "README.md",
    ]
    # Relative links, images left out (commands make those).
    link = re.compile(r"(?<!!)\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")
    checked = 0
    for doc in docs:
        for target in link.findall(doc.read_text()):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
            checked += 1
    assert checked >= 10


# --- NOTES.txt ---------------------------------------------------------------------


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_notes_give_the_next_steps(value_set: str) -> None:
    notes = notes_of(value_set)
    # Either how to write a pool, or the pool the chart made: whichever applies.
    example = bool(VALUE_SETS[value_set].get("examplePool", {}).get("enabled"))
    assert ("kubectl apply -f -" in notes) is not example
    assert ("The example pool" in notes) is example
    assert re.search(r"kubectl -n \S+ get gwp", notes)
    domain = re.escape(VALUE_SETS[value_set].get("clusterDomain", "cluster.local"))
    assert re.search(rf"\S+-router\.\S+\.svc\.{domain}", notes)
    assert re.search(r"port  11112 ", notes)
    assert re.search(r"kubectl -n \S+ scale gwp/\S+ --replicas=\d+", notes)
    assert "{{" not in notes and "<no value>" not in notes


def test_notes_name_the_example_pool() -> None:
    notes = notes_of("extras-namespaced")
    assert "kubectl -n radiology get gwp" in notes
    assert "ct-triage-router.radiology.svc.cluster.local" in notes
    assert "kubectl -n radiology scale gwp/ct-triage --replicas=" in notes


# --- Dockerfile ------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append((keyword, arguments))
    return stages


def stage_named(name: str) -> list[tuple[str, str]]:
    [stage] = [s for s in dockerfile_stages() if s[0][1].endswith(f" AS {name}")]
    return stage


def test_dockerfile_is_multi_stage_on_a_pinned_base() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    stage_names = set()
    for stage in stages:
        image, _, alias = stage[0][1].partition(" AS ")
        if alias:
            stage_names.add(alias.strip())
        if image in stage_names:
            continue
        assert "latest" not in image
        # Python for the builder and the image; Rust's toolchain only to build
        # the router's native hot path (router/native) in the builder.
        assert re.fullmatch(
            r"(python:3\.11\.\d+|rust:1\.\d+\.\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", image
        ), image
    assert stages[-1][0][1].startswith("python:"), "the image is Python's, not Rust's"


def test_dockerfile_builder_makes_wheels_of_the_product_only() -> None:
    builder = stage_named("builder")
    runs = [arguments for keyword, arguments in builder if keyword == "RUN"]
    assert any(re.search(r"pip wheel \.? ?(-w|--wheel-dir) /wheels", run) for run in runs), runs
    copied = {
        source
        for keyword, arguments in builder
        if keyword == "COPY" and not arguments.startswith("--from=")
        for source in arguments.split()[:-1]
    }
    # The Rust toolchain comes from the rust stage, whole: cargo and rustc.
    toolchain = {a for k, a in builder if k == "COPY" and a.startswith("--from=")}
    assert toolchain <= {
        "--from=rust /usr/local/rustup /usr/local/rustup",
        "--from=rust /usr/local/cargo /usr/local/cargo",
    }, toolchain
    # The same sources tests/e2e/test_image.py builds and runs; local/ (numpy, the demo) stays out.
    assert copied == {"pyproject.toml", "README.md", "common", "router", "operator"}


def test_dockerfile_final_stage_installs_only_wheels() -> None:
    final = dockerfile_stages()[-1]
    runs = " ".join(arguments for keyword, arguments in final if keyword == "RUN")
    assert "pip install --no-index" in runs
    assert "/wheels" in runs
    assert "pip wheel" not in runs
    words = set(shlex.split(runs.replace("&&", " ")))
    build_tools = {"gcc", "g++", "make", "build-essential", "cmake", "clang", "git", "python3-dev"}
    assert not words & build_tools
    assert not re.search(r"apt-get\s+install", runs), "the final stage installs no packages"
    copies = [arguments for keyword, arguments in final if keyword in {"COPY", "ADD"}]
    assert all("--from=builder" in copy and "/wheels" in copy for copy in copies), copies


def test_dockerfile_runs_gatewaypool_as_a_numeric_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users, "the final stage sets no USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0
    assert user == "65532"
    assert not group or (group.isdigit() and int(group) != 0)
    entrypoints = [json.loads(a) for k, a in final if k == "ENTRYPOINT"]
    commands = [json.loads(a) for k, a in final if k == "CMD"]
    assert entrypoints[-1] == ["gatewaypool"]
    assert commands[-1] == ["operator"]
    # The chart's args start with the subcommand the entrypoint runs.
    assert operator_container(objects_of("default"))["args"][0] == "operator"


def test_dockerfile_limits_malloc_arenas_in_the_image() -> None:
    # A thread per association: glibc's per-thread arenas kept the router's
    # RSS up (docs/hostile-input.md gives the figures).
    final = dockerfile_stages()[-1]
    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    assert re.search(r"(^|\s)MALLOC_ARENA_MAX=2(\s|$)", env), env
    assert "MALLOC_ARENA_MAX=2" in (ROOT / "docs" / "hostile-input.md").read_text()


def test_dockerfile_has_labels_and_no_secrets() -> None:
    instructions = dockerfile_instructions()
    labels = " ".join(arguments for keyword, arguments in instructions if keyword == "LABEL")
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    for keyword, arguments in instructions:
        if keyword in {"ENV", "ARG"}:
            assert not re.search(r"(?i)(secret|password|passwd|token|api_?key)", arguments)
    version = re.search(r"ARG VERSION=(\S+)", DOCKERFILE.read_text())
    assert version is not None
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert version.group(1) == pyproject["project"]["version"]


def test_dockerignore_keeps_the_context_small() -> None:
    entries = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", ".pytest_cache", ".mypy_cache", ".hypothesis", "tests"} <= entries
    # Nothing the builder copies is ignored.
    copied = {"pyproject.toml", "README.md", "common", "router", "operator", "local"}
    assert not copied & entries
