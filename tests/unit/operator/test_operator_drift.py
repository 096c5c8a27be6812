"""The local decision whether an apply changes anything agrees with server-side apply.

The oracle is the API emulator's own server-side apply (the pure function
under ``support.kubeemu.apply``, with the real OpenAPI schemas,
defaulting and canonical quantities): for two specs A and B, after applying
A's children, ``drift.apply_change(children(B), live)`` must say "nothing"
exactly when applying B would leave the object as it is.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gatewaypool_operator import drift
from gatewaypool_operator.children.desired import build_children
from gatewaypool_operator.children.names import selector_labels
from gatewaypool_operator.spec.parse import parse_spec
from support.kubeemu.apply import apply as server_apply
from support.kubeemu.defaults import apply_defaults, canonicalize_quantities, drop_empty_strings
from support.kubeemu.schemas import Schema, builtin_schema

NS = "radiology"
OWNER = {
    "apiVersion": "gatewaypool.io/v1alpha1",
    "kind": "GatewayPool",
    "name": "ct",
    "uid": "u-1",
    "controller": True,
    "blockOwnerDeletion": True,
}


def objects(spec: dict[str, Any]) -> list[dict[str, Any]]:
    parsed = parse_spec(spec, default_router_image="gp:1")
    built = build_children(
        name="ct",
        namespace=NS,
        spec=parsed,
        map_data={"map.json": "{}"},
        gateway_replicas=parsed.replicas,
    )
    for obj in built:
        obj["metadata"]["ownerReferences"] = [OWNER]
    return built


def schema_of(obj: dict[str, Any]) -> Schema:
    schema = builtin_schema(obj["apiVersion"], obj["kind"])
    assert schema is not None, obj["kind"]
    return schema


def applied(live: dict[str, Any] | None, obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` applied by the operator's manager, as the API server stores it."""
    schema = schema_of(obj)

    def finish(candidate: dict[str, Any]) -> dict[str, Any]:
        new = drop_empty_strings(copy.deepcopy(candidate), schema)
        apply_defaults(
            obj["apiVersion"], obj["kind"], new, old=live, allocate_ip=lambda: "10.96.0.10"
        )
        result: dict[str, Any] = canonicalize_quantities(new, schema)
        return result

    return server_apply(
        copy.deepcopy(live),
        copy.deepcopy(obj),
        schema,
        manager=drift.MANAGER,
        force=True,
        api_version=obj["apiVersion"],
        subresource=None,
        status_apart=obj["kind"] in ("StatefulSet", "Deployment"),
        finish=finish,
    )


