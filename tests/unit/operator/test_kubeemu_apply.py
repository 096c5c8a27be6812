"""The oracle of the drift property test writes as the real API server does.

``tests/unit/operator/test_operator_drift.py`` trusts :mod:`support.kubeemu`'s
server-side apply, defaulting, omitempty and canonical quantities to say
what the API server would store. Each test here pins one behaviour of the
real server that a naive model gets wrong: list items merged by their
list-map keys (with the server's key defaults), set lists unioned and
untyped lists replaced, conflicts between managers, removal of what a
manager stopped applying, defaults owned by nobody, the ``SetDefaults_*``
values, ``""`` dropped from optional strings, quantities in canonical form,
and the 500 for a list-map key given twice. The pure functions are called
as the server's write path calls them, without a server.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from support.kubeemu.apply import apply
from support.kubeemu.defaults import apply_defaults, canonicalize_quantities, drop_empty_strings
from support.kubeemu.errors import ApiError
from support.kubeemu.fieldpath import duplicate_entries
from support.kubeemu.schemas import Schema, builtin_schema, custom_schema

OPERATOR = "gatewaypool-operator"
LABELS = {"app.kubernetes.io/instance": "ct", "app.kubernetes.io/component": "gateway"}
CLUSTER_IP = "10.96.0.10"
#: Kinds whose status is a subresource: a write to the main resource leaves it alone.
STATUS_APART = ("StatefulSet", "Deployment", "Service", "HorizontalPodAutoscaler")


def schema_of(obj: dict[str, Any]) -> Schema:
    schema = builtin_schema(obj["apiVersion"], obj["kind"])
    assert schema is not None, obj["kind"]
    return schema


def stored(obj: dict[str, Any], *, old: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the server makes of any written object of a built-in kind."""
    schema = schema_of(obj)
    new = drop_empty_strings(copy.deepcopy(obj), schema)
    apply_defaults(obj["apiVersion"], obj["kind"], new, old=old, allocate_ip=lambda: CLUSTER_IP)
    result: dict[str, Any] = canonicalize_quantities(new, schema)
    return result


def server_apply(
    live: dict[str, Any] | None,
    obj: dict[str, Any],
    manager: str = OPERATOR,
    *,
    force: bool = True,
    schema: Schema | None = None,
) -> dict[str, Any]:
    """``obj`` applied as `manager` onto `live` (None: created), as the API server stores it."""
    chosen = schema if schema is not None else schema_of(obj)
    return apply(
        copy.deepcopy(live),
        copy.deepcopy(obj),
        chosen,
        manager=manager,
        force=force,
        api_version=obj["apiVersion"],
        subresource=None,
        status_apart=obj["kind"] in STATUS_APART,
        finish=(lambda new: stored(new, old=live)) if schema is None else copy.deepcopy,
    )


