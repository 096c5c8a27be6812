"""The operator's spec model: contract defaults, and errors that name field and value."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewaypool_operator.spec.fields import SpecError, thaw
from gatewaypool_operator.spec.parse import MAX_NAME_LENGTH, check_name, parse_spec
from gatewaypool_operator.spec.types import (
    DEFAULT_TLS_PORT,
    AutoscalingSpec,
    CallerSubject,
    GatewayTLSSpec,
    PoolSpec,
    RouterTimeouts,
    RouterTLSSpec,
)
from support.crd import apply_defaults, spec_schema
from support.specs import full

OPERATOR_IMAGE = "registry.example.org/gatewaypool:0.1.0"


def parse(spec: Any) -> PoolSpec:
    return parse_spec(spec, default_router_image=OPERATOR_IMAGE)


def minimal() -> dict[str, Any]:
    return {"gateway": {"image": "orthancteam/orthanc:24.1.2"}}


def with_value(spec: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy of `spec` with the dotted `path` (below ``spec``) set to `value`."""
    result = copy.deepcopy(spec)
    node = result
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return result


# --- defaults ------------------------------------------------------------------


def test_minimal_spec_gets_what_the_crd_does_not_default() -> None:
    # The CRD's defaults are checked against the operator's below; these are the operator's own.
    spec = parse(minimal())
    assert spec.router.image == OPERATOR_IMAGE
    assert spec.gateway.storage is None
    assert spec.gateway.pod_template.topology_spread_constraints is None
    assert spec.handover.failover_after_seconds is None
    assert spec.autoscaling is None


def test_storage_defaults_its_mount_path_and_class() -> None:
    storage = parse(with_value(minimal(), "gateway.storage", {"size": "10Gi"})).gateway.storage
    assert storage is not None
    assert (storage.size, storage.storage_class_name, storage.mount_path) == (
        "10Gi",
        None,
        "/var/lib/gateway",
    )


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"gateway.storage": {"size": "10Gi"}},
        {"gateway.podTemplate": {}},
        {"router": {}, "handover": {}, "networkPolicy": {}},
        {"router.tls": {"secretName": "router-tls"}, "gateway.tls": {"caSecretName": "ca"}},
        {"autoscaling": {"maxReplicas": 4, "targets": {"studiesInFlight": 2}}},
        {
            "handover": {"maxDrainSeconds": 900},
            "autoscaling": {"maxReplicas": 4, "targets": {"studiesInFlight": 2}, "scaleDown": {}},
        },
    ],
    ids=[
        "minimal",
        "storage",
        "pod-template",
        "empty-sections",
        "tls",
        "autoscaling",
        "scale-down",
    ],
)
def test_a_spec_defaulted_by_the_api_server_parses_the_same(extra: dict[str, Any]) -> None:
    """The operator defaults what the API server would; both ways give one PoolSpec.

    The server's side is the CRD's own ``default`` keywords, applied as the
    API server applies them: the contract's defaults have one copy.
    """
    raw = minimal()
    for path, value in extra.items():
        raw = with_value(raw, path, value)
    server_defaulted = apply_defaults(raw, spec_schema())
    assert server_defaulted != raw  # the CRD filled something in
    assert parse(server_defaulted) == parse(raw)


def test_explicit_nulls_count_as_unset() -> None:
    spec = minimal() | {"router": None, "handover": None, "replicas": None}
    assert parse(spec) == parse(minimal())


def test_full_spec_keeps_every_value() -> None:
    spec = parse(full())
    assert (spec.replicas, spec.buckets) == (4, 1024)
    gateway = spec.gateway
    assert (gateway.image_pull_policy, gateway.command, gateway.args) == (
        "Always",
        ("Orthanc",),
        ("/etc/orthanc/",),
    )
    assert (gateway.port, gateway.ae_title) == (4242, "ORTHANC")
    assert thaw(gateway.env) == full()["gateway"]["env"]
    assert thaw(gateway.resources) == full()["gateway"]["resources"]
    assert gateway.storage is not None
    assert gateway.storage.storage_class_name == "fast"
    assert gateway.storage.mount_path == "/data"
    template = gateway.pod_template
    assert dict(template.labels) == {"team": "radiology"}
    assert thaw(template.tolerations) == full()["gateway"]["podTemplate"]["tolerations"]
    assert template.service_account_name == "gateway"
    router = spec.router
    assert (router.replicas, router.image, router.service.type) == (
        3,
        "registry.example.org/router:1",
        "LoadBalancer",
    )
    assert router.allowed_calling_ae_titles == ("CT1", "MR ROOM 2")
    assert router.timeouts == RouterTimeouts(gateway_seconds=8, gateway_idle_release_seconds=4)
    assert (spec.handover.quiet_seconds, spec.handover.max_drain_seconds) == (60, 900)


def test_router_image_from_the_spec_wins_over_the_operators() -> None:
    spec = parse(with_value(minimal(), "router.image", "mine:2"))
    assert spec.router.image == "mine:2"


def test_no_router_image_anywhere_is_refused() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(minimal(), default_router_image="")
    assert caught.value.field_path == "spec.router.image"
    assert "GATEWAYPOOL_IMAGE" in str(caught.value)


def test_replicas_may_equal_buckets_and_be_zero() -> None:
    assert parse(minimal() | {"replicas": 8, "buckets": 8}).replicas == 8
    assert parse(minimal() | {"replicas": 0}).replicas == 0


# --- DICOM TLS --------------------------------------------------------------------

CT01_SUBJECT = "CN=ct01.radiology.example.org,O=Example Hospital"


def test_without_tls_the_router_serves_plain_dicom_only() -> None:
    router = parse(minimal()).router
    assert (router.plain_port, router.tls) == (True, None)
    assert parse(minimal()).gateway.tls is None


