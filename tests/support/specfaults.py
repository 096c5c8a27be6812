"""GatewayPools with one fault each: what the CRD must refuse because the operator would.

One table for two tests. ``tests/e2e/test_cluster_crd_validation.py`` creates
each pool on the real API server (a dry run) and expects a refusal naming the
field; ``tests/unit/operator/test_crd_refusals.py`` feeds each to the operator's
``parse_spec`` and checks that every refusal the operator can make (every
``raise SpecError`` in the spec modules) is either shown here or listed in
:data:`SCHEMA_CANNOT` with the reason the schema cannot express it.

A refusal is named by where it is raised: ``module:function#n``, the n-th
``raise SpecError`` in that function's own body (see
``test_crd_refusals.raise_sites``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

#: A pool the API server and the operator both accept.
BASE_NAME: Final = "pool"
BASE_SPEC: Final[Mapping[str, Any]] = {"gateway": {"image": "example/gw:1"}}

STUDIES: Final = {"studiesInFlight": 4}
MTLS: Final = {"secretName": "router-tls", "clientCASecretName": "modality-ca"}
CT01: Final = {"aeTitle": "CT01", "subject": "CN=ct01,O=Example"}


@dataclass(frozen=True)
class Fault:
    """One pool with one fault.

    ``field`` is the field the API server's refusal names (a prefix of the
    operator's field path: the operator may name a list item or a map key
    below it). ``status`` is what the API server answers: 422 for a value
    the schema refuses, 400 for an unknown field under strict field
    validation (``kubectl``'s default).
    """

    id: str
    field: str
    change: Callable[[dict[str, Any]], None]
    name: str = BASE_NAME
    status: int = 422

    def pool(self, namespace: str = "radiology") -> dict[str, Any]:
        spec = copy.deepcopy(dict(BASE_SPEC))
        self.change(spec)
        body: dict[str, Any] = {
            "apiVersion": "gatewaypool.io/v1alpha1",
            "kind": "GatewayPool",
            "metadata": {"name": self.name, "namespace": namespace},
        }
        if "__nospec__" not in spec:
            body["spec"] = spec
        return body


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets the dotted `path` below ``spec`` (objects made as needed)."""

    def change(spec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        here = spec
        for part in parents:
            here = here.setdefault(part, {})
        here[last] = copy.deepcopy(value)

    return change


def _all(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(spec: dict[str, Any]) -> None:
        for one in changes:
            one(spec)

    return change


def _no_spec(spec: dict[str, Any]) -> None:
    spec["__nospec__"] = True


def _no_gateway(spec: dict[str, Any]) -> None:
    del spec["gateway"]


def _uids(count: int) -> list[str]:
    return [f"1.2.{i}" for i in range(1, count + 1)]


def _tolerations(which: str, toleration: Mapping[str, Any]) -> Callable[[dict[str, Any]], None]:
    return _set(f"{which}.podTemplate.tolerations", [dict(toleration)])


def _ingress_port(port: Any) -> Callable[[dict[str, Any]], None]:
    return _set("networkPolicy.extraIngress", [{"ports": [{"port": port}]}])


def _spread(key: str, when: str = "DoNotSchedule", **extra: Any) -> dict[str, Any]:
    return {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when, **extra}


LB = "router.service.type"
RESERVED = {"app.kubernetes.io/name": "x"}

FAULTS: Final[tuple[Fault, ...]] = (
    # --- metadata.name (check_name) --------------------------------------------------
    Fault("name-not-dns-label", "metadata.name", lambda s: None, name="1pool"),
    Fault("name-too-long", "metadata.name", lambda s: None, name="p" * 50),
    # --- spec and its counts ------------------------------------------------------------
    Fault("no-spec", "spec", _no_spec),
    Fault("replicas-over-buckets", "spec.replicas", _all(_set("replicas", 9), _set("buckets", 8))),
    Fault("replicas-over-1024", "spec.replicas", _set("replicas", 1025)),
    Fault("replicas-negative", "spec.replicas", _set("replicas", -1)),
    Fault("replicas-string", "spec.replicas", _set("replicas", "three")),
    Fault("buckets-zero", "spec.buckets", _set("buckets", 0)),
    Fault("unknown-field", "spec.colour", _set("colour", "blue"), status=400),
    Fault(
        "pull-secrets-too-many",
        "spec.imagePullSecrets",
        _set("imagePullSecrets", [{"name": f"s{i}"} for i in range(17)]),
    ),
    Fault(
        "pull-secret-twice",
        "spec.imagePullSecrets[1]",
        _set("imagePullSecrets", [{"name": "s"}, {"name": "s"}]),
    ),
    Fault("pull-secret-no-name", "spec.imagePullSecrets[0].name", _set("imagePullSecrets", [{}])),
    Fault(
        "pull-secret-not-a-subdomain",
        "spec.imagePullSecrets[0].name",
        _set("imagePullSecrets", [{"name": "Reg_Cred"}]),
    ),
    Fault("imagepullsecrets-not-a-list", "spec.imagePullSecrets", _set("imagePullSecrets", "s")),
    # --- gateway --------------------------------------------------------------------------
    Fault("gateway-missing", "spec.gateway", _no_gateway),
    Fault("gateway-not-an-object", "spec.gateway", _set("gateway", "orthanc")),
    Fault("gateway-image-missing", "spec.gateway.image", _set("gateway", {})),
    Fault("gateway-image-empty", "spec.gateway.image", _set("gateway.image", "")),
    Fault("gateway-image-whitespace", "spec.gateway.image", _set("gateway.image", "gw:1 --x")),
    Fault("gateway-image-number", "spec.gateway.image", _set("gateway.image", 7)),
    Fault(
        "gateway-pullpolicy",
        "spec.gateway.imagePullPolicy",
        _set("gateway.imagePullPolicy", "Sometimes"),
    ),
    Fault("gateway-command-not-strings", "spec.gateway.command[0]", _set("gateway.command", [1])),
    Fault("gateway-args-not-a-list", "spec.gateway.args", _set("gateway.args", "-v")),
    Fault("gateway-port-70000", "spec.gateway.port", _set("gateway.port", 70000)),
    Fault("gateway-port-zero", "spec.gateway.port", _set("gateway.port", 0)),
    Fault("gateway-aetitle-backslash", "spec.gateway.aeTitle", _set("gateway.aeTitle", "A\\B")),
    Fault("gateway-aetitle-spaces", "spec.gateway.aeTitle", _set("gateway.aeTitle", "   ")),
    Fault(
        "gateway-grace-over-an-hour",
        "spec.gateway.terminationGracePeriodSeconds",
        _set("gateway.terminationGracePeriodSeconds", 3601),
    ),
    Fault(
        "transfer-syntaxes-too-many",
        "spec.gateway.acceptedTransferSyntaxes",
        _set("gateway.acceptedTransferSyntaxes", _uids(65)),
    ),
    Fault(
        "transfer-syntax-twice",
        "spec.gateway.acceptedTransferSyntaxes[1]",
        _set("gateway.acceptedTransferSyntaxes", ["1.2.840.10008.1.2", "1.2.840.10008.1.2"]),
    ),
    Fault(
        "sop-class-not-a-uid",
        "spec.gateway.sopClasses[0]",
        _set("gateway.sopClasses", ["1.2.03"]),
    ),
    Fault("env-name-missing", "spec.gateway.env[0].name", _set("gateway.env", [{"value": "1"}])),
    Fault("env-name-empty", "spec.gateway.env[0].name", _set("gateway.env", [{"name": ""}])),
    Fault(
        "env-name-twice",
        "spec.gateway.env[1]",
        _set("gateway.env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
    ),
    Fault(
        "env-value-number",
        "spec.gateway.env[0].value",
        _set("gateway.env", [{"name": "PORT", "value": 4242}]),
    ),
    Fault(
        "env-valuefrom-string",
        "spec.gateway.env[0].valueFrom",
        _set("gateway.env", [{"name": "A", "valueFrom": "secret"}]),
    ),
    Fault("env-item-not-an-object", "spec.gateway.env[0]", _set("gateway.env", ["A=1"])),
    Fault(
        "resources-unknown-key",
        "spec.gateway.resources.limit",
        _set("gateway.resources", {"limit": {"cpu": 1}}),
        status=400,
    ),
    Fault(
        "resources-requests-not-a-map",
        "spec.gateway.resources.requests",
        _set("gateway.resources", {"requests": "1"}),
    ),
    Fault(
        "resources-claims",
        "spec.gateway.resources.claims",
        _set("gateway.resources", {"claims": [{"name": "gpu"}]}),
    ),
    Fault(
        "resources-negative",
        "spec.gateway.resources.requests.memory",
        _set("gateway.resources", {"requests": {"memory": "-1Gi"}}),
    ),
    Fault(
        "resources-negative-integer",
        "spec.router.resources.limits.cpu",
        _set("router.resources", {"limits": {"cpu": -2}}),
    ),
    Fault(
        "resources-not-a-quantity",
        "spec.router.resources.requests.cpu",
        _set("router.resources", {"requests": {"cpu": "two"}}),
    ),
    Fault("storage-without-size", "spec.gateway.storage.size", _set("gateway.storage", {})),
    Fault(
        "storage-size-zero", "spec.gateway.storage.size", _set("gateway.storage", {"size": "0Gi"})
    ),
    Fault(
        "storage-size-bad", "spec.gateway.storage.size", _set("gateway.storage", {"size": "ten"})
    ),
    Fault(
        "storage-class-not-a-subdomain",
        "spec.gateway.storage.storageClassName",
        _set("gateway.storage", {"size": "1Gi", "storageClassName": "Fast_SSD"}),
    ),
    Fault(
        "storage-mount-relative",
        "spec.gateway.storage.mountPath",
        _set("gateway.storage", {"size": "1Gi", "mountPath": "data"}),
    ),
    Fault(
        "storage-mount-tmp",
        "spec.gateway.storage.mountPath",
        _set("gateway.storage", {"size": "1Gi", "mountPath": "/tmp/"}),
    ),
    Fault(
        "storage-mount-root",
        "spec.gateway.storage.mountPath",
        _set("gateway.storage", {"size": "1Gi", "mountPath": "/"}),
    ),
    Fault(
        "storage-when-scaled",
        "spec.gateway.storage.whenScaled",
        _set("gateway.storage", {"size": "1Gi", "whenScaled": "Shred"}),
    ),
    Fault("spool-without-size", "spec.router.spool.size", _set("router.spool", {})),
    Fault("spool-size-zero", "spec.router.spool.size", _set("router.spool", {"size": "0"})),
    Fault("spool-size-bad", "spec.router.spool.size", _set("router.spool", {"size": "1 GB"})),
    Fault(
        "spool-class-not-a-subdomain",
        "spec.router.spool.storageClassName",
        _set("router.spool", {"size": "1Gi", "storageClassName": "local_nvme"}),
    ),
    Fault(
        "spool-when-sometimes",
        "spec.router.spool.when",
        _set("router.spool", {"size": "1Gi", "when": "Sometimes"}),
    ),
    Fault(
        "spool-retention-too-short",
        "spec.router.spool.retentionSeconds",
        _set("router.spool", {"size": "1Gi", "retentionSeconds": 59}),
    ),
    Fault(
        "spool-retention-too-long",
        "spec.router.spool.retentionSeconds",
        _set("router.spool", {"size": "1Gi", "retentionSeconds": 30 * 86400 + 1}),
    ),
    Fault(
        "router-gateway-timeout-zero",
        "spec.router.timeouts.gatewaySeconds",
        _set("router.timeouts", {"gatewaySeconds": 0}),
    ),
    Fault(
        "router-connect-timeout-too-long",
        "spec.router.timeouts.connectSeconds",
        _set("router.timeouts", {"connectSeconds": 301}),
    ),
    Fault(
        "spool-unknown-field",
        "spec.router.spool.mountPath",
        _set("router.spool", {"size": "1Gi", "mountPath": "/spool"}),
        status=400,
    ),
    Fault(
        "storage-in-cert-folder",
        "spec.gateway.storage.mountPath",
        _all(
            _set("gateway.tls", {"caSecretName": "ca", "serverCertSecretName": "srv"}),
            _set("gateway.storage", {"size": "1Gi", "mountPath": "/etc/gatewaypool/tls/server"}),
        ),
    ),
    Fault("gateway-tls-without-ca", "spec.gateway.tls.caSecretName", _set("gateway.tls", {})),
    Fault(
        "gateway-tls-ca-not-a-subdomain",
        "spec.gateway.tls.caSecretName",
        _set("gateway.tls", {"caSecretName": "Gateway_CA"}),
    ),
    Fault(
        "gateway-root-while-non-root",
        "spec.gateway.securityContext.runAsUser",
        _set("gateway.securityContext", {"runAsUser": 0}),
    ),
    Fault(
        "gateway-run-as-group-negative",
        "spec.gateway.securityContext.runAsGroup",
        _set("gateway.securityContext", {"runAsGroup": -1}),
    ),
    Fault(
        "gateway-non-root-not-boolean",
        "spec.gateway.securityContext.runAsNonRoot",
        _set("gateway.securityContext", {"runAsNonRoot": "yes"}),
    ),
    # --- pod templates ------------------------------------------------------------------
    Fault(
        "gateway-label-reserved",
        "spec.gateway.podTemplate.labels",
        _set("gateway.podTemplate.labels", RESERVED),
    ),
    Fault(
        "gateway-label-value-bad",
        "spec.gateway.podTemplate.labels.team",
        _set("gateway.podTemplate.labels", {"team": "radiology ct"}),
    ),
    Fault(
        "gateway-label-value-not-a-string",
        "spec.gateway.podTemplate.labels.tier",
        _set("gateway.podTemplate.labels", {"tier": 1}),
    ),
    Fault(
        "gateway-node-selector-value-bad",
        "spec.gateway.podTemplate.nodeSelector.pool",
        _set("gateway.podTemplate.nodeSelector", {"pool": "-dicom"}),
    ),
    Fault(
        "gateway-priority-class-not-a-subdomain",
        "spec.gateway.podTemplate.priorityClassName",
        _set("gateway.podTemplate.priorityClassName", "High_Priority"),
    ),
    Fault(
        "gateway-service-account-not-a-subdomain",
        "spec.gateway.podTemplate.serviceAccountName",
        _set("gateway.podTemplate.serviceAccountName", "Gateway SA"),
    ),
    Fault(
        "gateway-toleration-exists-with-value",
        "spec.gateway.podTemplate.tolerations[0].value",
        _tolerations("gateway", {"key": "dicom", "operator": "Exists", "value": "true"}),
    ),
    Fault(
        "router-toleration-exists-with-value",
        "spec.router.podTemplate.tolerations[0].value",
        _tolerations("router", {"key": "dicom", "operator": "Exists", "value": "true"}),
    ),
    Fault(
        "toleration-operator-bad",
        "spec.gateway.podTemplate.tolerations[0].operator",
        _tolerations("gateway", {"key": "dicom", "operator": "In"}),
    ),
    Fault(
        "toleration-effect-bad",
        "spec.gateway.podTemplate.tolerations[0].effect",
        _tolerations("gateway", {"key": "dicom", "effect": "NoRun"}),
    ),
    Fault(
        "toleration-unknown-field",
        "spec.gateway.podTemplate.tolerations[0].values",
        _tolerations("gateway", {"key": "dicom", "values": ["a"]}),
        status=400,
    ),
    Fault(
        "toleration-seconds-string",
        "spec.gateway.podTemplate.tolerations[0].tolerationSeconds",
        _tolerations("gateway", {"key": "dicom", "tolerationSeconds": "60"}),
    ),
    Fault(
        "affinity-unknown-kind",
        "spec.gateway.podTemplate.affinity.zoneAffinity",
        _set("gateway.podTemplate.affinity", {"zoneAffinity": {}}),
        status=400,
    ),
    Fault(
        "affinity-not-an-object",
        "spec.gateway.podTemplate.affinity.nodeAffinity",
        _set("gateway.podTemplate.affinity", {"nodeAffinity": "zone-a"}),
    ),
    Fault(
        "spread-without-max-skew",
        "spec.gateway.podTemplate.topologySpreadConstraints[0].maxSkew",
        _set(
            "gateway.podTemplate.topologySpreadConstraints",
            [{"topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}],
        ),
    ),
    Fault(
        "spread-key-empty",
        "spec.gateway.podTemplate.topologySpreadConstraints[0].topologyKey",
        _set("gateway.podTemplate.topologySpreadConstraints", [_spread("")]),
    ),
    Fault(
        "spread-without-when",
        "spec.gateway.podTemplate.topologySpreadConstraints[0].whenUnsatisfiable",
        _set("gateway.podTemplate.topologySpreadConstraints", [{"maxSkew": 1, "topologyKey": "z"}]),
    ),
    Fault(
        "spread-pair-twice",
        "spec.router.podTemplate.topologySpreadConstraints[1]",
        _set("router.podTemplate.topologySpreadConstraints", [_spread("z"), _spread("z")]),
    ),
    Fault(
        "spread-unknown-field",
        "spec.router.topologySpreadConstraints[0].skew",
        _set("router.topologySpreadConstraints", [_spread("z", skew=2)]),
        status=400,
    ),
    # --- router -------------------------------------------------------------------------
    Fault("router-image-whitespace", "spec.router.image", _set("router.image", "gp:1\n")),
    Fault("router-replicas-zero", "spec.router.replicas", _set("router.replicas", 0)),
    Fault("router-plain-port-string", "spec.router.plainPort", _set("router.plainPort", "no")),
    Fault(
        "router-plain-port-off-without-tls",
        "spec.router.plainPort",
        _set("router.plainPort", False),
    ),
    Fault(
        "router-tls-port-clash",
        "spec.router.tls.port",
        _set("router.tls", {"secretName": "t", "port": 11112}),
    ),
    Fault(
        "router-allowed-titles-too-many",
        "spec.router.allowedCallingAETitles",
        _set("router.allowedCallingAETitles", [f"AE{i}" for i in range(1025)]),
    ),
    Fault(
        "router-allowed-title-bad",
        "spec.router.allowedCallingAETitles[0]",
        _set("router.allowedCallingAETitles", ["A\\B"]),
    ),
    Fault(
        "router-spread-twice",
        "spec.router.topologySpreadConstraints",
        _all(
            _set("router.topologySpreadConstraints", [_spread("z")]),
            _set("router.podTemplate.topologySpreadConstraints", [_spread("z")]),
        ),
    ),
    Fault(
        "router-service-account",
        "spec.router.podTemplate.serviceAccountName",
        _set("router.podTemplate.serviceAccountName", "mine"),
        status=400,
    ),
    Fault("router-tls-without-secret", "spec.router.tls.secretName", _set("router.tls", {})),
    Fault(
        "router-caller-subjects-without-client-ca",
        "spec.router.tls.callerSubjects",
        _set("router.tls", {"secretName": "t", "callerSubjects": [CT01]}),
    ),
    Fault(
        "router-caller-subjects-too-many",
        "spec.router.tls.callerSubjects",
        _set(
            "router.tls",
            {**MTLS, "callerSubjects": [{**CT01, "aeTitle": f"AE{i}"} for i in range(257)]},
        ),
    ),
    Fault(
        "router-caller-title-with-equals",
        "spec.router.tls.callerSubjects[0].aeTitle",
        _set("router.tls", {**MTLS, "callerSubjects": [{**CT01, "aeTitle": "A=B"}]}),
    ),
    Fault(
        "router-caller-title-twice",
        "spec.router.tls.callerSubjects[1]",
        _set("router.tls", {**MTLS, "callerSubjects": [CT01, {**CT01, "subject": "CN=b"}]}),
    ),
    Fault(
        "router-caller-not-allowed",
        "spec.router.tls.callerSubjects",
        _all(
            _set("router.allowedCallingAETitles", ["MR1"]),
            _set("router.tls", {**MTLS, "callerSubjects": [CT01]}),
        ),
    ),
    Fault(
        "router-caller-subject-not-a-dn",
        "spec.router.tls.callerSubjects[0].subject",
        _set("router.tls", {**MTLS, "callerSubjects": [{**CT01, "subject": "ct01"}]}),
    ),
    Fault("router-service-type-bad", "spec.router.service.type", _set(LB, "External")),
    Fault(
        "router-service-type-differs",
        "spec.router.serviceType",
        _all(_set("router.serviceType", "NodePort"), _set(LB, "LoadBalancer")),
    ),
    Fault(
        "router-lb-class-not-qualified",
        "spec.router.service.loadBalancerClass",
        _all(_set(LB, "LoadBalancer"), _set("router.service.loadBalancerClass", "metal lb")),
    ),
    Fault(
        "router-lb-class-on-clusterip",
        "spec.router.service.loadBalancerClass",
        _set("router.service.loadBalancerClass", "example.com/lb"),
    ),
    Fault(
        "router-source-ranges-too-many",
        "spec.router.service.loadBalancerSourceRanges",
        _all(
            _set(LB, "LoadBalancer"),
            _set(
                "router.service.loadBalancerSourceRanges",
                [f"10.0.{i // 256}.{i % 256}/32" for i in range(257)],
            ),
        ),
    ),
    Fault(
        "router-source-range-not-cidr",
        "spec.router.service.loadBalancerSourceRanges[0]",
        _all(_set(LB, "LoadBalancer"), _set("router.service.loadBalancerSourceRanges", ["lan"])),
    ),
    Fault(
        "router-service-label-reserved",
        "spec.router.service.labels",
        _set("router.service.labels", RESERVED),
    ),
    Fault(
        "router-service-label-value-bad",
        "spec.router.service.labels.team",
        _set("router.service.labels", {"team": "a b"}),
    ),
    Fault(
        "router-traffic-policy-bad",
        "spec.router.service.externalTrafficPolicy",
        _all(_set(LB, "NodePort"), _set("router.service.externalTrafficPolicy", "Nearest")),
    ),
    Fault(
        "router-node-ports-on-clusterip",
        "spec.router.service.nodePorts",
        _set("router.service.nodePorts", {"dicom": 30104}),
    ),
    Fault(
        "router-node-port-over-65535",
        "spec.router.service.nodePorts.dicom",
        _all(_set(LB, "NodePort"), _set("router.service.nodePorts", {"dicom": 70000})),
    ),
    Fault(
        "router-node-port-tls-without-tls",
        "spec.router.service.nodePorts.dicomTLS",
        _all(_set(LB, "NodePort"), _set("router.service.nodePorts", {"dicomTLS": 30762})),
    ),
    Fault(
        "router-node-ports-equal",
        "spec.router.service.nodePorts.dicomTLS",
        _all(
            _set(LB, "NodePort"),
            _set("router.tls", {"secretName": "t"}),
            _set("router.service.nodePorts", {"dicom": 30104, "dicomTLS": 30104}),
        ),
    ),
    Fault(
        "router-ip-families-three",
        "spec.router.service.ipFamilies",
        _set("router.service.ipFamilies", ["IPv4", "IPv6", "IPv4"]),
    ),
    Fault(
        "router-ip-families-twice",
        "spec.router.service.ipFamilies",
        _set("router.service.ipFamilies", ["IPv4", "IPv4"]),
    ),
    Fault(
        "router-ip-family-bad",
        "spec.router.service.ipFamilies[0]",
        _set("router.service.ipFamilies", ["IPv5"]),
    ),
    Fault(
        "router-single-stack-two-families",
        "spec.router.service.ipFamilyPolicy",
        _all(
            _set("router.service.ipFamilyPolicy", "SingleStack"),
            _set("router.service.ipFamilies", ["IPv4", "IPv6"]),
        ),
    ),
    # --- networkPolicy ------------------------------------------------------------------
    Fault(
        "network-policy-enabled-string",
        "spec.networkPolicy.enabled",
        _set("networkPolicy.enabled", "yes"),
    ),
    Fault(
        "extra-ingress-port-70000",
        "spec.networkPolicy.extraIngress[0].ports[0].port",
        _ingress_port(70000),
    ),
    Fault(
        "extra-ingress-port-empty-name",
        "spec.networkPolicy.extraIngress[0].ports[0].port",
        _ingress_port(""),
    ),
    Fault(
        "extra-ingress-port-boolean",
        "spec.networkPolicy.extraIngress[0].ports[0].port",
        _ingress_port(True),
    ),
    Fault(
        "extra-ingress-protocol-bad",
        "spec.networkPolicy.extraIngress[0].ports[0].protocol",
        _set("networkPolicy.extraIngress", [{"ports": [{"protocol": "ICMP"}]}]),
    ),
    Fault(
        "extra-ingress-port-unknown-field",
        "spec.networkPolicy.extraIngress[0].ports[0].portName",
        _set("networkPolicy.extraIngress", [{"ports": [{"portName": "dicom"}]}]),
        status=400,
    ),
    Fault(
        "extra-ingress-peer-unknown-field",
        "spec.networkPolicy.extraIngress[0].from[0].cidr",
        _set("networkPolicy.extraIngress", [{"from": [{"cidr": "10.0.0.0/8"}]}]),
        status=400,
    ),
    Fault(
        "router-from-unknown-field",
        "spec.networkPolicy.routerFrom[0].ipRange",
        _set("networkPolicy.routerFrom", [{"ipRange": "10.0.0.0/8"}]),
        status=400,
    ),
    # --- handover -----------------------------------------------------------------------
    Fault(
        "handover-drain-below-quiet",
        "spec.handover.maxDrainSeconds",
        _set("handover", {"quietSeconds": 61, "maxDrainSeconds": 60}),
    ),
    Fault("handover-quiet-zero", "spec.handover.quietSeconds", _set("handover.quietSeconds", 0)),
    # --- autoscaling --------------------------------------------------------------------
    Fault(
        "autoscaling-without-max",
        "spec.autoscaling.maxReplicas",
        _set("autoscaling", {"targets": STUDIES}),
    ),
    Fault(
        "autoscaling-without-targets",
        "spec.autoscaling.targets",
        _set("autoscaling", {"maxReplicas": 3}),
    ),
    Fault(
        "autoscaling-max-over-buckets",
        "spec.autoscaling.maxReplicas",
        _all(_set("buckets", 8), _set("autoscaling", {"maxReplicas": 9, "targets": STUDIES})),
    ),
    Fault(
        "autoscaling-max-over-1024",
        "spec.autoscaling.maxReplicas",
        _set("autoscaling", {"maxReplicas": 1025, "targets": STUDIES}),
    ),
    Fault(
        "autoscaling-max-below-min",
        "spec.autoscaling.maxReplicas",
        _set("autoscaling", {"minReplicas": 3, "maxReplicas": 2, "targets": STUDIES}),
    ),
    Fault(
        "autoscaling-no-target",
        "spec.autoscaling.targets",
        _set("autoscaling", {"maxReplicas": 3, "targets": {}}),
    ),
    Fault(
        "autoscaling-target-zero",
        "spec.autoscaling.targets.studiesInFlight",
        _set("autoscaling", {"maxReplicas": 3, "targets": {"studiesInFlight": 0}}),
    ),
    Fault(
        "autoscaling-cpu-without-request",
        "spec.autoscaling.targets.cpuUtilization",
        _set("autoscaling", {"maxReplicas": 3, "targets": {"cpuUtilization": 70}}),
    ),
    Fault(
        "autoscaling-cpu-request-zero",
        "spec.autoscaling.targets.cpuUtilization",
        _all(
            _set("gateway.resources", {"requests": {"cpu": "0m"}}),
            _set("autoscaling", {"maxReplicas": 3, "targets": {"cpuUtilization": 70}}),
        ),
    ),
    Fault(
        "autoscaling-default-window-over-an-hour",
        "spec.handover.maxDrainSeconds",
        _all(
            _set("handover.maxDrainSeconds", 3601),
            _set("autoscaling", {"maxReplicas": 3, "targets": STUDIES}),
        ),
    ),
    Fault(
        "autoscaling-window-over-an-hour",
        "spec.autoscaling.scaleDown.stabilizationSeconds",
        _set(
            "autoscaling",
            {"maxReplicas": 3, "targets": STUDIES, "scaleDown": {"stabilizationSeconds": 3601}},
        ),
    ),
    Fault(
        "autoscaling-window-below-drain",
        "spec.autoscaling.scaleDown.stabilizationSeconds",
        _set(
            "autoscaling",
            {"maxReplicas": 3, "targets": STUDIES, "scaleDown": {"stabilizationSeconds": 599}},
        ),
    ),
    Fault(
        "autoscaling-period-zero",
        "spec.autoscaling.scaleDown.periodSeconds",
        _set(
            "autoscaling", {"maxReplicas": 3, "targets": STUDIES, "scaleDown": {"periodSeconds": 0}}
        ),
    ),
)


#: The operator's refusals the CRD's schema cannot make, and why.
SCHEMA_CANNOT: Final[Mapping[str, str]] = {
    "spec.parse:_router#1": (
        "no router image and no operator default: the default is the operator's "
        "GATEWAYPOOL_IMAGE, which the CRD cannot see"
    ),
    "spec.parse:_router#2": (
        "whitespace in the default router image: a spec.router.image with whitespace is "
        "refused earlier (spec.pod:image#2, in the table); this one is the operator's own "
        "GATEWAYPOOL_IMAGE"
    ),
    "spec.fields:__init__#2": (
        "a field name that is not a string: JSON object keys always are, so no request "
        "can carry one"
    ),
    "spec.fields:_check_qualified_name#1": (
        "label and annotation keys (qualified names): a schema cannot constrain a map's "
        "keys, and the API server refuses a CEL rule over them (self.all(k, k.matches(...))) "
        "as over its cost budget (1.6x, tried) unless every labels, annotations and "
        "nodeSelector map gets a maxProperties, a bound neither Kubernetes nor the "
        "operator has"
    ),
}

#: Refusals the table shows that the schema makes only in part: it refuses the common
#: case, not every value the operator does, and why.
SCHEMA_PARTLY: Final[Mapping[str, str]] = {
    "spec.parse:_check_cidr#1": (
        "a CIDR's numbers (10.0.0.300/24, /129): the schema's pattern refuses what is "
        "not address/prefix, but checking the address needs CEL's isCIDR (Kubernetes "
        "1.31), newer than the 1.29 the CRD supports"
    ),
}