def gateway_sts(
    *,
    replicas: int = 2,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A StatefulSet as the operator will apply it (no server defaults in it)."""
    container: dict[str, Any] = {
        "name": "gateway",
        "image": "orthancteam/orthanc:24.1.2",
        "ports": [{"name": "dicom", "containerPort": 4242}],
        "env": [{"name": k, "value": v} for k, v in (env or {"A": "1"}).items()],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "ct-gw", "labels": {**LABELS, **(labels or {})}},
        "spec": {
            "replicas": replicas,
            "serviceName": "ct-gw",
            "selector": {"matchLabels": LABELS},
            "template": {"metadata": {"labels": LABELS}, "spec": {"containers": [container]}},
            **spec,
        },
    }


def managed(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """managedFields by manager."""
    return {entry["manager"]: entry for entry in obj["metadata"].get("managedFields") or []}


def test_server_side_apply() -> None:
    created = server_apply(None, gateway_sts(env={"A": "1", "B": "2"}, labels={"team": "imaging"}))
    entry = managed(created)[OPERATOR]
    assert (entry["operation"], entry["apiVersion"], entry["fieldsType"]) == (
        "Apply",
        "apps/v1",
        "FieldsV1",
    )
    assert entry["time"]
    fields = entry["fieldsV1"]
    container = fields["f:spec"]["f:template"]["f:spec"]["f:containers"]['k:{"name":"gateway"}']
    assert "." in container, "a list item is owned itself, and its fields"
    assert set(container["f:env"]) == {'k:{"name":"A"}', 'k:{"name":"B"}'}
    # A port applied without protocol is keyed with the server's default.
    assert set(container["f:ports"]) == {'k:{"containerPort":4242,"protocol":"TCP"}'}
    assert fields["f:metadata"]["f:labels"]["f:team"] == {}
    assert "f:podManagementPolicy" not in fields["f:spec"], "defaults are nobody's"
    assert created["spec"]["podManagementPolicy"] == "OrderedReady"

    # Another manager changing a field the operator owns: 409 naming both.
    with pytest.raises(ApiError) as conflict:
        server_apply(created, gateway_sts(replicas=5), "autoscaler", force=False)
    assert (conflict.value.status, conflict.value.reason) == (409, "Conflict")
    assert 'conflict with "gatewaypool-operator"' in conflict.value.message
    assert ".spec.replicas" in conflict.value.message
    # ... the same value is no conflict: both own it.
    shared = server_apply(
        created,
        {**gateway_sts(replicas=2, labels={"team": "imaging"}), "spec": {"replicas": 2}},
        "autoscaler",
        force=False,
    )
    assert "f:replicas" in managed(shared)["autoscaler"]["fieldsV1"]["f:spec"]
    assert "f:replicas" in managed(shared)[OPERATOR]["fieldsV1"]["f:spec"]

    # force takes the field over.
    forced = server_apply(
        shared,
        {**gateway_sts(labels={"team": "imaging"}), "spec": {"replicas": 5}},
        "autoscaler",
        force=True,
    )
    assert forced["spec"]["replicas"] == 5
    assert "f:replicas" not in managed(forced)[OPERATOR]["fieldsV1"]["f:spec"]

    # What the operator applied before and leaves out now goes; env merges by name;
    # the label the autoscaler also applied stays, only the operator's claim goes.
    pruned = server_apply(forced, gateway_sts(replicas=5, env={"A": "1"}))
    [gateway] = pruned["spec"]["template"]["spec"]["containers"]
    assert gateway["env"] == [{"name": "A", "value": "1"}]
    assert pruned["metadata"]["labels"]["team"] == "imaging"
    assert "f:team" not in managed(pruned)[OPERATOR]["fieldsV1"]["f:metadata"]["f:labels"]
    assert len(gateway["ports"]) == 1

    # An apply that changes nothing changes nothing, not even its entry's time.
    assert server_apply(pruned, gateway_sts(replicas=5, env={"A": "1"})) == pruned


def test_apply_to_a_custom_resource_uses_the_crd_schema() -> None:
    schema = custom_schema(
        {
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "callingAETitles": {
                            "type": "array",
                            "items": {"type": "string"},
                            "x-kubernetes-list-type": "set",
                        },
                        "tolerations": {"type": "array", "items": {"type": "object"}},
                    },
                }
            },
        }
    )

    def pool(spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "gatewaypool.io/v1alpha1",
            "kind": "GatewayPool",
            "metadata": {"name": "ct"},
            "spec": spec,
        }

    first = server_apply(
        None,
        pool({"callingAETitles": ["CT1"], "tolerations": [{"key": "a"}]}),
        "one",
        schema=schema,
    )
    merged = server_apply(
        first,
        pool({"callingAETitles": ["MR1"], "tolerations": [{"key": "b"}]}),
        "two",
        schema=schema,
    )
    assert merged["spec"]["callingAETitles"] == ["CT1", "MR1"], "a set list merges"
    assert merged["spec"]["tolerations"] == [{"key": "b"}], "a list without a type is atomic"


def test_defaults_are_filled_in() -> None:
    sts = stored(gateway_sts())["spec"]
    assert sts["podManagementPolicy"] == "OrderedReady"
    assert sts["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}
    assert sts["revisionHistoryLimit"] == 10
    assert sts["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    pod = sts["template"]["spec"]
    assert (pod["restartPolicy"], pod["dnsPolicy"], pod["schedulerName"]) == (
        "Always",
        "ClusterFirst",
        "default-scheduler",
    )
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod["securityContext"] == {}
    [container] = pod["containers"]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "File"
    assert container["ports"][0]["protocol"] == "TCP"

    router = stored(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "ct-router"},
            "spec": {
                "selector": {"matchLabels": {"a": "b"}},
                "template": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "router", "image": "router:latest"}]},
                },
            },
        }
    )["spec"]
    assert router["strategy"]["type"] == "RollingUpdate"
    assert router["strategy"]["rollingUpdate"]["maxSurge"] == "25%"
    assert router["revisionHistoryLimit"] == 10
    assert router["progressDeadlineSeconds"] == 600
    assert router["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Always"

    def service(spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ct"}, "spec": spec}

    created = stored(service({"ports": [{"port": 104}]}))
    spec = created["spec"]
    assert (spec["type"], spec["sessionAffinity"]) == ("ClusterIP", "None")
    assert spec["clusterIP"] == CLUSTER_IP
    assert spec["ipFamilies"] == ["IPv4"]
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert spec["ports"] == [{"port": 104, "protocol": "TCP", "targetPort": 104}]
    headless = stored(service({"clusterIP": "None", "ports": [{"port": 1}]}))
    assert headless["spec"]["clusterIP"] == "None"
    # A port applied without protocol is the defaulted TCP port, not a second one,
    # and an update keeps the allocated IP.
    applied = server_apply(
        {**created, "spec": {**spec, "clusterIP": "10.96.0.99", "clusterIPs": ["10.96.0.99"]}},
        service({"ports": [{"port": 104, "name": "dicom"}]}),
    )
    assert [(p["port"], p["protocol"], p["name"]) for p in applied["spec"]["ports"]] == [
        (104, "TCP", "dicom")
    ]
    assert applied["spec"]["clusterIP"] == "10.96.0.99"


def test_autoscaler_defaults_are_filled_in() -> None:
    """autoscaling/v2 SetDefaults_HorizontalPodAutoscaler, as the real server applies it."""
    target = {"apiVersion": "gatewaypool.io/v1alpha1", "kind": "GatewayPool", "name": "ct"}

    def hpa(**spec: Any) -> Any:
        return stored(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "ct"},
                "spec": {"scaleTargetRef": target, "maxReplicas": 3, **spec},
            }
        )["spec"]

    bare = hpa()
    assert bare["minReplicas"] == 1
    assert bare["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80},
            },
        }
    ]
    assert "behavior" not in bare, "no behavior sent, none stored"

    partial = hpa(behavior={"scaleDown": {"stabilizationWindowSeconds": 600}})["behavior"]
    up, down = partial["scaleUp"], partial["scaleDown"]
    assert (up["stabilizationWindowSeconds"], up["selectPolicy"]) == (0, "Max")
    assert up["policies"] == [
        {"type": "Pods", "value": 4, "periodSeconds": 15},
        {"type": "Percent", "value": 100, "periodSeconds": 15},
    ]
    assert (down["stabilizationWindowSeconds"], down["selectPolicy"]) == (600, "Max")
    assert down["policies"] == [{"type": "Percent", "value": 100, "periodSeconds": 15}]
    # The scale-down window alone stays unset: the controller's flag decides it.
    unset = hpa(behavior={"scaleUp": {"selectPolicy": "Min"}})["behavior"]
    assert unset["scaleUp"]["selectPolicy"] == "Min"
    assert "stabilizationWindowSeconds" not in unset["scaleDown"]


def test_a_list_map_key_twice_is_named_as_the_server_names_it() -> None:
    # The real server cannot build its typed patch object: a 500 naming list and key.
    body = gateway_sts()
    body["spec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "A", "value": "1"},
        {"name": "A", "value": "2"},
    ]
    assert duplicate_entries(body, schema_of(body)) == (
        '.spec.template.spec.containers[name="gateway"].env: duplicate entries for key [name="A"]'
    )
    ports = gateway_sts()
    ports["spec"]["template"]["spec"]["containers"][0]["ports"].append(
        {"name": "again", "containerPort": 4242, "protocol": "TCP"}
    )
    found = duplicate_entries(ports, schema_of(ports))
    assert found is not None and '[containerPort=4242,protocol="TCP"]' in found
    assert duplicate_entries(gateway_sts(), schema_of(ports)) is None


def test_empty_strings_of_omitempty_fields_are_dropped() -> None:
    # The server encodes its Go structs again: optional strings are omitempty.
    body = gateway_sts(env={"EMPTY": "", "SET": "1"})
    body["spec"]["template"]["spec"]["tolerations"] = [{"key": "", "operator": "Exists"}]
    body["spec"]["volumeClaimTemplates"] = [
        {"metadata": {"name": "data"}, "spec": {"storageClassName": "", "accessModes": []}}
    ]
    result = server_apply(None, body)
    pod = result["spec"]["template"]["spec"]
    assert pod["containers"][0]["env"] == [{"name": "EMPTY"}, {"name": "SET", "value": "1"}]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    # A pointer to "" is kept (no storage class at all); so are map entries.
    assert result["spec"]["volumeClaimTemplates"][0]["spec"]["storageClassName"] == ""
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "m"}}
    assert stored({**config_map, "data": {"k": ""}})["data"] == {"k": ""}


def test_quantities_are_canonical() -> None:
    body = gateway_sts()
    container = body["spec"]["template"]["spec"]["containers"][0]
    container["resources"] = {
        "requests": {"cpu": "1000m", "memory": "1024Mi"},
        "limits": {"cpu": "0.5", "memory": "1.5Gi"},
    }
    body["spec"]["template"]["spec"]["volumes"] = [
        {"name": "scratch", "emptyDir": {"sizeLimit": "2000000"}}
    ]
    body["spec"]["volumeClaimTemplates"] = [
        {
            "metadata": {"name": "data"},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "1024Gi"}},
            },
        }
    ]
    result = stored(body)
    pod = result["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"cpu": "500m", "memory": "1536Mi"},
    }
    assert pod["volumes"][0]["emptyDir"]["sizeLimit"] == "2M"
    claim = result["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Ti"
    container["resources"] = {"requests": {"cpu": "lots"}}
    with pytest.raises(ApiError) as bad:
        stored(body)
    assert bad.value.status == 400
    assert "cpu" in bad.value.message
