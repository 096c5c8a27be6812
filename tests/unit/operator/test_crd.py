"""The GatewayPool CRD: accepted by Kubernetes, structural, and exactly the shared contract.

There is no API server here, so each of its jobs is done by a stand-in:

- ``kubernetes-validate --strict`` checks the CRD object itself against the real
  ``apiextensions.k8s.io/v1`` OpenAPI schema (a misspelt keyword is refused);
- ``jsonschema`` applies the ``openAPIV3Schema`` to GatewayPools, after a small
  defaulting walker that fills defaults as the API server does;
- ``cel-python`` evaluates the ``x-kubernetes-validations`` rules, with ``self``
  and, for transition rules, ``oldSelf`` bound;
- a pruning walker reports the fields the API server would drop, which
  ``kubectl apply`` (field validation ``Strict``, its default) refuses.

Errors are spelled ``<field path>: <message>`` so that each file in
``tests/schema/invalid`` can name, in its first line, the error it must cause.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import kubernetes_validate
import pytest
import yaml

from gatewaypool.contract import AE_TITLE_PATTERN
from gatewaypool_operator.spec.fields import SpecError
from gatewaypool_operator.spec.parse import (
    MAX_ALLOWED_CALLING_AE_TITLES,
    MAX_CALLER_SUBJECTS,
    MAX_SUBJECT_LENGTH,
    ROUTER_TIMEOUTS,
    SUBJECT_PATTERN,
    parse_spec,
)
from support.crd import apply_defaults, load_crd, root_schema, version_of

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
INVALID = sorted((ROOT / "tests" / "schema" / "invalid").glob("*.yaml"))
EXPECT_PREFIX = "# expect: "

# Kubernetes releases whose CRD schema the CRD must satisfy: 1.29, where CRD
# validation rules (CEL) became GA, and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ["1.29", "1.37"]

# The spec fields the operator and the docs rely on, as dotted paths below `spec`.
# A field added to or dropped from the CRD without the contract fails here.
SPEC_FIELDS = [
    "replicas",
    "buckets",
    "imagePullSecrets",
    "gateway",
    "gateway.image",
    "gateway.imagePullPolicy",
    "gateway.command",
    "gateway.args",
    "gateway.port",
    "gateway.aeTitle",
    "gateway.acceptedTransferSyntaxes",
    "gateway.sopClasses",
    "gateway.env",
    "gateway.resources",
    "gateway.resources.limits",
    "gateway.resources.requests",
    "gateway.resources.claims",
    "gateway.storage",
    "gateway.storage.size",
    "gateway.storage.storageClassName",
    "gateway.storage.mountPath",
    "gateway.storage.whenScaled",
    "gateway.terminationGracePeriodSeconds",
    "gateway.tls",
    "gateway.tls.caSecretName",
    "gateway.tls.clientCertSecretName",
    "gateway.tls.serverCertSecretName",
    "gateway.securityContext",
    "gateway.securityContext.runAsUser",
    "gateway.securityContext.runAsGroup",
    "gateway.securityContext.runAsNonRoot",
    "gateway.securityContext.fsGroup",
    "gateway.podTemplate",
    "gateway.podTemplate.labels",
    "gateway.podTemplate.annotations",
    "gateway.podTemplate.nodeSelector",
    "gateway.podTemplate.tolerations",
    "gateway.podTemplate.affinity",
    "gateway.podTemplate.affinity.nodeAffinity",
    "gateway.podTemplate.affinity.podAffinity",
    "gateway.podTemplate.affinity.podAntiAffinity",
    "gateway.podTemplate.priorityClassName",
    "gateway.podTemplate.serviceAccountName",
    "gateway.podTemplate.topologySpreadConstraints",
    "router",
    "router.replicas",
    "router.image",
    "router.aeTitle",
    "router.port",
    "router.serviceType",
    "router.service",
    "router.service.type",
    "router.service.annotations",
    "router.service.labels",
    "router.service.loadBalancerClass",
    "router.service.loadBalancerSourceRanges",
    "router.service.externalTrafficPolicy",
    "router.service.nodePorts",
    "router.service.nodePorts.dicom",
    "router.service.nodePorts.dicomTLS",
    "router.service.ipFamilyPolicy",
    "router.service.ipFamilies",
    "router.allowedCallingAETitles",
    "router.resources",
    "router.resources.limits",
    "router.resources.requests",
    "router.resources.claims",
    "router.topologySpreadConstraints",
    "router.podTemplate",
    "router.podTemplate.labels",
    "router.podTemplate.annotations",
    "router.podTemplate.nodeSelector",
    "router.podTemplate.tolerations",
    "router.podTemplate.affinity",
    "router.podTemplate.affinity.nodeAffinity",
    "router.podTemplate.affinity.podAffinity",
    "router.podTemplate.affinity.podAntiAffinity",
    "router.podTemplate.priorityClassName",
    "router.podTemplate.topologySpreadConstraints",
    "router.plainPort",
    "router.tls",
    "router.tls.secretName",
    "router.tls.port",
    "router.tls.clientCASecretName",
    "router.tls.callerSubjects",
    "router.spool",
    "router.spool.size",
    "router.spool.storageClassName",
    "router.spool.when",
    "router.spool.retentionSeconds",
    "router.timeouts",
    "router.timeouts.gatewaySeconds",
    "router.timeouts.connectSeconds",
    "router.timeouts.associationRequestSeconds",
    "router.timeouts.senderIdleSeconds",
    "router.timeouts.gatewayIdleReleaseSeconds",
    "router.timeouts.stallWarningSeconds",
    "networkPolicy",
    "networkPolicy.enabled",
    "networkPolicy.extraIngress",
    "networkPolicy.routerFrom",
    "handover",
    "handover.quietSeconds",
    "handover.maxDrainSeconds",
    "handover.failoverAfterSeconds",
    "autoscaling",
    "autoscaling.minReplicas",
    "autoscaling.maxReplicas",
    "autoscaling.targets",
    "autoscaling.targets.cpuUtilization",
    "autoscaling.targets.studiesInFlight",
    "autoscaling.scaleDown",
    "autoscaling.scaleDown.stabilizationSeconds",
    "autoscaling.scaleDown.periodSeconds",
]

STATUS_FIELDS = [
    "replicas",
    "readyReplicas",
    "selector",
    "observedGeneration",
    "mapVersion",
    "routersInSync",
    "routersTotal",
    "routers",
    "movingBuckets",
    "oldestMoveSince",
    "handovers",
    "excludedRouters",
    "autoscaling",
    "bucketCounts",
    "gatewaysNotReady",
    "spool",
    "conditions",
]
CONDITION_FIELDS = [
    "type",
    "status",
    "reason",
    "message",
    "lastTransitionTime",
    "observedGeneration",
]

# Defaults, ranges and enums of the contract, by path below `spec`.
DEFAULTS = {
    "replicas": 1,
    "buckets": 4096,
    "gateway.imagePullPolicy": "IfNotPresent",
    "gateway.port": 104,
    "gateway.aeTitle": "GATEWAY",
    "gateway.storage.mountPath": "/var/lib/gateway",
    "gateway.storage.whenScaled": "Retain",
    "gateway.terminationGracePeriodSeconds": 30,
    "router": {},
    "router.replicas": 2,
    "router.aeTitle": "GATEWAYPOOL",
    "router.port": 11112,
    "router.plainPort": True,
    "gateway.securityContext.runAsNonRoot": True,
    "router.tls.port": 2762,
    "router.spool.when": "GatewayUnavailable",
    "router.spool.retentionSeconds": 86400,
    "handover": {},
    "handover.quietSeconds": 30,
    "handover.maxDrainSeconds": 600,
    "networkPolicy": {},
    "networkPolicy.enabled": True,
    "autoscaling.minReplicas": 1,
    "autoscaling.scaleDown.periodSeconds": 60,
}
RANGES = {
    "replicas": (0, 1024),
    "buckets": (1, 65536),
    "gateway.port": (1, 65535),
    "router.replicas": (1, 100),
    "router.port": (1, 65535),
    "router.tls.port": (1, 65535),
    "router.spool.retentionSeconds": (60, 30 * 86400),
    **{f"router.timeouts.{key}": (1, top) for key, top in ROUTER_TIMEOUTS.items()},
    "router.service.nodePorts.dicom": (1, 65535),
    "router.service.nodePorts.dicomTLS": (1, 65535),
    "gateway.securityContext.runAsUser": (0, 2**31 - 1),
    "gateway.securityContext.runAsGroup": (0, 2**31 - 1),
    "gateway.securityContext.fsGroup": (0, 2**31 - 1),
    "handover.quietSeconds": (1, 3600),
    "handover.maxDrainSeconds": (10, 86400),
    "handover.failoverAfterSeconds": (10, 86400),
    "gateway.terminationGracePeriodSeconds": (0, 3600),
    "autoscaling.minReplicas": (1, 1024),
    "autoscaling.maxReplicas": (1, 1024),
    "autoscaling.scaleDown.stabilizationSeconds": (0, 3600),
    "autoscaling.scaleDown.periodSeconds": (1, 1800),
}
#: Integers with a lower bound only.
MINIMUMS = {
    "autoscaling.targets.cpuUtilization": 1,
    "autoscaling.targets.studiesInFlight": 1,
}
ENUMS = {
    "gateway.imagePullPolicy": ["Always", "IfNotPresent", "Never"],
    "router.serviceType": ["ClusterIP", "NodePort", "LoadBalancer"],
    "router.service.type": ["ClusterIP", "NodePort", "LoadBalancer"],
    "router.service.externalTrafficPolicy": ["Cluster", "Local"],
    "router.service.ipFamilyPolicy": ["SingleStack", "PreferDualStack", "RequireDualStack"],
    "gateway.storage.whenScaled": ["Retain", "Delete"],
    "router.spool.when": ["GatewayUnavailable", "Always"],
}
AE_TITLE_FIELDS = [
    "gateway.aeTitle",
    "router.aeTitle",
    "router.allowedCallingAETitles[]",
    "router.tls.callerSubjects[].aeTitle",
]
#: Names of Secrets in the pool's namespace: DNS subdomains, as object names are.
SECRET_NAME_FIELDS = [
    "router.tls.secretName",
    "router.tls.clientCASecretName",
    "gateway.tls.caSecretName",
    "gateway.tls.clientCertSecretName",
    "gateway.tls.serverCertSecretName",
    "imagePullSecrets[].name",
]

# Where the schema keeps what the user wrote unchecked: Kubernetes' own types.
# Tolerations, affinity, spread constraints, NetworkPolicy peers and ports declare every
# field they have, so that an unknown one is refused (as the operator refuses it); only
# what is free-form below them keeps what the user wrote.
PRESERVE_UNKNOWN_FIELDS = {
    "spec.gateway.env[]",
    "spec.gateway.env[].valueFrom",
    "spec.gateway.podTemplate.affinity.nodeAffinity",
    "spec.gateway.podTemplate.affinity.podAffinity",
    "spec.gateway.podTemplate.affinity.podAntiAffinity",
    "spec.gateway.podTemplate.topologySpreadConstraints[].labelSelector",
    "spec.router.topologySpreadConstraints[].labelSelector",
    "spec.router.podTemplate.affinity.nodeAffinity",
    "spec.router.podTemplate.affinity.podAffinity",
    "spec.router.podTemplate.affinity.podAntiAffinity",
    "spec.router.podTemplate.topologySpreadConstraints[].labelSelector",
    *(
        f"spec.networkPolicy.{peers}.{kind}"
        for peers in ("routerFrom[]", "extraIngress[].from[]")
        for kind in ("podSelector", "namespaceSelector", "ipBlock")
    ),
}

# The contract's sample pool, status included.
CONTRACT_SAMPLE: dict[str, Any] = {
    "apiVersion": "gatewaypool.io/v1alpha1",
    "kind": "GatewayPool",
    "metadata": {"name": "ct-triage", "namespace": "radiology"},
    "spec": {
        "replicas": 3,
        "buckets": 4096,
        "gateway": {
            "image": "orthancteam/orthanc:24.1.2",
            "imagePullPolicy": "IfNotPresent",
            "command": [],
            "args": [],
            "port": 104,
            "aeTitle": "GATEWAY",
            "env": [],
            "resources": {},
            "storage": {
                "size": "10Gi",
                "storageClassName": "fast",
                "mountPath": "/var/lib/gateway",
            },
            "podTemplate": {
                "labels": {},
                "annotations": {},
                "nodeSelector": {},
                "tolerations": [],
                "affinity": {},
                "priorityClassName": "",
                "serviceAccountName": "",
            },
        },
        "router": {
            "replicas": 2,
            "image": "",
            "aeTitle": "GATEWAYPOOL",
            "port": 11112,
            "allowedCallingAETitles": [],
            "resources": {},
        },
        "handover": {"quietSeconds": 30, "maxDrainSeconds": 600},
    },
    "status": {
        "replicas": 3,
        "readyReplicas": 3,
        "selector": "app.kubernetes.io/instance=ct-triage,app.kubernetes.io/component=gateway",
        "observedGeneration": 4,
        "mapVersion": 7,
        "routersInSync": 2,
        "routersTotal": 2,
        "routers": "2/2",
        "movingBuckets": 0,
        "bucketCounts": {"ct-triage-gw-0": 1366, "ct-triage-gw-1": 1365, "ct-triage-gw-2": 1365},
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "AllGatewaysReady",
                "message": "3 of 3 gateways ready",
                "lastTransitionTime": "2025-11-25T16:00:00Z",
                "observedGeneration": 4,
            }
        ],
    },
}


# --- loading -----------------------------------------------------------------


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = root_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith(EXPECT_PREFIX), f"{path.name}: first line must be '{EXPECT_PREFIX}...'"
    return first.removeprefix(EXPECT_PREFIX).strip()


# --- the API server's jobs, as small walkers -------------------------------------


def unknown_fields(value: Any, schema: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """Yield the fields pruning would drop: not declared, not under preserve-unknown-fields."""
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for name, child in value.items():
            child_path = f"{path}.{name}" if path else name
            if child_path == "metadata":
                continue  # ObjectMeta: the API server's own business
            if name in properties:
                yield from unknown_fields(child, properties[name], child_path)
            elif isinstance(extra, dict):
                yield from unknown_fields(child, extra, child_path)
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                yield child_path
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            yield from unknown_fields(item, schema["items"], f"{path}[{index}]")


def _format_path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def duplicate_keys(value: Any, schema: Mapping[str, Any], path: str = "") -> Iterator[str]:
    """Yield the API server's refusals of a list-map (``x-kubernetes-list-type: map``) that
    holds two items with the same keys, as ``path[i]: Duplicate value: {...}``."""
    if isinstance(value, dict) and schema.get("type") == "object":
        properties = schema.get("properties", {})
        for name, child in value.items():
            if name in properties:
                yield from duplicate_keys(
                    child, properties[name], f"{path}.{name}" if path else name
                )
    elif isinstance(value, list) and "items" in schema:
        keys = schema.get("x-kubernetes-list-map-keys", [])
        seen: set[str] = set()
        for index, item in enumerate(value):
            if schema.get("x-kubernetes-list-type") == "map" and isinstance(item, dict):
                key = json.dumps({k: item.get(k) for k in keys}, sort_keys=True)
                if key in seen:
                    yield f"{path}[{index}]: Duplicate value: {key}"
                seen.add(key)
            yield from duplicate_keys(item, schema["items"], f"{path}[{index}]")


def schema_errors(obj: Any) -> list[str]:
    """What the openAPIV3Schema says about ``obj`` (already defaulted), as ``path: message``."""
    errors = []
    for error in _validator().iter_errors(obj):
        path = _format_path(error.absolute_path)
        errors.append(f"{path}: {error.message}" if path else error.message)
    return sorted(errors)


@dataclass(frozen=True)
class Rule:
    """One ``x-kubernetes-validations`` entry and where in the schema it sits."""

    location: tuple[str, ...]  # property names; "[]" for list items, "{}" for map values
    rule: str
    message: str
    field_path: str

    @property
    def is_transition(self) -> bool:
        return "oldSelf" in self.rule

    @property
    def where(self) -> str:
        return _format_path(self.location).replace(".[]", "[]") or "<root>"


def find_rules(schema: Mapping[str, Any], location: tuple[str, ...] = ()) -> Iterator[Rule]:
    for entry in schema.get("x-kubernetes-validations", []):
        message = entry.get("message", f"failed rule: {entry['rule']}")
        yield Rule(location, entry["rule"], message, entry.get("fieldPath", ""))
    for name, prop in schema.get("properties", {}).items():
        yield from find_rules(prop, (*location, name))
    if isinstance(schema.get("items"), dict):
        yield from find_rules(schema["items"], (*location, "[]"))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from find_rules(schema["additionalProperties"], (*location, "{}"))


@functools.cache
def all_rules() -> tuple[Rule, ...]:
    return tuple(find_rules(root_schema()))


@functools.cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def _values_at(value: Any, location: tuple[str, ...], path: str = "") -> Iterator[tuple[str, Any]]:
    if not location:
        yield path, value
        return
    step, rest = location[0], location[1:]
    if step == "[]" and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _values_at(item, rest, f"{path}[{index}]")
    elif step == "{}" and isinstance(value, dict):
        for key, item in value.items():
            yield from _values_at(item, rest, f"{path}.{key}")
    elif isinstance(value, dict) and step in value:
        yield from _values_at(value[step], rest, f"{path}.{step}" if path else step)


def evaluate(rule: Rule, self_value: Any, old_value: Any = None) -> bool:
    activation = {"self": celpy.json_to_cel(self_value)}
    if rule.is_transition:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    result = _program(rule.rule).evaluate(activation)
    # An evaluation error (returned, not raised) is a refusal too, as on the API server.
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)


def rule_errors(new: Any, old: Any = None) -> list[str]:
    """Evaluate every rule where it applies; transition rules only on an update, as the API
    server does (``oldSelf`` is the stored value at the same place)."""
    errors = []
    for rule in all_rules():
        olds = dict(_values_at(old, rule.location)) if old is not None else {}
        for path, value in _values_at(new, rule.location):
            if rule.is_transition and path not in olds:
                continue
            if not evaluate(rule, value, olds.get(path)):
                errors.append(f"{path}{rule.field_path}: {rule.message}")
    return errors


def rejections(new: Any, old: Any = None) -> list[str]:
    """Everything ``kubectl apply`` would be told about ``new`` (an update of ``old``, if given).

    Order as on the API server: unknown fields (strict field validation), then,
    after defaulting, the schema, then the CEL rules, which only run on a
    schema-valid object here.
    """
    schema = root_schema()
    errors = [f'unknown field "{path}"' for path in unknown_fields(new, schema)]
    new = apply_defaults(new, schema)
    errors += schema_errors(new)
    errors += duplicate_keys(new, schema)
    if not errors:
        old = apply_defaults(old, schema) if old is not None else None
        errors += rule_errors(new, old)
    return errors


def node(path: str) -> dict[str, Any]:
    """The schema node at a dotted path below ``spec`` (``[]`` steps into list items)."""
    current = root_schema()["properties"]["spec"]
    for part in path.split("."):
        name, items = (part[:-2], True) if part.endswith("[]") else (part, False)
        current = current["properties"][name]
        if items:
            current = current["items"]
    return current


def declared_fields(schema: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for name, prop in schema.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        yield path
        yield from declared_fields(prop, path)


def walk(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node that describes a value, with its path (``[]`` for items)."""
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from walk(prop, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def minimal_pool(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "metadata": {"name": "pool", "namespace": "radiology"},
        "spec": {"gateway": {"image": "example/gw:1"}, **spec},
    }


# --- the CRD object --------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_crd_passes_kubernetes_validate_strict(version: str) -> None:
    assert kubernetes_validate.validate(load_crd(), version, strict=True) == version


def test_kubernetes_validate_strict_refuses_a_misspelt_keyword() -> None:
    # The check above has teeth: a typo in the schema is an error, not ignored.
    crd = load_crd()
    version_of(crd)["schema"]["openAPIV3Schema"]["properties"]["spec"]["minimun"] = 0
    with pytest.raises(kubernetes_validate.ValidationError, match="minimun"):
        kubernetes_validate.validate(crd, KUBERNETES_VERSIONS[-1], strict=True)


def test_names_group_version_scope() -> None:
    crd = load_crd()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "gatewaypools.gatewaypool.io"
    spec = crd["spec"]
    assert spec["group"] == "gatewaypool.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "GatewayPool",
        "listKind": "GatewayPoolList",
        "plural": "gatewaypools",
        "singular": "gatewaypool",
        "shortNames": ["gwp"],
    }
    version = version_of(crd)
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)