def content(obj: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(obj)
    result["metadata"].pop("managedFields", None)
    return result


def base_spec(**gateway: Any) -> dict[str, Any]:
    return {"replicas": 2, "gateway": {"image": "scp:1", **gateway}}


quantities = st.sampled_from(["1", 1, "1000m", "500m", "0.5", "1024Mi", "1Gi", "2Gi", "100M"])
# D is empty: the server drops the empty value (omitempty).
env = st.lists(st.sampled_from(["A", "B", "C", "D"]), unique=True, max_size=4).map(
    lambda names: [{"name": n, "value": "" if n == "D" else n.lower()} for n in names]
)
resources = st.fixed_dictionaries(
    {},
    optional={
        "requests": st.fixed_dictionaries({}, optional={"cpu": quantities, "memory": quantities}),
        "limits": st.fixed_dictionaries({}, optional={"cpu": quantities, "memory": quantities}),
    },
)
tolerations = st.lists(
    st.sampled_from(
        [
            {"key": "dicom", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"},
            # Every taint; the server drops the empty key and effect (omitempty).
            {"key": "", "operator": "Exists", "effect": ""},
        ]
    ),
    unique_by=lambda t: t["key"],
    max_size=2,
)
gateways = st.fixed_dictionaries(
    {
        "port": st.sampled_from([104, 4242]),
        "env": env,
        "resources": resources,
        "podTemplate": st.fixed_dictionaries(
            {},
            optional={
                "nodeSelector": st.dictionaries(
                    st.sampled_from(["disk", "zone"]), st.sampled_from(["ssd", "a"]), max_size=2
                ),
                "tolerations": tolerations,
                "labels": st.dictionaries(
                    st.sampled_from(["team", "tier"]), st.sampled_from(["x", "y"]), max_size=2
                ),
            },
        ),
    },
    optional={
        "storage": st.fixed_dictionaries(
            {"size": st.sampled_from(["10Gi", "10240Mi", "20Gi"])},
        )
    },
)


@settings(max_examples=60, deadline=None)
@given(first=gateways, second=gateways)
def test_no_change_reported_exactly_when_the_apply_changes_nothing(
    first: dict[str, Any], second: dict[str, Any]
) -> None:
    before = objects(base_spec(**first))
    after = objects(base_spec(**second))
    for old, new in zip(before, after, strict=True):
        live = applied(None, old)
        assert drift.apply_change(old, live) is None, (old["kind"], "right after applying it")
        result = applied(live, new)
        changes = content(result) != content(live)
        reason = drift.apply_change(new, live)
        assert (reason is not None) == changes, (new["kind"], reason)


def test_quantities_compare_by_value() -> None:
    live = applied(None, objects(base_spec(resources={"requests": {"cpu": "1000m"}}))[5])
    assert live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"] == {
        "cpu": "1"
    }
    for cpu in (1, "1", "1000m"):
        [sts] = [
            o
            for o in objects(base_spec(resources={"requests": {"cpu": cpu}}))
            if o["kind"] == "StatefulSet"
        ]
        assert drift.apply_change(sts, live) is None, cpu


def test_a_removed_env_var_is_a_change_and_names_the_field() -> None:
    def sts(names: list[str]) -> dict[str, Any]:
        spec = base_spec(env=[{"name": n, "value": "1"} for n in names])
        [found] = [o for o in objects(spec) if o["kind"] == "StatefulSet"]
        return found

    live = applied(None, sts(["A", "B"]))
    reason = drift.apply_change(sts(["A"]), live)
    assert reason is not None and 'env[name="B"]' in reason and reason.endswith("removed")


def test_empty_strings_the_server_drops_are_no_drift() -> None:
    """``value: ""`` and a toleration's ``key: ""`` come back absent (omitempty)."""
    spec = base_spec(
        env=[{"name": "EMPTY", "value": ""}, {"name": "SET", "value": "1"}],
        podTemplate={"tolerations": [{"key": "", "operator": "Exists"}]},
    )
    [sts] = [o for o in objects(spec) if o["kind"] == "StatefulSet"]
    live = applied(None, sts)
    pod = live["spec"]["template"]["spec"]
    assert pod["containers"][0]["env"] == [{"name": "EMPTY"}, {"name": "SET", "value": "1"}]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert drift.apply_change(sts, live) is None
    # A value set since is still a change, and an empty one that was set before too.
    pod["containers"][0]["env"][0]["value"] = "x"
    assert drift.apply_change(sts, live) == (
        '.spec.template.spec.containers[name="gateway"].env[name="EMPTY"].value differs'
    )


def test_other_managers_fields_and_server_defaults_are_ignored() -> None:
    [sts] = [o for o in objects(base_spec()) if o["kind"] == "StatefulSet"]
    live = applied(None, sts)
    live["metadata"]["labels"]["added-by"] = "someone-else"
    live["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "X", "value": "1"}]
    assert live["spec"]["template"]["spec"]["containers"][0]["terminationMessagePath"]
    assert drift.apply_change(sts, live) is None


def test_an_object_never_applied_by_the_operator_is_applied_once() -> None:
    [sts] = [o for o in objects(base_spec()) if o["kind"] == "StatefulSet"]
    live = applied(None, sts)
    live["metadata"]["managedFields"] = []
    assert drift.apply_change(sts, live) == "not yet applied by gatewaypool-operator"


def test_immutable_changes() -> None:
    def sts(**gateway: Any) -> dict[str, Any]:
        [found] = [o for o in objects(base_spec(**gateway)) if o["kind"] == "StatefulSet"]
        return found

    plain = applied(None, sts())
    stored = applied(None, sts(storage={"size": "10Gi"}))
    assert drift.immutable_change(sts(), plain) is None
    assert drift.immutable_change(sts(port=4242, env=[{"name": "A"}]), plain) is None
    assert drift.immutable_change(sts(storage={"size": "10240Mi"}), stored) is None
    added = drift.immutable_change(sts(storage={"size": "10Gi"}), plain)
    assert added == ".spec.volumeClaimTemplates differs"
    assert drift.immutable_change(sts(storage={"size": "20Gi"}), stored) is not None
    assert drift.immutable_change(sts(), stored) == ".spec.volumeClaimTemplates removed"


@given(spec=gateways, name=st.sampled_from(["ct", "mr-triage", "a"]))
def test_selectors_come_from_the_pool_name_only(spec: dict[str, Any], name: str) -> None:
    parsed = parse_spec(base_spec(**spec), default_router_image="gp:1")
    for obj in build_children(
        name=name, namespace=NS, spec=parsed, map_data=None, gateway_replicas=1
    ):
        selector = (obj.get("spec") or {}).get("selector")
        if obj["kind"] in ("StatefulSet", "Deployment", "PodDisruptionBudget"):
            component = "gateway" if obj["kind"] != "Deployment" else "router"
            if obj["metadata"]["name"].endswith("-router"):
                component = "router"
            assert selector == {"matchLabels": selector_labels(name, component)}


def _list_fields(
    value: Any, schema: Schema, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], Schema]]:
    """Every list in ``value`` with its schema, except lists inside atomic lists.

    Those are compared whole with their atomic list, so their keys do not matter.
    """
    found: list[tuple[tuple[str, ...], Schema]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            found += _list_fields(child, schema.field(key), (*path, f"f:{key}"))
    elif isinstance(value, list):
        found.append((path, schema))
        if schema.list_type == "map":
            for item in value:
                found += _list_fields(item, schema.items, (*path, "k:{}"))
    return found


def test_list_keys_agree_with_the_real_schemas() -> None:
    spec = base_spec(
        env=[{"name": "A", "value": "1"}],
        storage={"size": "1Gi"},
        podTemplate={
            "tolerations": [{"key": "a", "operator": "Exists"}],
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}
            ],
        },
    )
    seen = 0
    for obj in objects(spec):
        for path, schema in _list_fields(obj, schema_of(obj), ()):
            expected = schema.map_keys if schema.list_type == "map" else ()
            assert drift._keys(path) == expected, (obj["kind"], drift.render(path))
            seen += 1
    assert seen > 20