def test_tls_settings_are_kept() -> None:
    raw = with_value(
        minimal(),
        "router",
        {
            "plainPort": False,
            "allowedCallingAETitles": ["CT01", "MR1"],
            "tls": {
                "secretName": "router-tls",
                "port": 11112,
                "clientCASecretName": "modality-ca",
                "callerSubjects": [{"aeTitle": "CT01", "subject": CT01_SUBJECT}],
            },
        },
    )
    raw["gateway"]["tls"] = {
        "caSecretName": "gateway-ca",
        "clientCertSecretName": "router-gw",
        "serverCertSecretName": "gw-serving",
    }
    spec = parse(raw)
    assert spec.router.plain_port is False
    assert spec.router.tls == RouterTLSSpec(
        secret_name="router-tls",
        port=11112,
        client_ca_secret_name="modality-ca",
        caller_subjects=(CallerSubject(ae_title="CT01", subject=CT01_SUBJECT),),
    )
    assert spec.gateway.tls == GatewayTLSSpec(
        ca_secret_name="gateway-ca",
        client_cert_secret_name="router-gw",
        server_cert_secret_name="gw-serving",
    )
    assert parse(with_value(minimal(), "router.tls", {"secretName": "s"})).router.tls == (
        RouterTLSSpec(secret_name="s", port=DEFAULT_TLS_PORT)
    )


def mtls(*subjects: dict[str, Any], allowed: list[str] | None = None) -> dict[str, Any]:
    router: dict[str, Any] = {
        "tls": {
            "secretName": "router-tls",
            "clientCASecretName": "modality-ca",
            "callerSubjects": list(subjects),
        }
    }
    if allowed is not None:
        router["allowedCallingAETitles"] = allowed
    return with_value(minimal(), "router", router)