def test_subresources_status_and_scale() -> None:
    assert version_of(load_crd())["subresources"] == {
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    }


def test_scale_paths_point_at_declared_fields_of_the_right_type() -> None:
    status = root_schema()["properties"]["status"]["properties"]
    assert node("replicas")["type"] == "integer"
    assert status["replicas"]["type"] == "integer"
    assert status["selector"]["type"] == "string"


def test_printer_columns() -> None:
    columns = [
        (column["name"], column["jsonPath"], column["type"])
        for column in version_of(load_crd())["additionalPrinterColumns"]
    ]
    assert columns == [
        ("Replicas", ".spec.replicas", "integer"),
        ("Autoscaling", ".status.autoscaling", "string"),
        ("Ready", ".status.readyReplicas", "integer"),
        ("Map", ".status.mapVersion", "integer"),
        ("Routers", ".status.routers", "string"),
        ("Moving", ".status.movingBuckets", "integer"),
        # A time, shown as an age: an age in the status would change on every pass.
        ("Draining", ".status.oldestMoveSince", "date"),
        ("Age", ".metadata.creationTimestamp", "date"),
    ]


# --- the schema's shape -----------------------------------------------------------


def test_schema_is_structural() -> None:
    """The API server's structural-schema rules that a hand-written schema can break."""
    problems = []
    preserved = set()
    for path, schema in walk(root_schema()):
        where = path or "<root>"
        if "type" not in schema and not schema.get("x-kubernetes-int-or-string"):
            problems.append(f"{where}: no type")
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            preserved.add(path)
            if schema.get("type") != "object":
                problems.append(f"{where}: preserve-unknown-fields on a non-object")
        extra = schema.get("additionalProperties")
        if isinstance(extra, bool):
            problems.append(f"{where}: additionalProperties must be a schema, not {extra}")
        if extra is not None and "properties" in schema:
            problems.append(f"{where}: properties and additionalProperties together")
        for keyword in ("allOf", "anyOf", "oneOf"):
            if keyword == "anyOf" and _is_int_or_string(schema):
                continue  # the one form in which branches may carry a type
            for index, branch in enumerate(schema.get(keyword, [])):
                for banned in ("type", "description", "default", "additionalProperties"):
                    if banned in branch:
                        problems.append(f"{where}.{keyword}[{index}]: {banned} not allowed")
        if schema.get("x-kubernetes-list-type") == "map":
            keys = set(schema.get("x-kubernetes-list-map-keys", []))
            if not keys or not keys <= set(schema["items"].get("required", [])):
                problems.append(f"{where}: map list keys must be required")
        if path == "metadata" and set(schema) != {"type"}:
            problems.append(f"{where}: nothing may be declared inside metadata")
    assert problems == []
    assert preserved == PRESERVE_UNKNOWN_FIELDS