TLS_ROUTERS: dict[str, dict[str, Any]] = {
    "plain": {},
    "plain-and-tls": {"tls": {"secretName": "router-tls"}},
    "tls-only": {"plainPort": False, "tls": {"secretName": "router-tls"}},
    "tls-other-secret": {"plainPort": False, "tls": {"secretName": "router-tls-2"}},
    "mtls": {
        "tls": {
            "secretName": "router-tls",
            "clientCASecretName": "ca",
            "callerSubjects": [{"aeTitle": "CT01", "subject": "CN=ct01"}],
        }
    },
    "tls-port-moved": {"tls": {"secretName": "router-tls", "port": 4443}},
}
GATEWAY_TLS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "tls": {"caSecretName": "gw-ca"},
    "mtls": {"caSecretName": "gw-ca", "clientCertSecretName": "router-gw"},
}


def tls_spec(router: str, gateway: str) -> dict[str, Any]:
    spec = base_spec()
    spec["router"] = TLS_ROUTERS[router]
    if GATEWAY_TLS[gateway] is not None:
        spec["gateway"]["tls"] = GATEWAY_TLS[gateway]
    return spec


def test_a_tls_change_is_seen_and_rolls_the_routers_and_its_removal_removes_it() -> None:
    """Every change of TLS settings is drift where the apply changes something, and a
    change of the router pods' TLS settings changes their template: a rollout."""
    combos = [(router, "plain") for router in TLS_ROUTERS]
    combos += [("plain", "tls"), ("plain", "mtls"), ("mtls", "mtls")]
    router_kinds = {"Deployment", "Service", "NetworkPolicy"}

    def router_objects(combo: tuple[str, str]) -> list[dict[str, Any]]:
        return [
            o
            for o in objects(tls_spec(*combo))
            if o["kind"] in router_kinds and o["metadata"]["name"] == "ct-router"
        ]

    for first in combos:
        live_objects = {o["kind"]: applied(None, o) for o in router_objects(first)}
        for second in combos:
            for new in router_objects(second):
                live = live_objects[new["kind"]]
                result = applied(live, new)
                reason = drift.apply_change(new, live)
                assert (reason is not None) == (content(result) != content(live)), (first, second)
                if new["kind"] != "Deployment":
                    continue
                template_changed = result["spec"]["template"] != live["spec"]["template"]
                # Only the Service's TLS port may move without restarting a router.
                pods_differ = (
                    TLS_ROUTERS[first[0]] != TLS_ROUTERS[second[0]]
                    and {first[0], second[0]} != {"plain-and-tls", "tls-port-moved"}
                ) or first[1] != second[1]
                assert template_changed == pods_differ, (first, second)
                if second == ("plain", "plain"):
                    pod = result["spec"]["template"]["spec"]
                    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
                    assert "fsGroup" not in pod["securityContext"]