@pytest.mark.parametrize(
    ("raw", "field_path", "words"),
    [
        (
            with_value(
                minimal(),
                "router.tls",
                {"secretName": "s", "callerSubjects": [{"aeTitle": "CT01", "subject": "CN=a"}]},
            ),
            "spec.router.tls.callerSubjects",
            "needs spec.router.tls.clientCASecretName",
        ),
        (
            mtls({"aeTitle": "CT01", "subject": "CN=a"}, allowed=["MR1"]),
            "spec.router.tls.callerSubjects[0].aeTitle",
            "is not in spec.router.allowedCallingAETitles",
        ),
        (
            mtls({"aeTitle": "CT01", "subject": "CN=a"}, {"aeTitle": "CT01", "subject": "CN=b"}),
            "spec.router.tls.callerSubjects[1].aeTitle",
            "appears twice",
        ),
        (
            mtls({"aeTitle": "CT\\01", "subject": "CN=a"}),
            "spec.router.tls.callerSubjects[0].aeTitle",
            "is not an AE title (no backslash)",
        ),
        (
            mtls({"aeTitle": "CT=01", "subject": "CN=a"}),
            "spec.router.tls.callerSubjects[0].aeTitle",
            "contains '='",
        ),
        (
            mtls({"aeTitle": "CT01", "subject": "ct01.example.org"}),
            "spec.router.tls.callerSubjects[0].subject",
            "is not a distinguished name in RFC 4514 form",
        ),
        (
            mtls({"aeTitle": "CT01", "subject": "CN=" + "x" * 1024}),
            "spec.router.tls.callerSubjects[0].subject",
            "is not a distinguished name in RFC 4514 form",
        ),
        (
            mtls({"aeTitle": "CT01"}),
            "spec.router.tls.callerSubjects[0].subject",
            "is required",
        ),
        (
            mtls({"aeTitle": "CT01", "subject": "CN=a", "issuer": "CN=ca"}),
            "spec.router.tls.callerSubjects[0].issuer",
            "has no field 'issuer'",
        ),
        (
            with_value(minimal(), "router", {"port": 2762, "tls": {"secretName": "s"}}),
            "spec.router.tls.port",
            "is spec.router.port too",
        ),
        (
            with_value(minimal(), "router.plainPort", False),
            "spec.router.plainPort",
            "needs spec.router.tls",
        ),
    ],
    ids=[
        "subjects-without-client-ca",
        "bound-title-not-allowed",
        "title-twice",
        "title-backslash",
        "title-equals",
        "subject-not-a-dn",
        "subject-too-long",
        "subject-missing",
        "unknown-field",
        "port-clash",
        "no-port-at-all",
    ],
)
def test_tls_mistakes_are_refused_clearly(raw: dict[str, Any], field_path: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse(raw)
    assert caught.value.field_path == field_path
    assert words in str(caught.value)


def test_bound_titles_need_not_be_listed_when_any_caller_is_allowed() -> None:
    subject = {"aeTitle": "CT01", "subject": CT01_SUBJECT}
    assert parse(mtls(subject)).router.allowed_calling_ae_titles == ()
    assert parse(mtls(subject, allowed=["CT01"])).router.allowed_calling_ae_titles == ("CT01",)


def test_the_plain_port_may_take_the_tls_ports_number_when_it_is_off() -> None:
    raw = with_value(
        minimal(), "router", {"plainPort": False, "tls": {"secretName": "s", "port": 11112}}
    )
    assert parse(raw).router.tls == RouterTLSSpec(secret_name="s", port=11112)


# --- immutability --------------------------------------------------------------


def test_spec_is_frozen_and_detached_from_its_input() -> None:
    raw = full()
    spec = parse(raw)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.replicas = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.gateway.pod_template.labels["team"] = "x"  # type: ignore[index]
    with pytest.raises(TypeError):
        spec.gateway.env[0]["name"] = "x"  # type: ignore[index]
    raw["gateway"]["env"][0]["value"] = "changed"
    raw["gateway"]["resources"]["requests"]["cpu"] = "9"
    assert spec.gateway.env[0]["value"] == "gw"
    assert spec.gateway.resources["requests"]["cpu"] == "500m"


def test_thaw_gives_fresh_plain_copies() -> None:
    spec = parse(full())
    first = thaw(spec.gateway.env)
    first[0]["value"] = "changed"
    assert thaw(spec.gateway.env)[0]["value"] == "gw"
    assert isinstance(thaw(spec.gateway.resources), dict)
    assert isinstance(thaw(spec.gateway.pod_template.tolerations), list)


# --- errors --------------------------------------------------------------------


def test_error_text_names_field_and_value() -> None:
    with pytest.raises(SpecError) as caught:
        parse(minimal() | {"replicas": 5000})
    error = caught.value
    assert str(error) == "spec.replicas: 5000 exceeds spec.buckets (4096)"
    assert (error.field_path, error.value) == ("spec.replicas", 5000)
    assert isinstance(error, ValueError)


MISSING = SpecError.MISSING

# (field below spec, value, expected field path of the error, expected value in the error)
INVALID: list[tuple[str, Any, str, Any]] = [
    ("router.timeouts.gatewaySeconds", 0, "spec.router.timeouts.gatewaySeconds", 0),
    ("router.timeouts.connectSeconds", 301, "spec.router.timeouts.connectSeconds", 301),
    ("router.timeouts.senderIdleSeconds", 1.5, "spec.router.timeouts.senderIdleSeconds", 1.5),
    ("router.timeouts.stallWarningSeconds", "10", "spec.router.timeouts.stallWarningSeconds", "10"),
    ("router.timeouts.gatewaySecs", 5, "spec.router.timeouts.gatewaySecs", 5),
    ("replicas", -1, "spec.replicas", -1),
    ("replicas", 1025, "spec.replicas", 1025),
    ("replicas", "3", "spec.replicas", "3"),
    ("replicas", 2.0, "spec.replicas", 2.0),
    ("replicas", True, "spec.replicas", True),
    ("buckets", 0, "spec.buckets", 0),
    ("buckets", 65537, "spec.buckets", 65537),
    ("buckets", "4096", "spec.buckets", "4096"),
    ("gateway", "orthanc", "spec.gateway", "orthanc"),
    ("gateway.image", "", "spec.gateway.image", ""),
    ("gateway.image", "orthanc latest", "spec.gateway.image", "orthanc latest"),
    ("gateway.image", 7, "spec.gateway.image", 7),
    ("gateway.imagePullPolicy", "Sometimes", "spec.gateway.imagePullPolicy", "Sometimes"),
    ("gateway.command", "Orthanc", "spec.gateway.command", "Orthanc"),
    ("gateway.command", ["Orthanc", 1], "spec.gateway.command[1]", 1),
    ("gateway.args", [None], "spec.gateway.args[0]", None),
    ("gateway.port", 0, "spec.gateway.port", 0),
    ("gateway.port", 65536, "spec.gateway.port", 65536),
    ("gateway.port", "104", "spec.gateway.port", "104"),
    ("gateway.aeTitle", "", "spec.gateway.aeTitle", ""),
    ("gateway.aeTitle", "A" * 17, "spec.gateway.aeTitle", "A" * 17),
    ("gateway.aeTitle", "CT\\1", "spec.gateway.aeTitle", "CT\\1"),
    ("gateway.aeTitle", "CT\t1", "spec.gateway.aeTitle", "CT\t1"),
    ("gateway.aeTitle", "É", "spec.gateway.aeTitle", "É"),
    ("gateway.aeTitle", "   ", "spec.gateway.aeTitle", "   "),
    ("gateway.env", {"A": "1"}, "spec.gateway.env", {"A": "1"}),
    ("gateway.env", ["A=1"], "spec.gateway.env[0]", "A=1"),
    ("gateway.env", [{"value": "1"}], "spec.gateway.env[0].name", MISSING),
    ("gateway.env", [{"name": ""}], "spec.gateway.env[0].name", ""),
    ("gateway.env", [{"name": "A", "value": 4242}], "spec.gateway.env[0].value", 4242),
    ("gateway.env", [{"name": "A", "valueFrom": "x"}], "spec.gateway.env[0].valueFrom", "x"),
    ("gateway.env", [{"name": "A"}, {"name": "A", "value": ""}], "spec.gateway.env[1].name", "A"),
    (
        "gateway.resources",
        {"claims": [{"name": "gpu"}]},
        "spec.gateway.resources.claims",
        [{"name": "gpu"}],
    ),
    (
        "router.resources",
        {"claims": [{"name": "gpu"}]},
        "spec.router.resources.claims",
        [{"name": "gpu"}],
    ),
    ("gateway.resources", [], "spec.gateway.resources", []),
    ("gateway.resources", {"limit": {}}, "spec.gateway.resources.limit", {}),
    ("gateway.resources", {"limits": 2}, "spec.gateway.resources.limits", 2),
    (
        "gateway.resources",
        {"limits": {"cpu": "lots"}},
        "spec.gateway.resources.limits['cpu']",
        "lots",
    ),
    (
        "gateway.resources",
        {"requests": {"memory": "-1Gi"}},
        "spec.gateway.resources.requests['memory']",
        "-1Gi",
    ),
    ("gateway.storage", "10Gi", "spec.gateway.storage", "10Gi"),
    ("gateway.storage", {}, "spec.gateway.storage.size", MISSING),
    ("gateway.storage", {"size": "10 GB"}, "spec.gateway.storage.size", "10 GB"),
    ("gateway.storage", {"size": "0"}, "spec.gateway.storage.size", "0"),
    ("gateway.storage", {"size": "-5Gi"}, "spec.gateway.storage.size", "-5Gi"),
    ("gateway.storage", {"size": 10}, "spec.gateway.storage.size", 10),
    (
        "gateway.storage",
        {"size": "1Gi", "mountPath": "data"},
        "spec.gateway.storage.mountPath",
        "data",
    ),
    (
        "gateway.storage",
        {"size": "1Gi", "mountPath": "/tmp/"},
        "spec.gateway.storage.mountPath",
        "/tmp/",
    ),
    ("gateway.storage", {"size": "1Gi", "mountPath": "/"}, "spec.gateway.storage.mountPath", "/"),
    (
        "gateway.storage",
        {"size": "1Gi", "storageClassName": "Fast SSD"},
        "spec.gateway.storage.storageClassName",
        "Fast SSD",
    ),
    (
        "gateway.storage",
        {"size": "1Gi", "volumeMode": "Block"},
        "spec.gateway.storage.volumeMode",
        "Block",
    ),
    (
        "gateway.podTemplate",
        {"labels": {"app.kubernetes.io/instance": "other"}},
        "spec.gateway.podTemplate.labels['app.kubernetes.io/instance']",
        "other",
    ),
    (
        "gateway.podTemplate",
        {"labels": {"app.kubernetes.io/component": "router"}},
        "spec.gateway.podTemplate.labels['app.kubernetes.io/component']",
        "router",
    ),
    (
        "gateway.podTemplate",
        {"labels": {"bad key": "x"}},
        "spec.gateway.podTemplate.labels",
        "bad key",
    ),
    (
        "gateway.podTemplate",
        {"labels": {"team": "two words"}},
        "spec.gateway.podTemplate.labels['team']",
        "two words",
    ),
    (
        "gateway.podTemplate",
        {"labels": {"team": "x" * 64}},
        "spec.gateway.podTemplate.labels['team']",
        "x" * 64,
    ),
    (
        "gateway.podTemplate",
        {"labels": {"team": 3}},
        "spec.gateway.podTemplate.labels['team']",
        3,
    ),
    (
        "gateway.podTemplate",
        {"nodeSelector": {"zone": "a b"}},
        "spec.gateway.podTemplate.nodeSelector['zone']",
        "a b",
    ),
    (
        "gateway.podTemplate",
        {"annotations": {"Bad_Prefix/x": "y"}},
        "spec.gateway.podTemplate.annotations",
        "Bad_Prefix/x",
    ),
    (
        "gateway.podTemplate",
        {"tolerations": {"key": "x"}},
        "spec.gateway.podTemplate.tolerations",
        {"key": "x"},
    ),
    (
        "gateway.podTemplate",
        {"tolerations": ["x"]},
        "spec.gateway.podTemplate.tolerations[0]",
        "x",
    ),
    ("gateway.podTemplate", {"affinity": []}, "spec.gateway.podTemplate.affinity", []),
    (
        "gateway.podTemplate",
        {"priorityClassName": "High"},
        "spec.gateway.podTemplate.priorityClassName",
        "High",
    ),
    (
        "gateway.podTemplate",
        {"serviceAccountName": "my_account"},
        "spec.gateway.podTemplate.serviceAccountName",
        "my_account",
    ),
    (
        "gateway.podTemplate",
        {"hostNetwork": True},
        "spec.gateway.podTemplate.hostNetwork",
        True,
    ),
    ("gateway.imagePullPolicyy", "Always", "spec.gateway.imagePullPolicyy", "Always"),
    ("router", [], "spec.router", []),
    ("router.replicas", 0, "spec.router.replicas", 0),
    ("router.replicas", 101, "spec.router.replicas", 101),
    ("router.image", "a b", "spec.router.image", "a b"),
    ("router.aeTitle", "R" * 17, "spec.router.aeTitle", "R" * 17),
    ("router.aeTitle", " ", "spec.router.aeTitle", " "),
    ("router.port", 0, "spec.router.port", 0),
    ("router.port", 70000, "spec.router.port", 70000),
    ("router.serviceType", "ExternalName", "spec.router.serviceType", "ExternalName"),
    ("router.allowedCallingAETitles", "CT1", "spec.router.allowedCallingAETitles", "CT1"),
    (
        "router.allowedCallingAETitles",
        ["CT1", "MR\\2"],
        "spec.router.allowedCallingAETitles[1]",
        "MR\\2",
    ),
    (
        "router.allowedCallingAETitles",
        ["A" * 17],
        "spec.router.allowedCallingAETitles[0]",
        "A" * 17,
    ),
    ("router.allowedCallingAETitles", [7], "spec.router.allowedCallingAETitles[0]", 7),
    ("router.resources", {"limits": {"cpu": "x"}}, "spec.router.resources.limits['cpu']", "x"),
    ("router.tls", {}, "spec.router.tls.secretName", MISSING),
    ("router.tls", {"secretName": ""}, "spec.router.tls.secretName", MISSING),
    ("router.tls", {"secretName": "Router"}, "spec.router.tls.secretName", "Router"),
    ("router.tls", {"secretName": "r", "port": 0}, "spec.router.tls.port", 0),
    ("router.tls", {"secretName": "r", "port": 11112}, "spec.router.tls.port", 11112),
    (
        "router.tls",
        {"secretName": "r", "clientCASecretName": "a_b"},
        "spec.router.tls.clientCASecretName",
        "a_b",
    ),
    ("router.tls", {"secretName": "r", "key": "k"}, "spec.router.tls.key", "k"),
    ("router.plainPort", "no", "spec.router.plainPort", "no"),
    ("router.plainPort", False, "spec.router.plainPort", False),
    ("gateway.tls", {}, "spec.gateway.tls.caSecretName", MISSING),
    ("gateway.tls", "ca", "spec.gateway.tls", "ca"),
    (
        "gateway.tls",
        {"caSecretName": "ca", "clientCertSecretName": "A"},
        "spec.gateway.tls.clientCertSecretName",
        "A",
    ),
    (
        "gateway.tls",
        {"caSecretName": "ca", "serverCertSecretName": "gw_serving"},
        "spec.gateway.tls.serverCertSecretName",
        "gw_serving",
    ),
    ("handover.quietSeconds", 0, "spec.handover.quietSeconds", 0),
    ("handover.quietSeconds", 3601, "spec.handover.quietSeconds", 3601),
    ("handover.quietSeconds", "30s", "spec.handover.quietSeconds", "30s"),
    ("handover.maxDrainSeconds", 9, "spec.handover.maxDrainSeconds", 9),
    ("handover.maxDrainSeconds", 86401, "spec.handover.maxDrainSeconds", 86401),
    ("handover.maxDrainSeconds", 20, "spec.handover.maxDrainSeconds", 20),
    ("handover.quietSeconds", 900, "spec.handover.maxDrainSeconds", 600),
    ("status", {}, "spec.status", {}),
    (
        "gateway.podTemplate.tolerations",
        [{"key": "a", "operator": "Maybe"}],
        "spec.gateway.podTemplate.tolerations[0].operator",
        "Maybe",
    ),
    (
        "gateway.podTemplate.tolerations",
        [{"key": "a", "effect": "NoRun"}],
        "spec.gateway.podTemplate.tolerations[0].effect",
        "NoRun",
    ),
    (
        "gateway.podTemplate.tolerations",
        [{"key": "a", "operator": "Exists", "value": "x"}],
        "spec.gateway.podTemplate.tolerations[0].value",
        "x",
    ),
    (
        "gateway.podTemplate.affinity",
        {"nodeAfinity": {}},
        "spec.gateway.podTemplate.affinity.nodeAfinity",
        {},
    ),
    (
        "gateway.podTemplate.topologySpreadConstraints",
        [{"maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway"}],
        "spec.gateway.podTemplate.topologySpreadConstraints[0].maxSkew",
        0,
    ),
    (
        "gateway.podTemplate.topologySpreadConstraints",
        [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "Sometimes"}],
        "spec.gateway.podTemplate.topologySpreadConstraints[0].whenUnsatisfiable",
        "Sometimes",
    ),
    (
        "router.topologySpreadConstraints",
        [{"maxSkew": 1, "topologyKey": "zone"}],
        "spec.router.topologySpreadConstraints[0].whenUnsatisfiable",
        MISSING,
    ),
    ("networkPolicy.enabled", "yes", "spec.networkPolicy.enabled", "yes"),
    ("networkPolicy.extraIngress", [{"to": "x"}], "spec.networkPolicy.extraIngress[0].to", "x"),
    (
        "networkPolicy.extraIngress",
        [{"ports": [{"port": 70000}]}],
        "spec.networkPolicy.extraIngress[0].ports[0].port",
        70000,
    ),
    (
        "networkPolicy.extraIngress",
        [{"from": [{"pods": "x"}]}],
        "spec.networkPolicy.extraIngress[0].from[0].pods",
        "x",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "field_path", "shown"),
    INVALID,
    ids=[f"{path}={value!r}"[:60] for path, value, _, _ in INVALID],
)
def test_invalid_field_is_refused_naming_field_and_value(
    path: str, value: Any, field_path: str, shown: Any
) -> None:
    base = minimal()
    if path.endswith("maxDrainSeconds"):
        base["handover"] = {"quietSeconds": 40}  # so that 20 is in range but below it
    spec = with_value(base, path, value)
    with pytest.raises(SpecError) as caught:
        parse(spec)
    error = caught.value
    assert error.field_path == field_path
    assert error.value is shown if shown is MISSING else error.value == shown
    text = str(error)
    assert text.startswith(f"{field_path}: ")
    if shown is not MISSING:
        assert repr(shown) in text
    assert error.problem in text