def _is_int_or_string(schema: Mapping[str, Any]) -> bool:
    """``x-kubernetes-int-or-string`` spelt out as the API server allows (quantities)."""
    return bool(schema.get("x-kubernetes-int-or-string")) and schema.get("anyOf") == [
        {"type": "integer"},
        {"type": "string"},
    ]


def test_structural_check_allows_int_or_string_only_in_its_own_form() -> None:
    quantity = node("gateway.resources.requests")["additionalProperties"]
    assert _is_int_or_string(quantity)
    assert not _is_int_or_string({**quantity, "anyOf": [{"type": "integer"}, {"type": "object"}]})
    assert not _is_int_or_string({"anyOf": quantity["anyOf"]})


def test_defaults_are_valid_values_of_their_fields() -> None:
    # The API server refuses a CRD whose defaults fail their own schema or get pruned.
    for path, schema in walk(root_schema()):
        if "default" not in schema:
            continue
        value = apply_defaults(schema["default"], schema)
        errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(value)]
        assert errors == [], path
        assert list(unknown_fields(value, schema)) == [], path


def test_spec_fields_match_the_contract() -> None:
    assert sorted(declared_fields(root_schema()["properties"]["spec"])) == sorted(SPEC_FIELDS)


def test_every_spec_and_status_field_has_a_description() -> None:
    undescribed = [
        path
        for path, schema in walk(root_schema())
        if path.startswith(("spec", "status"))
        and not path.endswith(("[]", "{}"))
        and not str(schema.get("description", "")).strip()
    ]
    assert undescribed == []