def test_the_gateways_certificate_comes_and_goes_with_its_field() -> None:
    """Adding, changing and removing serverCertSecretName is drift on the StatefulSet's
    template, and its removal leaves the gateway pods as they were without it."""
    variants: dict[str, dict[str, Any] | None] = {
        "none": None,
        "ca-only": {"caSecretName": "gw-ca"},
        "serving": {"caSecretName": "gw-ca", "serverCertSecretName": "gw-serving"},
        "serving-renamed": {"caSecretName": "gw-ca", "serverCertSecretName": "gw-serving-2"},
    }

    def statefulset(variant: str) -> dict[str, Any]:
        spec = base_spec()
        if variants[variant] is not None:
            spec["gateway"]["tls"] = variants[variant]
        [found] = [o for o in objects(spec) if o["kind"] == "StatefulSet"]
        return found

    for first in variants:
        live = applied(None, statefulset(first))
        for second in variants:
            new = statefulset(second)
            result = applied(live, new)
            reason = drift.apply_change(new, live)
            assert (reason is not None) == (content(result) != content(live)), (first, second)
            mounted = {first, second} & {"serving", "serving-renamed"}
            pods_differ = first != second and bool(mounted)
            assert (result["spec"]["template"] != live["spec"]["template"]) == pods_differ, (
                first,
                second,
            )
            if second in ("none", "ca-only"):
                pod = result["spec"]["template"]["spec"]
                assert [v["name"] for v in pod["volumes"]] == ["tmp"], (first, second)
                assert "fsGroup" not in pod["securityContext"], (first, second)
                mounts = pod["containers"][0]["volumeMounts"]
                assert mounts == [{"name": "tmp", "mountPath": "/tmp"}], (first, second)


def test_a_list_map_key_given_twice_is_found_and_named() -> None:
    """What server-side apply refuses with a 500 is refused before it is sent."""
    [sts] = [o for o in objects(base_spec()) if o["kind"] == "StatefulSet"]
    assert drift.duplicate_key(sts) is None
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    twice = copy.deepcopy(sts)
    twice["spec"]["template"]["spec"]["containers"][0]["ports"].append(
        {"name": "other", "containerPort": container["ports"][0]["containerPort"]}
    )
    assert drift.duplicate_key(twice) == (
        '.spec.template.spec.containers[name="gateway"]'
        '.ports[containerPort=104,protocol="TCP"] appears twice'
    )
    mounts = copy.deepcopy(sts)
    mounts["spec"]["template"]["spec"]["containers"][0]["volumeMounts"].append(
        {"name": "other", "mountPath": "/tmp"}
    )
    assert drift.duplicate_key(mounts) == (
        '.spec.template.spec.containers[name="gateway"]'
        '.volumeMounts[mountPath="/tmp"] appears twice'
    )
    volumes = copy.deepcopy(sts)
    volumes["spec"]["template"]["spec"]["volumes"].append(pod["volumes"][0])
    assert drift.duplicate_key(volumes) == '.spec.template.spec.volumes[name="tmp"] appears twice'
    # UDP and TCP on one port are two ports; a Service port is keyed by port and protocol.
    both = copy.deepcopy(sts)
    both["spec"]["template"]["spec"]["containers"][0]["ports"].append(
        {"containerPort": container["ports"][0]["containerPort"], "protocol": "UDP"}
    )
    assert drift.duplicate_key(both) is None