@pytest.mark.parametrize(
    ("spec", "field_path"),
    [
        (None, "spec"),
        ([], "spec"),
        ({}, "spec.gateway"),
        ({"gateway": {}}, "spec.gateway.image"),
        ({"gateway": None}, "spec.gateway"),
        ({"gateway": {"image": None}}, "spec.gateway.image"),
    ],
)
def test_missing_required_parts_are_named(spec: Any, field_path: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse(spec)
    assert caught.value.field_path == field_path
    assert str(caught.value).startswith(f"{field_path}: ")


def test_long_values_are_shortened_in_the_message() -> None:
    with pytest.raises(SpecError) as caught:
        parse(with_value(minimal(), "gateway.image", "x " * 500))
    assert len(str(caught.value)) < 250
    assert "..." in str(caught.value)


# --- robustness ------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


def _crd_fields(node: dict[str, Any], prefix: str = "") -> list[str]:
    """Every field of the CRD's spec schema, as dotted paths below ``spec``."""
    fields: list[str] = []
    for key, child in (node.get("properties") or {}).items():
        fields.append(prefix + key)
        fields.extend(_crd_fields(child, f"{prefix}{key}."))
    return fields


# The fields the API server accepts: the operator must cope with any value in each.
FIELDS = _crd_fields(
    yaml.safe_load(
        (
            Path(__file__).resolve().parents[3] / "crds" / "gatewaypool.io_gatewaypools.yaml"
        ).read_text()
    )["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from(FIELDS), value=JSON)
def test_any_value_anywhere_gives_a_spec_or_a_spec_error(path: str, value: Any) -> None:
    """Junk in any field is a SpecError about that field, never a crash elsewhere."""
    base = minimal()
    if "storage." in path:
        base["gateway"]["storage"] = {"size": "1Gi"}
    if path.startswith("router.spool."):
        base["router"] = {"spool": {"size": "1Gi"}}
    if path.startswith("autoscaling."):
        base["autoscaling"] = {"maxReplicas": 4, "targets": {"studiesInFlight": 4}}
    if path.startswith("router.tls."):
        base["router"] = {"tls": {"secretName": "router-tls", "clientCASecretName": "ca"}}
    if path.startswith("gateway.tls."):
        base["gateway"]["tls"] = {"caSecretName": "gateway-ca"}
    spec = with_value(base, path, value)
    try:
        parse(spec)
    except SpecError as error:
        parent = "spec." + path
        related = (
            error.field_path.startswith(parent)
            or parent.startswith(error.field_path)
            # cross-field rules: buckets that fit fewer replicas, drain below quiet,
            # an autoscaler's range
            or error.field_path
            in {"spec.replicas", "spec.handover.maxDrainSeconds", "spec.autoscaling.maxReplicas"}
        )
        assert related, (path, str(error))


# --- names ----------------------------------------------------------


@pytest.mark.parametrize("name", ["ct-triage", "a", "a1", "x" * MAX_NAME_LENGTH])
def test_usable_pool_names(name: str) -> None:
    check_name(name)


@pytest.mark.parametrize(
    "name", ["", "1ct", "CT", "ct_triage", "ct.triage", "ct-", "x" * (MAX_NAME_LENGTH + 1)]
)
def test_pool_names_that_would_break_children_are_refused(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        check_name(name)
    assert caught.value.field_path == "metadata.name"
    assert repr(name) in str(caught.value)


def test_handover_and_scale_down_settings() -> None:
    from gatewaypool_operator.spec.fields import SpecError as _SpecError

    spec = parse_spec(
        {
            "gateway": {
                "image": "gw:1",
                "terminationGracePeriodSeconds": 120,
                "storage": {"size": "10Gi", "whenScaled": "Delete"},
            },
            "handover": {"failoverAfterSeconds": 90},
        },
        default_router_image="op:1",
    )
    assert spec.gateway.termination_grace_period_seconds == 120
    assert spec.gateway.storage is not None and spec.gateway.storage.when_scaled == "Delete"
    assert spec.handover.failover_after_seconds == 90
    defaults = parse_spec(
        {"gateway": {"image": "gw:1", "storage": {"size": "1Gi"}}}, default_router_image="op:1"
    )
    assert defaults.gateway.termination_grace_period_seconds == 30
    assert defaults.gateway.storage is not None and defaults.gateway.storage.when_scaled == "Retain"
    assert defaults.handover.failover_after_seconds is None
    for wrong in (
        {"gateway": {"image": "gw:1", "storage": {"size": "1Gi", "whenScaled": "Keep"}}},
        {"gateway": {"image": "gw:1", "terminationGracePeriodSeconds": -1}},
        {"gateway": {"image": "gw:1"}, "handover": {"failoverAfterSeconds": 5}},
    ):
        with pytest.raises(_SpecError):
            parse_spec(wrong, default_router_image="op:1")


# --- autoscaling ------------------------------------------------------------------

INVALID_FILES = Path(__file__).resolve().parents[2] / "schema" / "invalid"


def autoscaled(**autoscaling: Any) -> dict[str, Any]:
    spec = minimal()
    spec["gateway"]["resources"] = {"requests": {"cpu": "500m"}}
    spec["autoscaling"] = {"maxReplicas": 8, "targets": {"studiesInFlight": 4}} | autoscaling
    return spec


def test_autoscaling_defaults() -> None:
    assert parse(autoscaled()).autoscaling == AutoscalingSpec(
        min_replicas=1,
        max_replicas=8,
        studies_in_flight=4,
        cpu_utilization=None,
        # max(300, spec.handover.maxDrainSeconds): the default drain is 600
        stabilization_seconds=600,
        period_seconds=60,
    )
    assert parse(minimal() | {"autoscaling": None}).autoscaling is None


def test_autoscaling_keeps_every_value() -> None:
    spec = parse(
        autoscaled(
            minReplicas=2,
            maxReplicas=6,
            targets={"cpuUtilization": 70, "studiesInFlight": 3},
            scaleDown={"stabilizationSeconds": 1200, "periodSeconds": 90},
        )
    )
    assert spec.autoscaling == AutoscalingSpec(
        min_replicas=2,
        max_replicas=6,
        cpu_utilization=70,
        studies_in_flight=3,
        stabilization_seconds=1200,
        period_seconds=90,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.autoscaling.max_replicas = 9  # type: ignore[misc, union-attr]


@pytest.mark.parametrize(("drain", "window"), [(10, 300), (300, 300), (600, 600), (3600, 3600)])
def test_the_default_scale_down_window_is_never_shorter_than_a_drain(
    drain: int, window: int
) -> None:
    spec = autoscaled()
    spec["handover"] = {"quietSeconds": 5, "maxDrainSeconds": drain}
    autoscaling = parse(spec).autoscaling
    assert autoscaling is not None
    assert autoscaling.stabilization_seconds == window


def test_the_example_is_accepted_by_the_operator() -> None:
    example = Path(__file__).resolve().parents[3] / "examples" / "autoscaling.yaml"
    autoscaling = parse(yaml.safe_load(example.read_text())["spec"]).autoscaling
    assert autoscaling is not None
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (2, 8)


# (spec, field path, value in the error, words the message must contain)
AUTOSCALING_REFUSED: list[tuple[dict[str, Any], str, Any, str]] = [
    (autoscaled(minReplicas=0), "spec.autoscaling.minReplicas", 0, "less than 1"),
    (autoscaled(maxReplicas=0), "spec.autoscaling.maxReplicas", 0, "less than 1"),
    (autoscaled(maxReplicas="8"), "spec.autoscaling.maxReplicas", "8", "not an integer"),
    (
        autoscaled(minReplicas=5, maxReplicas=4),
        "spec.autoscaling.maxReplicas",
        4,
        "less than spec.autoscaling.minReplicas (5)",
    ),
    (
        autoscaled(maxReplicas=17) | {"buckets": 16},
        "spec.autoscaling.maxReplicas",
        17,
        "exceeds spec.buckets (16)",
    ),
    (
        autoscaled(maxReplicas=2000) | {"buckets": 65536},
        "spec.autoscaling.maxReplicas",
        2000,
        "more than 1024",
    ),
    (autoscaled(targets={}), "spec.autoscaling.targets", {}, "sets no target"),
    (
        autoscaled(targets={"studiesInFlight": 0}),
        "spec.autoscaling.targets.studiesInFlight",
        0,
        "less than 1",
    ),
    (
        autoscaled(targets={"memoryUtilization": 80}),
        "spec.autoscaling.targets.memoryUtilization",
        80,
        "has no field",
    ),
    (
        autoscaled(targets={"cpuUtilization": 70})
        | {"gateway": {"image": "gw:1", "resources": {"limits": {"cpu": "2"}}}},
        "spec.autoscaling.targets.cpuUtilization",
        70,
        '"missing request for cpu"',
    ),
    (
        autoscaled(targets={"cpuUtilization": 70})
        | {"gateway": {"image": "gw:1", "resources": {"requests": {"cpu": "0"}}}},
        "spec.autoscaling.targets.cpuUtilization",
        70,
        "above zero (it is '0')",
    ),
    (
        autoscaled(scaleDown={"stabilizationSeconds": 599}),
        "spec.autoscaling.scaleDown.stabilizationSeconds",
        599,
        "less than spec.handover.maxDrainSeconds (600)",
    ),
    (
        autoscaled(scaleDown={"stabilizationSeconds": 3601})
        | {"handover": {"maxDrainSeconds": 600}},
        "spec.autoscaling.scaleDown.stabilizationSeconds",
        3601,
        "more than 3600",
    ),
    (
        autoscaled() | {"handover": {"maxDrainSeconds": 3601}},
        "spec.handover.maxDrainSeconds",
        3601,
        "a HorizontalPodAutoscaler waits at most 3600 seconds",
    ),
    (
        autoscaled(scaleDown={"periodSeconds": 1801}),
        "spec.autoscaling.scaleDown.periodSeconds",
        1801,
        "more than 1800",
    ),
    (autoscaled(scaleDown=[]), "spec.autoscaling.scaleDown", [], "not an object"),
    (autoscaled(colour="blue"), "spec.autoscaling.colour", "blue", "has no field"),
]


@pytest.mark.parametrize(
    ("spec", "field_path", "shown", "words"),
    AUTOSCALING_REFUSED,
    ids=[f"{path}={shown!r}"[:70] for _, path, shown, _ in AUTOSCALING_REFUSED],
)
def test_autoscaling_is_refused_naming_field_and_value(
    spec: dict[str, Any], field_path: str, shown: Any, words: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse(spec)
    error = caught.value
    assert (error.field_path, error.value) == (field_path, shown)
    assert str(error).startswith(f"{field_path}: {shown!r} ")
    assert words in str(error)


def test_autoscaling_without_required_fields() -> None:
    for missing, field_path in (("maxReplicas", "maxReplicas"), ("targets", "targets")):
        spec = autoscaled()
        del spec["autoscaling"][missing]
        with pytest.raises(SpecError) as caught:
            parse(spec)
        assert str(caught.value) == f"spec.autoscaling.{field_path}: is required"


#: The invalid files whose every rule the operator checks too (the others' rules are
#: checked field by field in the tests above).
OPERATOR_CHECKED = (
    "autoscaling-",
    "router-service-",
    "router-spread-",
    "router-podtemplate-",
    "gateway-security-",
    "image-pull-",
)


@pytest.mark.parametrize(
    "path",
    [
        *sorted(p for p in INVALID_FILES.glob("*.yaml") if p.name.startswith(OPERATOR_CHECKED)),
        INVALID_FILES / "env-name-twice.yaml",
        INVALID_FILES / "resources-claims.yaml",
    ],
    ids=lambda p: p.name,
)
def test_the_operator_refuses_what_the_crd_refuses(path: Path) -> None:
    """Without the CRD's schema and rules (an old CRD, or none applied) the operator still refuses
    each of these invalid files, naming the field the API server would name."""
    first, *_ = path.read_text().splitlines()
    expected = first.removeprefix("# expect: ")
    field = (
        expected.split('"')[1]
        if expected.startswith("unknown field")
        else expected.partition(":")[0]
    )
    with pytest.raises(SpecError) as caught:
        parse(yaml.safe_load(path.read_text())["spec"])
    assert caught.value.field_path.startswith(field), (caught.value.field_path, field)


# --- the router Service, the router pod template, pull Secrets, gateway users (issues 25, 19)


def routed(**router: Any) -> dict[str, Any]:
    return minimal() | {"router": router}


def test_router_service_defaults_to_a_cluster_ip_with_nothing_else_set() -> None:
    service = parse(minimal()).router.service
    assert service.type == "ClusterIP"
    assert (service.load_balancer_class, service.external_traffic_policy) == (None, None)
    assert (service.node_port, service.tls_node_port, service.ip_family_policy) == (None,) * 3
    assert (service.load_balancer_source_ranges, service.ip_families) == ((), ())


def test_service_type_is_read_from_the_older_service_type_too() -> None:
    assert parse(routed(serviceType="NodePort")).router.service.type == "NodePort"
    assert parse(routed(service={"type": "LoadBalancer"})).router.service.type == "LoadBalancer"
    both = routed(serviceType="LoadBalancer", service={"type": "LoadBalancer"})
    assert parse(both).router.service.type == "LoadBalancer"


def test_router_service_keeps_every_value() -> None:
    service = parse(
        routed(
            tls={"secretName": "router-tls"},
            service={
                "type": "LoadBalancer",
                "annotations": {"metallb.io/loadBalancerIPs": "10.20.0.50"},
                "labels": {"site": "north"},
                "loadBalancerClass": "example.com/internal",
                "loadBalancerSourceRanges": ["10.20.30.0/24", "fd00:20::/64"],
                "externalTrafficPolicy": "Local",
                "nodePorts": {"dicom": 30104, "dicomTLS": 32762},
                "ipFamilyPolicy": "PreferDualStack",
                "ipFamilies": ["IPv4", "IPv6"],
            },
        )
    ).router.service
    assert dict(service.annotations) == {"metallb.io/loadBalancerIPs": "10.20.0.50"}
    assert dict(service.labels) == {"site": "north"}
    assert service.load_balancer_class == "example.com/internal"
    assert service.load_balancer_source_ranges == ("10.20.30.0/24", "fd00:20::/64")
    assert (service.external_traffic_policy, service.node_port, service.tls_node_port) == (
        "Local",
        30104,
        32762,
    )
    assert (service.ip_family_policy, service.ip_families) == ("PreferDualStack", ("IPv4", "IPv6"))


# (router section, field path, value in the error, words the message must contain)
ROUTER_SERVICE_REFUSED: list[tuple[dict[str, Any], str, Any, str]] = [
    ({"service": {"type": "ExternalName"}}, "spec.router.service.type", "ExternalName", "one of"),
    (
        {"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.1"]}},
        "spec.router.service.loadBalancerSourceRanges[0]",
        "10.0.0.1",
        "CIDR",
    ),
    (
        {"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/255.0.0.0"]}},
        "spec.router.service.loadBalancerSourceRanges[0]",
        "10.0.0.0/255.0.0.0",
        "CIDR",
    ),
    (
        {"service": {"type": "LoadBalancer", "loadBalancerSourceRanges": ["10.0.0.0/33"]}},
        "spec.router.service.loadBalancerSourceRanges[0]",
        "10.0.0.0/33",
        "CIDR",
    ),
    (
        {"service": {"type": "LoadBalancer", "loadBalancerClass": "not a class"}},
        "spec.router.service.loadBalancerClass",
        "not a class",
        "qualified name",
    ),
    (
        {"service": {"type": "NodePort", "externalTrafficPolicy": "Nearest"}},
        "spec.router.service.externalTrafficPolicy",
        "Nearest",
        "one of",
    ),
    (
        {"service": {"type": "NodePort", "nodePorts": {"dicom": 0}}},
        "spec.router.service.nodePorts.dicom",
        0,
        "less than 1",
    ),
    (
        {"service": {"type": "NodePort", "nodePorts": {"plain": 30104}}},
        "spec.router.service.nodePorts.plain",
        30104,
        "has no field",
    ),
    (
        {"service": {"ipFamilies": ["IPv5"]}},
        "spec.router.service.ipFamilies[0]",
        "IPv5",
        "not one of",
    ),
    (
        {"service": {"labels": {"app.kubernetes.io/component": "x"}}},
        "spec.router.service.labels['app.kubernetes.io/component']",
        "x",
        "selectors rely on",
    ),
    (
        {"podTemplate": {"labels": {"app.kubernetes.io/instance": "x"}}},
        "spec.router.podTemplate.labels['app.kubernetes.io/instance']",
        "x",
        "selectors rely on",
    ),
    (
        {"podTemplate": {"priorityClassName": "Not_A_Name"}},
        "spec.router.podTemplate.priorityClassName",
        "Not_A_Name",
        "DNS subdomain",
    ),
]


@pytest.mark.parametrize(
    ("router", "field_path", "shown", "words"),
    ROUTER_SERVICE_REFUSED,
    ids=[f"{path}={shown!r}"[:70] for _, path, shown, _ in ROUTER_SERVICE_REFUSED],
)
def test_router_service_and_template_are_refused_naming_field_and_value(
    router: dict[str, Any], field_path: str, shown: Any, words: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse(routed(**router))
    assert (caught.value.field_path, caught.value.value) == (field_path, shown)
    assert words in str(caught.value)


def test_router_pod_template_keeps_every_value_and_the_older_spread_field() -> None:
    template = parse(
        routed(
            podTemplate={
                "labels": {"tier": "ingress"},
                "annotations": {"example.org/owner": "radiology"},
                "nodeSelector": {"node-role.example.org/dicom-ingress": ""},
                "tolerations": [{"key": "dicom-ingress", "operator": "Exists"}],
                "affinity": {"nodeAffinity": {}},
                "priorityClassName": "dicom-ingress",
                "topologySpreadConstraints": [],
            }
        )
    ).router.pod_template
    assert dict(template.node_selector) == {"node-role.example.org/dicom-ingress": ""}
    assert template.priority_class_name == "dicom-ingress"
    assert template.topology_spread_constraints == ()
    older = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]
    spread = parse(routed(topologySpreadConstraints=older)).router.pod_template
    assert thaw(spread.topology_spread_constraints) == older


def test_image_pull_secrets_are_names_of_secrets() -> None:
    spec = parse(minimal() | {"imagePullSecrets": [{"name": "registry"}, {"name": "mirror"}]})
    assert spec.image_pull_secrets == ("registry", "mirror")
    assert parse(minimal()).image_pull_secrets == ()
    with pytest.raises(SpecError, match=r"spec.imagePullSecrets\[0\].name: 'Reg' is not a DNS"):
        parse(minimal() | {"imagePullSecrets": [{"name": "Reg"}]})
    with pytest.raises(SpecError, match=r"spec.imagePullSecrets\[0\].name: is required"):
        parse(minimal() | {"imagePullSecrets": [{}]})


def test_gateway_security_context() -> None:
    default = parse(minimal()).gateway.security_context
    assert (default.run_as_user, default.run_as_group, default.fs_group) == (None, None, None)
    assert default.run_as_non_root is True
    spec = minimal()
    spec["gateway"]["securityContext"] = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}
    given_ = parse(spec).gateway.security_context
    assert (given_.run_as_user, given_.run_as_group, given_.fs_group) == (1000, 1000, 2000)
    spec["gateway"]["securityContext"] = {"runAsUser": 0, "runAsNonRoot": False}
    assert parse(spec).gateway.security_context.run_as_user == 0
    spec["gateway"]["securityContext"] = {"runAsUser": -1}
    with pytest.raises(SpecError, match="runAsUser: -1 is less than 0"):
        parse(spec)