@pytest.mark.parametrize(("path", "default"), DEFAULTS.items())
def test_default(path: str, default: Any) -> None:
    assert node(path)["default"] == default


def test_only_the_contract_defaults_exist() -> None:
    spec = root_schema()["properties"]["spec"]
    defaulted = {p for p, s in walk(spec) if "default" in s}
    assert defaulted == set(DEFAULTS)


@pytest.mark.parametrize(("path", "bounds"), RANGES.items())
def test_range(path: str, bounds: tuple[int, int]) -> None:
    schema = node(path)
    assert schema["type"] == "integer"
    assert (schema["minimum"], schema["maximum"]) == bounds


@pytest.mark.parametrize(("path", "low"), MINIMUMS.items())
def test_minimum(path: str, low: int) -> None:
    schema = node(path)
    assert (schema["type"], schema["minimum"]) == ("integer", low)
    assert "maximum" not in schema


@pytest.mark.parametrize(("path", "values"), ENUMS.items())
def test_enum(path: str, values: list[str]) -> None:
    assert node(path)["enum"] == values


@pytest.mark.parametrize("path", AE_TITLE_FIELDS)
def test_ae_title_fields(path: str) -> None:
    schema = node(path)
    assert (schema["type"], schema["pattern"]) == ("string", AE_TITLE_PATTERN)
    assert (schema["minLength"], schema["maxLength"]) == (1, 16)


def test_required_fields() -> None:
    schema = root_schema()
    assert schema["required"] == ["spec"]
    assert schema["properties"]["spec"]["required"] == ["gateway"]
    assert node("gateway")["required"] == ["image"]
    assert node("gateway.storage")["required"] == ["size"]
    assert node("router.spool")["required"] == ["size"]
    assert node("autoscaling")["required"] == ["maxReplicas", "targets"]


def test_every_contract_status_field_is_declared() -> None:
    status = root_schema()["properties"]["status"]
    assert sorted(status["properties"]) == sorted(STATUS_FIELDS)
    condition = status["properties"]["conditions"]["items"]
    assert sorted(condition["properties"]) == sorted(CONDITION_FIELDS)
    assert status["properties"]["bucketCounts"]["additionalProperties"]["type"] == "integer"


def test_the_contract_sample_is_valid_and_nothing_of_it_is_pruned() -> None:
    assert list(unknown_fields(CONTRACT_SAMPLE, root_schema())) == []
    assert rejections(CONTRACT_SAMPLE, CONTRACT_SAMPLE) == []


# --- the defaulting and pruning walkers ------------------------------------------


def test_defaulting_fills_a_minimal_pool_as_the_api_server_does() -> None:
    (minimal,) = load_docs(ROOT / "examples" / "minimal.yaml")
    spec = apply_defaults(minimal, root_schema())["spec"]
    assert spec == {
        "replicas": 1,
        "buckets": 4096,
        "gateway": {
            "image": minimal["spec"]["gateway"]["image"],
            "imagePullPolicy": "IfNotPresent",
            "port": 104,
            "aeTitle": "GATEWAY",
            "terminationGracePeriodSeconds": 30,
        },
        "router": {
            "replicas": 2,
            "aeTitle": "GATEWAYPOOL",
            "port": 11112,
            "plainPort": True,
        },
        "handover": {"quietSeconds": 30, "maxDrainSeconds": 600},
        "networkPolicy": {"enabled": True},
    }


def test_defaulting_keeps_given_values_and_leaves_the_input_alone() -> None:
    pool = minimal_pool(replicas=0, router={"port": 4242}, handover={"quietSeconds": 5})
    before = copy.deepcopy(pool)
    spec = apply_defaults(pool, root_schema())["spec"]
    assert pool == before
    assert spec["replicas"] == 0
    assert spec["router"] == {
        "replicas": 2,
        "aeTitle": "GATEWAYPOOL",
        "port": 4242,
        "plainPort": True,
    }
    assert spec["handover"] == {"quietSeconds": 5, "maxDrainSeconds": 600}


def test_defaulting_enters_optional_objects_only_when_they_are_set() -> None:
    schema = root_schema()
    assert "storage" not in apply_defaults(minimal_pool(), schema)["spec"]["gateway"]
    pool = minimal_pool()
    pool["spec"]["gateway"]["storage"] = {"size": "1Gi"}
    storage = apply_defaults(pool, schema)["spec"]["gateway"]["storage"]
    assert storage == {"size": "1Gi", "mountPath": "/var/lib/gateway", "whenScaled": "Retain"}


def test_defaulting_replaces_null_of_a_non_nullable_field() -> None:
    spec = apply_defaults(minimal_pool(buckets=None, router=None), root_schema())["spec"]
    assert spec["buckets"] == 4096
    assert spec["router"]["replicas"] == 2


def test_pruning_keeps_preserved_and_map_fields_and_reports_the_rest() -> None:
    pool = minimal_pool()
    gateway = pool["spec"]["gateway"]
    gateway["resources"] = {"limits": {"memory": "1Gi"}, "claims": [{"name": "gpu"}]}
    gateway["env"] = [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    gateway["podTemplate"] = {"labels": {"team": "rad"}, "colour": "blue"}
    pool["spec"]["router"] = {"resources": {"requests": {"cpu": 1}, "limit": {"cpu": 2}}}
    pool["spec"]["typo"] = 1
    pool["metadata"]["labels"] = {"a": "b"}
    assert sorted(unknown_fields(pool, root_schema())) == [
        "spec.gateway.podTemplate.colour",
        "spec.router.resources.limit",
        "spec.typo",
    ]


@pytest.mark.parametrize(
    ("quantity", "allowed"),
    [("500m", True), ("1.5", True), (2, True), ("1Gi", True), ("two", False), (0.5, False)],
)
def test_resources_hold_quantities_as_in_a_container(quantity: Any, allowed: bool) -> None:
    # As the API server stores quantities: integers or strings, never YAML floats.
    resources = {"requests": {"cpu": quantity}, "limits": {"cpu": quantity}}
    pool = minimal_pool(gateway={"image": "example/gw:1", "resources": resources})
    assert (rejections(pool) == []) is allowed


# --- examples -----------------------------------------------------------------------


def test_the_examples_exist() -> None:
    assert [path.name for path in EXAMPLES] == [
        "autoscaling.yaml",
        "minimal.yaml",
        "modality-vlan.yaml",
        "orthanc.yaml",
        "secure.yaml",
        "spool.yaml",
    ]


#: What an example may hold besides its one GatewayPool: the cert-manager objects that
#: make the pool's TLS Secrets (examples/secure.yaml).
CERT_MANAGER = "cert-manager.io/v1"
CERT_MANAGER_KINDS = {"Issuer", "ClusterIssuer", "Certificate"}

# cert-manager's own CRDs are not available here, so the fields the examples use are
# checked against this hand-written excerpt of its v1 API reference (CertificateSpec,
# IssuerSpec), not against its schema.
CERTIFICATE_FIELDS = {
    "secretName",
    "commonName",
    "dnsNames",
    "ipAddresses",
    "uris",
    "emailAddresses",
    "subject",
    "isCA",
    "usages",
    "duration",
    "renewBefore",
    "privateKey",
    "issuerRef",
}
CERTIFICATE_USAGES = {
    "digital signature",
    "key encipherment",
    "server auth",
    "client auth",
    "cert sign",
}
PRIVATE_KEY_FIELDS = {
    "algorithm": {"RSA", "ECDSA", "Ed25519"},
    "size": None,
    "rotationPolicy": {"Never", "Always"},
}


def example_pool(path: Path) -> dict[str, Any]:
    """The one GatewayPool of an example file; anything else in it must be cert-manager's."""
    docs = load_docs(path)
    pools = [doc for doc in docs if doc.get("kind") == "GatewayPool"]
    assert len(pools) == 1, f"{path.name}: one GatewayPool per example"
    for doc in docs:
        if doc is not pools[0]:
            assert doc["apiVersion"] == CERT_MANAGER, (path.name, doc.get("kind"))
            assert doc["kind"] in CERT_MANAGER_KINDS, (path.name, doc["kind"])
            assert doc["metadata"]["namespace"] == pools[0]["metadata"]["namespace"]
    return pools[0]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_is_accepted(path: Path) -> None:
    pool = example_pool(path)
    assert (pool["apiVersion"], pool["kind"]) == ("gatewaypool.io/v1alpha1", "GatewayPool")
    assert pool["metadata"]["namespace"]
    # Created, then applied again unchanged: transition rules run too.
    assert rejections(pool) == []
    assert rejections(pool, pool) == []
    # And the operator takes it as the API server stores it.
    parse_spec(apply_defaults(pool, root_schema())["spec"], default_router_image="gp:1")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: f"{r.where}:{r.rule}")
def test_every_rule_holds_for_every_example(rule: Rule, path: Path) -> None:
    pool = apply_defaults(example_pool(path), root_schema())
    # A rule on a field the example leaves out (a list's items, say) has nothing to check.
    for _, value in _values_at(pool, rule.location):
        assert evaluate(rule, value, value)


#: The sections of docs/operations.md whose YAML blocks are pool specs (issue 25).
REACH_SECTIONS = ("Network policies", "Reaching the router from the modalities")


def doc_specs(section: str) -> list[dict[str, Any]]:
    """The ``spec`` of every YAML block in a section of docs/operations.md."""
    text = (ROOT / "docs" / "operations.md").read_text()
    part = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", part, re.DOTALL)
    return [yaml.safe_load(block)["spec"] for block in blocks]


@pytest.mark.parametrize("section", REACH_SECTIONS)
def test_the_documented_router_set_ups_pass_the_crd(section: str) -> None:
    specs = doc_specs(section)
    assert specs
    for spec in specs:
        pool = minimal_pool(**spec)
        assert rejections(pool) == [], spec
        parse_spec(apply_defaults(pool, root_schema())["spec"], default_router_image="gp:1")


def cert_manager_objects(path: Path, kind: str) -> dict[str, dict[str, Any]]:
    return {
        doc["metadata"]["name"]: doc
        for doc in load_docs(path)
        if doc.get("apiVersion") == CERT_MANAGER and doc["kind"] == kind
    }


def rfc4514(certificate: Mapping[str, Any]) -> str:
    """The subject cert-manager gives a Certificate, as ``openssl -nameopt RFC2253`` prints it.

    cert-manager encodes the subject in Go's order (C, ST, L, O, OU, CN); RFC 4514
    prints the RDNs last first.
    """
    spec = certificate["spec"]
    subject = spec.get("subject") or {}
    rdns = [f"C={value}" for value in subject.get("countries", [])]
    rdns += [f"ST={value}" for value in subject.get("provinces", [])]
    rdns += [f"L={value}" for value in subject.get("localities", [])]
    rdns += [f"O={value}" for value in subject.get("organizations", [])]
    rdns += [f"OU={value}" for value in subject.get("organizationalUnits", [])]
    if spec.get("commonName"):
        rdns.append(f"CN={spec['commonName']}")
    return ",".join(reversed(rdns))


def test_the_secure_example_makes_every_secret_its_pool_names() -> None:
    path = ROOT / "examples" / "secure.yaml"
    pool = example_pool(path)
    name, namespace = pool["metadata"]["name"], pool["metadata"]["namespace"]
    router = pool["spec"]["router"]
    certificates = cert_manager_objects(path, "Certificate")
    issuers = cert_manager_objects(path, "Issuer")
    by_secret = {cert["spec"]["secretName"]: cert for cert in certificates.values()}

    for cert in certificates.values():
        spec = cert["spec"]
        assert set(spec) <= CERTIFICATE_FIELDS, cert["metadata"]["name"]
        assert set(spec.get("usages", [])) <= CERTIFICATE_USAGES
        for key, value in (spec.get("privateKey") or {}).items():
            allowed = PRIVATE_KEY_FIELDS[key]
            assert allowed is None or value in allowed, (key, value)
        issuer = spec["issuerRef"]
        assert (issuer["kind"], issuer["group"]) == ("Issuer", "cert-manager.io")
        assert issuer["name"] in issuers
    for issuer in issuers.values():
        assert list(issuer["spec"]) in (["selfSigned"], ["ca"])
        if "ca" in issuer["spec"]:
            assert by_secret[issuer["spec"]["ca"]["secretName"]]["spec"]["isCA"] is True

    # The routers' server certificate covers every name of the router Service.
    server = by_secret[router["tls"]["secretName"]]["spec"]
    service = f"{name}-router"
    for dns_name in (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ):
        assert dns_name in server["dnsNames"]
    assert "server auth" in server["usages"]

    # The client CA is a CA; every bound subject is that of a client certificate it signs.
    client_ca = router["tls"]["clientCASecretName"]
    assert by_secret[client_ca]["spec"]["isCA"] is True
    ca_issuers = {
        n for n, i in issuers.items() if i["spec"].get("ca", {}).get("secretName") == client_ca
    }
    clients = {
        rfc4514(cert): cert
        for cert in certificates.values()
        if "client auth" in cert["spec"].get("usages", [])
        and cert["spec"]["issuerRef"]["name"] in ca_issuers
    }
    assert router["tls"]["callerSubjects"]
    for binding in router["tls"]["callerSubjects"]:
        assert binding["subject"] in clients, binding
        assert binding["aeTitle"] in router["allowedCallingAETitles"]
    assert router["plainPort"] is False


def test_the_secure_example_keeps_its_honest_notes() -> None:
    text = (ROOT / "examples" / "secure.yaml").read_text()
    assert "An AE title is not a password" in text
    assert "network controls" in text
    assert "NOT yet supported" not in text


# --- the CEL rules ------------------------------------------------------------------


#: The router Service's type as the CRD's rules read it: service.type, else the older
#: serviceType, else ClusterIP (neither has a schema default, so that both can be read).
#: The labels the operator's selectors rely on, refused in every labels map of the spec.
RESERVED_LABELS_RULE = (
    "!('app.kubernetes.io/name' in self) && !('app.kubernetes.io/instance' in self)"
    " && !('app.kubernetes.io/managed-by' in self) && !('app.kubernetes.io/component' in self)"
)
TOLERATION_RULE = (
    "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''"
)
SERVICE_TYPE = (
    "(has(self.service) && has(self.service.type) ? self.service.type"
    " : (has(self.serviceType) ? self.serviceType : 'ClusterIP'))"
)


def test_the_rules_are_where_the_contract_puts_them() -> None:
    assert [(r.where, r.rule, r.field_path) for r in all_rules()] == [
        (
            "<root>",
            "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
            " && size(self.metadata.name) <= 49",
            "",
        ),
        (
            "spec",
            "!has(self.replicas) || !has(self.buckets) || self.replicas <= self.buckets",
            ".replicas",
        ),
        (
            "spec",
            "!has(self.autoscaling) || !has(self.buckets)"
            " || self.autoscaling.maxReplicas <= self.buckets",
            ".autoscaling.maxReplicas",
        ),
        (
            "spec",
            "!has(self.autoscaling) || !has(self.autoscaling.minReplicas)"
            " || self.autoscaling.maxReplicas >= self.autoscaling.minReplicas",
            ".autoscaling.maxReplicas",
        ),
        (
            "spec",
            "!has(self.autoscaling) || has(self.autoscaling.targets.cpuUtilization)"
            " || has(self.autoscaling.targets.studiesInFlight)",
            ".autoscaling.targets",
        ),
        (
            "spec",
            "!has(self.autoscaling) || !has(self.autoscaling.targets.cpuUtilization)"
            " || (has(self.gateway.resources) && has(self.gateway.resources.requests)"
            " && 'cpu' in self.gateway.resources.requests)",
            ".autoscaling.targets.cpuUtilization",
        ),
        (
            "spec",
            "!has(self.autoscaling) || !has(self.autoscaling.targets.cpuUtilization)"
            " || !has(self.gateway.resources) || !has(self.gateway.resources.requests)"
            " || !('cpu' in self.gateway.resources.requests)"
            " || !string(self.gateway.resources.requests['cpu'])"
            ".matches('^[+]?(0+[.]?0*|[.]0+)([KMGTPE]i|[numkMGTPE]|[eE].*)?$')",
            ".autoscaling.targets.cpuUtilization",
        ),
        (
            "spec",
            "!has(self.autoscaling) || !has(self.autoscaling.scaleDown)"
            " || !has(self.autoscaling.scaleDown.stabilizationSeconds)"
            " || !has(self.handover) || !has(self.handover.maxDrainSeconds)"
            " || self.autoscaling.scaleDown.stabilizationSeconds >= self.handover.maxDrainSeconds",
            ".autoscaling.scaleDown.stabilizationSeconds",
        ),
        (
            "spec",
            "!has(self.autoscaling) || !has(self.handover)"
            " || !has(self.handover.maxDrainSeconds) || self.handover.maxDrainSeconds <= 3600",
            ".handover.maxDrainSeconds",
        ),
        ("spec.buckets", "self == oldSelf", ""),
        (
            "spec.gateway",
            "!has(self.tls) || !has(self.tls.serverCertSecretName) || !has(self.storage)"
            " || !(self.storage.mountPath + '/').startsWith('/etc/gatewaypool/tls/server/')",
            ".storage.mountPath",
        ),
        (
            "spec.gateway",
            "!has(self.securityContext) || !has(self.securityContext.runAsUser)"
            " || self.securityContext.runAsUser != 0"
            " || (has(self.securityContext.runAsNonRoot) && !self.securityContext.runAsNonRoot)",
            ".securityContext.runAsUser",
        ),
        (
            "spec.gateway",
            "!has(self.storage) || !self.storage.mountPath.matches('^(/+|/tmp/*)$')",
            ".storage.mountPath",
        ),
        ("spec.gateway.podTemplate.labels", RESERVED_LABELS_RULE, ""),
        ("spec.gateway.podTemplate.tolerations[]", TOLERATION_RULE, ".value"),
        ("spec.router", "!has(self.plainPort) || self.plainPort || has(self.tls)", ".plainPort"),
        (
            "spec.router",
            "!has(self.tls) || (has(self.plainPort) && !self.plainPort)"
            " || (has(self.tls.port) ? self.tls.port : 2762)"
            " != (has(self.port) ? self.port : 11112)",
            ".tls.port",
        ),
        (
            "spec.router",
            "!has(self.tls) || !has(self.tls.callerSubjects)"
            " || size(self.tls.callerSubjects) == 0 || has(self.tls.clientCASecretName)",
            ".tls.callerSubjects",
        ),
        (
            "spec.router",
            "!has(self.tls) || !has(self.tls.callerSubjects)"
            " || !has(self.allowedCallingAETitles) || size(self.allowedCallingAETitles) == 0"
            " || self.tls.callerSubjects.all(c, c.aeTitle in self.allowedCallingAETitles)",
            ".tls.callerSubjects",
        ),
        (
            "spec.router",
            "!has(self.serviceType) || !has(self.service) || !has(self.service.type)"
            " || self.service.type == self.serviceType",
            ".serviceType",
        ),
        (
            "spec.router",
            "!has(self.service) || !has(self.service.loadBalancerClass)"
            f" || {SERVICE_TYPE} == 'LoadBalancer'",
            ".service.loadBalancerClass",
        ),
        (
            "spec.router",
            "!has(self.service) || !has(self.service.loadBalancerSourceRanges)"
            f" || {SERVICE_TYPE} == 'LoadBalancer'",
            ".service.loadBalancerSourceRanges",
        ),
        (
            "spec.router",
            "!has(self.service) || !has(self.service.externalTrafficPolicy)"
            f" || {SERVICE_TYPE} != 'ClusterIP'",
            ".service.externalTrafficPolicy",
        ),
        (
            "spec.router",
            f"!has(self.service) || !has(self.service.nodePorts) || {SERVICE_TYPE} != 'ClusterIP'",
            ".service.nodePorts",
        ),
        (
            "spec.router",
            "!has(self.service) || !has(self.service.nodePorts)"
            " || !has(self.service.nodePorts.dicom)"
            " || !has(self.plainPort) || self.plainPort",
            ".service.nodePorts.dicom",
        ),
        (
            "spec.router",
            "!has(self.service) || !has(self.service.nodePorts)"
            " || !has(self.service.nodePorts.dicomTLS) || has(self.tls)",
            ".service.nodePorts.dicomTLS",
        ),
        (
            "spec.router",
            "!has(self.service) || !has(self.service.nodePorts)"
            " || !has(self.service.nodePorts.dicom)"
            " || !has(self.service.nodePorts.dicomTLS)"
            " || self.service.nodePorts.dicom != self.service.nodePorts.dicomTLS",
            ".service.nodePorts.dicomTLS",
        ),
        (
            "spec.router",
            "!has(self.service) || !has(self.service.ipFamilies)"
            " || size(self.service.ipFamilies) < 2"
            " || self.service.ipFamilies[0] != self.service.ipFamilies[1]",
            ".service.ipFamilies",
        ),
        (
            "spec.router",
            "!has(self.service) || !has(self.service.ipFamilies)"
            " || size(self.service.ipFamilies) < 2"
            " || !has(self.service.ipFamilyPolicy) || self.service.ipFamilyPolicy != 'SingleStack'",
            ".service.ipFamilyPolicy",
        ),
        (
            "spec.router",
            "!has(self.topologySpreadConstraints) || !has(self.podTemplate)"
            " || !has(self.podTemplate.topologySpreadConstraints)",
            ".topologySpreadConstraints",
        ),
        ("spec.router.service.labels", RESERVED_LABELS_RULE, ""),
        ("spec.router.podTemplate.labels", RESERVED_LABELS_RULE, ""),
        ("spec.router.podTemplate.tolerations[]", TOLERATION_RULE, ".value"),
        (
            "spec.handover",
            "!has(self.maxDrainSeconds) || !has(self.quietSeconds)"
            " || self.maxDrainSeconds >= self.quietSeconds",
            ".maxDrainSeconds",
        ),
    ]
    assert all(rule.message and "\n" not in rule.message for rule in all_rules())


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        (4096, 4096, True),
        (16, 16, True),
        (4096, 8192, False),
        (4096, 1, False),
        (16, 4096, False),
    ],
)
def test_buckets_are_immutable(old: int, new: int, allowed: bool) -> None:
    (rule,) = [r for r in all_rules() if r.where == "spec.buckets"]
    assert evaluate(rule, new, old) is allowed
    errors = rejections(minimal_pool(buckets=new), minimal_pool(buckets=old))
    assert errors == ([] if allowed else [f"spec.buckets: {rule.message}"])


def test_buckets_left_out_on_update_keep_the_default() -> None:
    # Stored with the default 4096; an update that does not mention buckets is fine...
    assert rejections(minimal_pool(), minimal_pool(buckets=4096)) == []
    # ...but one that drops a non-default value falls back to 4096: a change, refused.
    assert rejections(minimal_pool(), minimal_pool(buckets=64)) != []


def test_buckets_may_be_anything_in_range_on_create() -> None:
    assert rejections(minimal_pool(buckets=8, replicas=8)) == []


@pytest.mark.parametrize(
    ("replicas", "buckets", "allowed"),
    [(0, 1, True), (1, 1, True), (8, 8, True), (9, 8, False), (1024, 65536, True)],
)
def test_replicas_at_most_buckets(replicas: int, buckets: int, allowed: bool) -> None:
    assert (rejections(minimal_pool(replicas=replicas, buckets=buckets)) == []) is allowed


@pytest.mark.parametrize(
    ("quiet", "drain", "allowed"),
    [(10, 10, True), (30, 600, True), (3600, 3600, True), (61, 60, False), (3600, 600, False)],
)
def test_max_drain_at_least_quiet(quiet: int, drain: int, allowed: bool) -> None:
    handover = {"quietSeconds": quiet, "maxDrainSeconds": drain}
    assert (rejections(minimal_pool(handover=handover)) == []) is allowed


def autoscaled(
    autoscaling: dict[str, Any], *, requests: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    gateway: dict[str, Any] = {"image": "example/gw:1"}
    if requests is not None:
        gateway["resources"] = {"requests": requests}
    return minimal_pool(gateway=gateway, autoscaling=autoscaling, **spec)


STUDIES = {"studiesInFlight": 4}


@pytest.mark.parametrize(
    ("buckets", "low", "high", "allowed"),
    [
        (8, 1, 8, True),
        (8, 1, 9, False),
        (4096, 2, 2, True),
        (4096, 3, 2, False),
        (4096, None, 1, True),
        (1, None, 1, True),
        (1, None, 2, False),
    ],
)
def test_autoscaling_range_fits_the_buckets(
    buckets: int, low: int | None, high: int, allowed: bool
) -> None:
    autoscaling: dict[str, Any] = {"maxReplicas": high, "targets": STUDIES}
    if low is not None:
        autoscaling["minReplicas"] = low
    errors = rejections(autoscaled(autoscaling, buckets=buckets))
    assert (errors == []) is allowed, errors
    assert all(error.startswith("spec.autoscaling.maxReplicas: ") for error in errors)


@pytest.mark.parametrize(
    ("targets", "requests", "allowed"),
    [
        ({"studiesInFlight": 4}, None, True),
        ({"cpuUtilization": 70}, {"cpu": "500m"}, True),
        ({"cpuUtilization": 70, "studiesInFlight": 4}, {"cpu": 1}, True),
        ({"cpuUtilization": 70}, None, False),
        ({"cpuUtilization": 70}, {"memory": "1Gi"}, False),
        ({}, {"cpu": 1}, False),
    ],
)
def test_autoscaling_targets(
    targets: dict[str, Any], requests: dict[str, Any] | None, allowed: bool
) -> None:
    pool = autoscaled({"maxReplicas": 4, "targets": targets}, requests=requests)
    errors = rejections(pool)
    assert (errors == []) is allowed, errors


def test_the_cpu_rule_sees_the_request_and_only_the_request() -> None:
    rule, _above_zero = [
        r for r in all_rules() if r.field_path == ".autoscaling.targets.cpuUtilization"
    ]
    spec = autoscaled({"maxReplicas": 4, "targets": {"cpuUtilization": 70}})["spec"]
    assert not evaluate(rule, spec)
    spec["gateway"]["resources"] = {"limits": {"cpu": "2"}}
    assert not evaluate(rule, spec)
    spec["gateway"]["resources"]["requests"] = {"cpu": "1"}
    assert evaluate(rule, spec)
    # Without autoscaling, or without a CPU target, the rule holds whatever the resources.
    assert evaluate(rule, minimal_pool()["spec"])
    assert evaluate(rule, autoscaled({"maxReplicas": 4, "targets": STUDIES})["spec"])


@pytest.mark.parametrize(
    ("cpu", "allowed"),
    [
        ("500m", True),
        (1, True),
        ("0.1", True),
        ("1e-3", True),
        ("0", False),
        (0, False),
        ("0m", False),
        ("0.0", False),
        (".0", False),
        ("00Gi", False),
        ("+0", False),
        ("0e3", False),
    ],
)
def test_a_cpu_target_needs_a_cpu_request_above_zero(cpu: Any, allowed: bool) -> None:
    pool = autoscaled({"maxReplicas": 4, "targets": {"cpuUtilization": 70}}, requests={"cpu": cpu})
    errors = rejections(pool)
    assert (errors == []) is allowed, errors
    try:
        parse_spec(apply_defaults(pool, root_schema())["spec"], default_router_image="gp:1")
    except SpecError:
        assert not allowed
    else:
        assert allowed


@pytest.mark.parametrize(
    ("drain", "window", "allowed"),
    [
        (600, None, True),
        (600, 600, True),
        (600, 3600, True),
        (600, 599, False),
        (10, 10, True),
        (10, 0, False),
        (3600, None, True),
        (3601, None, False),
        (3601, 3600, False),
    ],
)
def test_autoscaling_scale_down_window_covers_a_drain(
    drain: int, window: int | None, allowed: bool
) -> None:
    autoscaling: dict[str, Any] = {"maxReplicas": 4, "targets": STUDIES}
    if window is not None:
        autoscaling["scaleDown"] = {"stabilizationSeconds": window}
    handover = {"quietSeconds": 5, "maxDrainSeconds": drain}
    errors = rejections(autoscaled(autoscaling, handover=handover))
    assert (errors == []) is allowed, errors


def test_without_autoscaling_the_autoscaling_rules_hold() -> None:
    # A long drain is fine for a pool that no autoscaler scales.
    assert rejections(minimal_pool(handover={"maxDrainSeconds": 86400}, replicas=3)) == []


def test_autoscaling_defaults() -> None:
    pool = autoscaled({"maxReplicas": 4, "targets": STUDIES, "scaleDown": {}})
    autoscaling = apply_defaults(pool, root_schema())["spec"]["autoscaling"]
    assert autoscaling == {
        "minReplicas": 1,
        "maxReplicas": 4,
        "targets": STUDIES,
        "scaleDown": {"periodSeconds": 60},
    }


# --- DICOM TLS ------------------------------------------------------------------------

TLS_SERVER = {"secretName": "router-tls"}
MTLS = {**TLS_SERVER, "clientCASecretName": "modality-ca"}
CT01 = {"aeTitle": "CT01", "subject": "CN=ct01.radiology.example.org,O=Example Hospital"}

#: (spec.router, spec.gateway.tls or None, accepted): each checked by the CRD and the operator.
TLS_CASES: list[tuple[dict[str, Any], dict[str, Any] | None, bool]] = [
    ({"tls": TLS_SERVER}, None, True),
    ({"tls": {**TLS_SERVER, "port": 11112}}, None, False),
    ({"tls": {**TLS_SERVER, "port": 11112}, "plainPort": False}, None, True),
    ({"port": 104, "tls": {**TLS_SERVER, "port": 104}}, None, False),
    ({"port": 2762, "tls": TLS_SERVER}, None, False),
    ({"port": 2762, "tls": {**TLS_SERVER, "port": 11112}}, None, True),
    ({"plainPort": False}, None, False),
    ({"plainPort": True}, None, True),
    ({"plainPort": False, "tls": TLS_SERVER}, None, True),
    ({"tls": {**MTLS, "callerSubjects": [CT01]}}, None, True),
    ({"tls": {**TLS_SERVER, "callerSubjects": [CT01]}}, None, False),
    ({"tls": {**TLS_SERVER, "callerSubjects": []}}, None, True),
    (
        {"allowedCallingAETitles": ["CT01", "MR1"], "tls": {**MTLS, "callerSubjects": [CT01]}},
        None,
        True,
    ),
    ({"allowedCallingAETitles": ["MR1"], "tls": {**MTLS, "callerSubjects": [CT01]}}, None, False),
    ({"allowedCallingAETitles": [], "tls": {**MTLS, "callerSubjects": [CT01]}}, None, True),
    ({"tls": {**MTLS, "callerSubjects": [CT01, {**CT01, "subject": "CN=b"}]}}, None, False),
    ({"tls": {**MTLS, "callerSubjects": [CT01, {**CT01, "aeTitle": "CT02"}]}}, None, True),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "aeTitle": "A=B"}]}}, None, False),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "aeTitle": "   "}]}}, None, False),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "ct01"}]}}, None, False),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "CN=a, O=b"}]}}, None, True),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "2.5.4.3=a+UID=7"}]}}, None, True),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": r"CN=Smith\, J.,O=x"}]}}, None, True),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "CN=a,,O=b"}]}}, None, False),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "cn=a, o=b"}]}}, None, True),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "CN="}]}}, None, False),
    ({"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "CN=a\nO=b"}]}}, None, False),
    # Attribute types the router parses by name, others only as OIDs.
    (
        {"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "emailAddress=ct@x.org"}]}},
        None,
        False,
    ),
    (
        {"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "1.2.840.113549.1.9.1=ct@x.org"}]}},
        None,
        True,
    ),
    (
        {"tls": {**MTLS, "callerSubjects": [{**CT01, "subject": "DC=org,DC=x,UID=ct01"}]}},
        None,
        True,
    ),
    ({"tls": {**MTLS, "callerSubjects": [{"aeTitle": "CT01"}]}}, None, False),
    ({"tls": {"secretName": "Router"}}, None, False),
    ({"tls": {"secretName": "router.tls-1"}}, None, True),
    ({"tls": {"secretName": "-router"}}, None, False),
    ({"tls": {"secretName": "r" * 254}}, None, False),
    ({"tls": {"port": 2762}}, None, False),
    ({"tls": {**TLS_SERVER, "port": 0}}, None, False),
    ({}, {"caSecretName": "gateway-ca"}, True),
    ({}, {"caSecretName": "gateway-ca", "clientCertSecretName": "router-client"}, True),
    ({}, {"clientCertSecretName": "router-client"}, False),
    ({}, {"caSecretName": "Gateway_CA"}, False),
    ({}, {"caSecretName": "gateway-ca", "serverCertSecretName": "gateway-serving"}, True),
    ({}, {"serverCertSecretName": "gateway-serving"}, False),
    ({}, {"caSecretName": "gateway-ca", "serverCertSecretName": "Gateway_Serving"}, False),
    ({"plainPort": False, "tls": MTLS}, {"caSecretName": "gateway-ca"}, True),
]


def tls_pool(router: dict[str, Any], gateway_tls: dict[str, Any] | None) -> dict[str, Any]:
    gateway: dict[str, Any] = {"image": "example/gw:1"}
    if gateway_tls is not None:
        gateway["tls"] = gateway_tls
    return minimal_pool(gateway=gateway, router=router)


@pytest.mark.parametrize(("router", "gateway_tls", "accepted"), TLS_CASES)
def test_tls_settings_are_checked_alike_by_the_crd_and_the_operator(
    router: dict[str, Any], gateway_tls: dict[str, Any] | None, accepted: bool
) -> None:
    pool = tls_pool(router, gateway_tls)
    errors = rejections(pool)
    assert (errors == []) is accepted, errors
    try:
        parse_spec(pool["spec"], default_router_image="gp:1")
    except SpecError as exc:
        assert not accepted, str(exc)
    else:
        assert accepted, "the operator accepted what the CRD refuses"


SERVING = {"caSecretName": "gateway-ca", "serverCertSecretName": "gateway-serving"}


@pytest.mark.parametrize(
    ("gateway_tls", "mount_path", "accepted"),
    [
        (SERVING, "/var/lib/gateway", True),
        (SERVING, "/etc/gatewaypool", True),  # the certificate's folder inside the volume
        (SERVING, "/etc/gatewaypool/tls/server-data", True),
        (SERVING, "/etc/gatewaypool/tls/server", False),
        (SERVING, "/etc/gatewaypool/tls/server/", False),
        (SERVING, "/etc/gatewaypool/tls/server/data", False),
        ({"caSecretName": "gateway-ca"}, "/etc/gatewaypool/tls/server", True),
        (None, "/etc/gatewaypool/tls/server", True),
    ],
)
def test_storage_stays_out_of_the_gateways_certificate_folder(
    gateway_tls: dict[str, Any] | None, mount_path: str, accepted: bool
) -> None:
    gateway: dict[str, Any] = {
        "image": "example/gw:1",
        "storage": {"size": "1Gi", "mountPath": mount_path},
    }
    if gateway_tls is not None:
        gateway["tls"] = gateway_tls
    pool = minimal_pool(gateway=gateway)
    errors = rejections(pool)
    assert (errors == []) is accepted, errors
    if not accepted:
        assert any("tls.serverCertSecretName" in error for error in errors), errors
    try:
        parse_spec(pool["spec"], default_router_image="gp:1")
    except SpecError as exc:
        assert not accepted, str(exc)
        assert exc.field_path == "spec.gateway.storage.mountPath"
    else:
        assert accepted, "the operator accepted what the CRD refuses"


def test_tls_defaults() -> None:
    spec = apply_defaults(tls_pool({"tls": TLS_SERVER}, {"caSecretName": "ca"}), root_schema())
    assert spec["spec"]["router"]["plainPort"] is True
    assert spec["spec"]["router"]["tls"] == {"secretName": "router-tls", "port": 2762}
    assert spec["spec"]["gateway"]["tls"] == {"caSecretName": "ca"}
    assert "tls" not in apply_defaults(minimal_pool(), root_schema())["spec"]["router"]


def test_the_subject_pattern_is_the_operators() -> None:
    assert node("router.tls.callerSubjects[].subject")["pattern"] == SUBJECT_PATTERN


@pytest.mark.parametrize("path", SECRET_NAME_FIELDS)
def test_secret_names_are_dns_subdomains(path: str) -> None:
    schema = node(path)
    assert schema["type"] == "string"
    assert schema["maxLength"] == 253
    assert schema["pattern"] == r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def test_caller_subjects_are_a_map_by_ae_title() -> None:
    # The API server refuses a second entry for one AE title, and apply merges by it.
    subjects = node("router.tls.callerSubjects")
    assert subjects["x-kubernetes-list-type"] == "map"
    assert subjects["x-kubernetes-list-map-keys"] == ["aeTitle"]


def test_the_lists_the_caller_rule_compares_are_bounded() -> None:
    # The API server refuses a CEL rule whose estimated cost is unbounded: the rule that
    # looks up every bound AE title in allowedCallingAETitles needs both lists bounded,
    # and the operator keeps the same bounds.
    assert node("router.allowedCallingAETitles")["maxItems"] == MAX_ALLOWED_CALLING_AE_TITLES
    assert node("router.tls.callerSubjects")["maxItems"] == MAX_CALLER_SUBJECTS
    assert node("router.tls.callerSubjects[].subject")["maxLength"] == MAX_SUBJECT_LENGTH


# --- invalid GatewayPools -------------------------------------------------------------


def test_there_are_enough_invalid_files() -> None:
    assert len(INVALID) >= 12


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_file_is_refused_with_the_expected_error(path: Path) -> None:
    expected = expectation(path)
    docs = load_docs(path)
    assert len(docs) in {1, 2}, "one pool, or a stored pool and its update"
    new, old = (docs[0], None) if len(docs) == 1 else (docs[1], docs[0])
    if old is not None:
        assert rejections(old) == [], "the stored pool of an update must be valid"
    errors = rejections(new, old)
    assert errors, "accepted"
    assert any(expected in error for error in errors), errors


def test_every_rule_refuses_at_least_one_invalid_file() -> None:
    refused_by = set()
    for path in INVALID:
        docs = load_docs(path)
        errors = rejections(docs[-1], docs[0] if len(docs) == 2 else None)
        expected = expectation(path)
        refused_by |= {
            rule.rule
            for rule in all_rules()
            for error in errors
            if error.endswith(f": {rule.message}") and expected in error
        }
    assert refused_by == {rule.rule for rule in all_rules()}
