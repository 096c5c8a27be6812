"""Reading a GatewayPool's spec: `parse_spec`, its section readers and the spec's limits.

The API server checks a spec against the CRD's schema and fills in its
defaults, but the operator must not rely on that: a CRD installed without
the schema, or an older CRD version, would otherwise let a half-filled spec
reach the code that builds StatefulSets. `parse_spec` therefore applies every default
of the contract itself and checks everything the schema checks, plus what
only the operator can know: that a label cannot break the pool's selectors,
that an AE title is usable in a bucket map, that a router image exists at
all. Everything downstream receives a :class:`PoolSpec` and never looks at
raw dictionaries again.

Errors are :class:`SpecError`\\ s that name the field as a user writes it in
``kubectl edit`` (``spec.gateway.port``) and the offending value, since the
message ends up in an Event and in ``status.conditions`` where the user has
to find that field.

This module reads the pool-level sections (gateway, storage, router and its
TLS, handover, autoscaling, network policy) into the dataclasses of
`gatewaypool_operator.spec.types`; the readers of the pod template and of
the container fields both sections share (image, env, resources, spread)
are `gatewaypool_operator.spec.pod`'s, and the field reader, `SpecError`,
the value checks and `thaw` are `gatewaypool_operator.spec.fields`'.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

from gatewaypool.contract import (
    MAX_BUCKETS,
    SUBJECT_ATTRIBUTE_TYPES,
    uid_problem,
)
from gatewaypool.quantity import QuantityError
from gatewaypool.quantity import parse as parse_quantity
from gatewaypool.strict import is_int, kind_of
from gatewaypool_operator.children.podparts import GATEWAY_CERT_DIRECTORY
from gatewaypool_operator.spec import pod
from gatewaypool_operator.spec.fields import (
    DNS_LABEL,
    QUANTITY,
    SpecError,
    SpecObject,
    check_ae_title,
    check_subdomain,
    is_qualified_name,
)
from gatewaypool_operator.spec.pod import RESERVED_LABELS
from gatewaypool_operator.spec.types import (
    DEFAULT_BUCKETS,
    DEFAULT_TLS_PORT,
    AutoscalingSpec,
    CallerSubject,
    GatewaySecurityContextSpec,
    GatewaySpec,
    GatewayTLSSpec,
    HandoverSpec,
    NetworkPolicySpec,
    PodTemplateSpec,
    PoolSpec,
    RouterServiceSpec,
    RouterSpec,
    RouterTimeouts,
    RouterTLSSpec,
    SpoolSpec,
    StorageSpec,
)

__all__ = [
    "MAX_ALLOWED_CALLING_AE_TITLES",
    "MAX_CALLER_SUBJECTS",
    "MAX_NAME_LENGTH",
    "MAX_SCALE_DOWN_WINDOW",
    "MAX_SUBJECT_LENGTH",
    "ROUTER_TIMEOUTS",
    "SPOOL_WHEN",
    "SUBJECT_PATTERN",
    "check_name",
    "parse_spec",
]

MAX_REPLICAS: Final = 1024
MAX_ROUTER_REPLICAS: Final = 100
MAX_SCALE_DOWN_WINDOW: Final = 3600
"""The longest scale-down stabilization window a HorizontalPodAutoscaler accepts, seconds."""
MIN_DEFAULT_SCALE_DOWN_WINDOW: Final = 300
"""The HorizontalPodAutoscaler's own scale-down window, the least the default ever is."""
TMP_PATH: Final = "/tmp"  # every pod mounts an emptyDir here; storage must not clash
MAX_CALLER_SUBJECTS: Final = 256
MAX_ALLOWED_CALLING_AE_TITLES: Final = 1024
"""List bounds the CRD sets too: its CEL rule that compares the two lists must
have a bounded cost for the API server to accept the CRD."""
MAX_SUBJECT_LENGTH: Final = 1024


MAX_NAME_LENGTH: Final = 49
"""Longest pool name whose children all get valid names.

The StatefulSet ``NAME-gw`` stamps its pods with the label
``controller-revision-hash: NAME-gw-<10 characters>``, and a label value
holds at most 63 characters: 63 - 11 - 3 = 49.
"""

_SUBJECT_PAIR: Final = (
    rf"((?i:{'|'.join(SUBJECT_ATTRIBUTE_TYPES)})|[0-9]+(\.[0-9]+)+)"
    r'=([^,+;"<>\\\x00-\x1f]|\\.)+'
)
SUBJECT_PATTERN: Final = f"^{_SUBJECT_PAIR}([,+] *{_SUBJECT_PAIR})*$"
"""A distinguished name in RFC 4514 form (``CN=ct01.example.org,O=Example Hospital``):
``TYPE=VALUE`` pairs separated by ``,`` (or ``+`` within one RDN) and optional
spaces, special characters in values escaped with a backslash. TYPE is one
of `gatewaypool.contract.SUBJECT_ATTRIBUTE_TYPES` (any case) or a dotted OID
(``2.5.4.5`` for a serial number, ``1.2.840.113549.1.9.1`` for an e-mail
address): what the router's ``--caller-subject`` parses. The CRD's schema uses this pattern too."""
_SUBJECT = re.compile(SUBJECT_PATTERN)
_PULL_POLICIES: Final = ("Always", "IfNotPresent", "Never")
_SERVICE_TYPES: Final = ("ClusterIP", "NodePort", "LoadBalancer")
_EXTERNAL_TRAFFIC_POLICIES: Final = ("Cluster", "Local")
_IP_FAMILY_POLICIES: Final = ("SingleStack", "PreferDualStack", "RequireDualStack")
_IP_FAMILIES: Final = ("IPv4", "IPv6")
MAX_SOURCE_RANGES: Final = 256
"""The most ``spec.router.service.loadBalancerSourceRanges`` a pool may list (the CRD's bound)."""
MAX_IMAGE_PULL_SECRETS: Final = 16
"""The most ``spec.imagePullSecrets`` a pool may name (the CRD's bound)."""


def parse_spec(spec: Mapping[str, Any], *, default_router_image: str) -> PoolSpec:
    """Check a GatewayPool's ``spec`` and return it typed, with every default applied.

    Parameters
    ----------
    spec
        The resource's ``spec`` as the API returns it (already defaulted by
        the API server or not: the result is the same).
    default_router_image
        The image routers run when ``spec.router.image`` is empty: the
        operator's own (``GATEWAYPOOL_IMAGE``), since the router is a
        command of the same image. May be ``""`` if the operator does not
        know it; then a spec must name a router image.

    Returns
    -------
    PoolSpec
        The spec, valid as a whole: replicas fit the buckets, every label and
        AE title is usable.

    Raises
    ------
    SpecError
        At the first field that is missing, of the wrong type, out of range
        or unknown; unknown fields are refused (not ignored) because a
        misspelt optional field would otherwise silently take its default.
    """
    if spec is None:
        raise SpecError("spec", SpecError.MISSING, "is required")
    root = SpecObject(
        spec,
        "spec",
        keys=(
            "replicas",
            "buckets",
            "gateway",
            "router",
            "handover",
            "networkPolicy",
            "autoscaling",
            "imagePullSecrets",
        ),
    )
    buckets = root.integer("buckets", default=DEFAULT_BUCKETS, low=1, high=MAX_BUCKETS)
    replicas = root.integer("replicas", default=1, low=0, high=None)
    if replicas > buckets:
        # Checked before the upper bound: a pool needs a bucket for every gateway.
        raise SpecError("spec.replicas", replicas, f"exceeds spec.buckets ({buckets})")
    if replicas > MAX_REPLICAS:
        raise SpecError("spec.replicas", replicas, f"is more than {MAX_REPLICAS} gateways")
    gateway = _gateway(root.child("gateway", required=True))
    router = _router(root.child("router"), default_router_image=default_router_image)
    handover = _handover(root.child("handover"))
    network_policy = _network_policy(root.child("networkPolicy"))
    autoscaling = root.child("autoscaling", optional=True)
    return PoolSpec(
        replicas=replicas,
        buckets=buckets,
        gateway=gateway,
        router=router,
        handover=handover,
        network_policy=network_policy,
        autoscaling=(
            None
            if autoscaling is None
            else _autoscaling(autoscaling, buckets=buckets, gateway=gateway, handover=handover)
        ),
        image_pull_secrets=_image_pull_secrets(root),
    )


def _image_pull_secrets(root: SpecObject) -> tuple[str, ...]:
    """``spec.imagePullSecrets``: ``{name}`` entries, each a Secret's name, none twice."""
    entries = root.objects("imagePullSecrets")
    path = root.path("imagePullSecrets")
    if len(entries) > MAX_IMAGE_PULL_SECRETS:
        raise SpecError(
            path, entries, f"has {len(entries)} entries, more than {MAX_IMAGE_PULL_SECRETS}"
        )
    names: list[str] = []
    for index, entry in enumerate(entries):
        item = SpecObject(entry, f"{path}[{index}]")
        item.keys("name")
        name = _required_secret_name(item, "name")
        if name in names:
            raise SpecError(item.path("name"), name, "appears twice (each Secret once)")
        names.append(name)
    return tuple(names)


def check_name(name: str) -> None:
    """Refuse a pool name that would give its children invalid names.

    Services need RFC 1035 labels (a letter first), and the StatefulSet's
    revision label caps the name at `MAX_NAME_LENGTH` characters. The API
    server accepts longer or digit-first GatewayPool names, so only the
    operator can refuse them, before creating anything.

    Raises
    ------
    SpecError
        With field path ``metadata.name``.
    """
    if not isinstance(name, str) or not DNS_LABEL.match(name):
        raise SpecError(
            "metadata.name",
            name,
            "is not a DNS label (lower-case letters, digits and '-', a letter first): "
            "the pool's Services are named after it",
        )
    if len(name) > MAX_NAME_LENGTH:
        raise SpecError(
            "metadata.name",
            name,
            f"is longer than {MAX_NAME_LENGTH} characters, too long for the names and "
            "labels of the pool's StatefulSet pods",
        )


# --- sections -----------------------------------------------------------------


def _gateway(section: SpecObject) -> GatewaySpec:
    section.keys(
        "image",
        "imagePullPolicy",
        "command",
        "args",
        "port",
        "aeTitle",
        "env",
        "resources",
        "storage",
        "podTemplate",
        "terminationGracePeriodSeconds",
        "tls",
        "securityContext",
        "acceptedTransferSyntaxes",
        "sopClasses",
    )
    storage_section = section.child("storage", optional=True)
    storage = None if storage_section is None else _storage(storage_section)
    tls_section = section.child("tls", optional=True)
    tls = None if tls_section is None else _gateway_tls(tls_section)
    if (
        storage is not None
        and tls is not None
        and tls.server_cert_secret_name is not None
        and _within(storage.mount_path, GATEWAY_CERT_DIRECTORY)
    ):
        raise SpecError(
            section.path("storage.mountPath"),
            storage.mount_path,
            f"is {GATEWAY_CERT_DIRECTORY} or inside it, where the gateway pods mount "
            "spec.gateway.tls.serverCertSecretName",
        )
    return GatewaySpec(
        image=pod.image(section, "image", default=None),
        image_pull_policy=section.choice("imagePullPolicy", _PULL_POLICIES, "IfNotPresent"),
        command=section.strings("command"),
        args=section.strings("args"),
        port=section.integer("port", default=104, low=1, high=65535),
        ae_title=section.ae_title("aeTitle", default="GATEWAY"),
        env=pod.env(section),
        resources=pod.resources(section, "resources"),
        storage=storage,
        pod_template=pod.pod_template(section.child("podTemplate")),
        termination_grace_period_seconds=section.integer(
            "terminationGracePeriodSeconds", default=30, low=0, high=3600
        ),
        tls=tls,
        security_context=_gateway_security_context(section.child("securityContext")),
        accepted_transfer_syntaxes=_uids(section, "acceptedTransferSyntaxes", most=64),
        sop_classes=_uids(section, "sopClasses", most=1024),
    )


def _uids(section: SpecObject, key: str, *, most: int) -> tuple[str, ...]:
    """A list of UIDs, each once (as the CRD's list type ``set`` and the router check)."""
    values = section.strings(key)
    if len(values) > most:
        raise SpecError(section.path(key), len(values), f"has more than {most} UIDs")
    for index, value in enumerate(values):
        problem = uid_problem(value)
        if problem is not None:
            raise SpecError(f"{section.path(key)}[{index}]", value, f"is not a UID ({problem})")
    if len(set(values)) != len(values):
        raise SpecError(section.path(key), list(values), "names a UID twice")
    return values


MAX_ID: Final = 2**31 - 1
"""The largest user or group id a pod's securityContext takes (an int64 the kubelet
checks against the Linux limit)."""


def _gateway_security_context(section: SpecObject) -> GatewaySecurityContextSpec:
    """``spec.gateway.securityContext``: ids in 0..2^31-1; root refused while runAsNonRoot."""
    section.keys("runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup")

    def identity(key: str) -> int | None:
        if section.data.get(key) is None:
            return None
        return section.integer(key, default=0, low=0, high=MAX_ID)

    user = identity("runAsUser")
    non_root = section.boolean("runAsNonRoot", default=True)
    if non_root and user == 0:
        raise SpecError(
            section.path("runAsUser"),
            user,
            "is root, which runAsNonRoot (true unless set to false) forbids: the kubelet "
            "would refuse to start the gateway",
        )
    return GatewaySecurityContextSpec(
        run_as_user=user,
        run_as_group=identity("runAsGroup"),
        run_as_non_root=non_root,
        fs_group=identity("fsGroup"),
    )


def _gateway_tls(section: SpecObject) -> GatewayTLSSpec:
    section.keys("caSecretName", "clientCertSecretName", "serverCertSecretName")
    return GatewayTLSSpec(
        ca_secret_name=_required_secret_name(section, "caSecretName"),
        client_cert_secret_name=_secret_name(section, "clientCertSecretName"),
        server_cert_secret_name=_secret_name(section, "serverCertSecretName"),
    )


def _within(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or inside it (trailing slashes aside)."""
    return (path.rstrip("/") + "/").startswith(folder + "/")


def _storage(section: SpecObject) -> StorageSpec:
    section.keys("size", "storageClassName", "mountPath", "whenScaled")
    size = _volume_size(section)
    storage_class = _storage_class(section)
    mount_path = section.string("mountPath", default="/var/lib/gateway")
    if not mount_path.startswith("/") or mount_path.rstrip("/") in ("", TMP_PATH):
        raise SpecError(
            section.path("mountPath"),
            mount_path,
            f"is not an absolute path other than / and {TMP_PATH} "
            f"(every pod has an emptyDir at {TMP_PATH})",
        )
    return StorageSpec(
        size=size,
        storage_class_name=storage_class,
        mount_path=mount_path,
        when_scaled=section.choice("whenScaled", ("Retain", "Delete"), "Retain"),
    )


def _volume_size(section: SpecObject) -> str:
    """A volume's ``size``: required, a quantity above zero (a claim's storage request)."""
    size = section.string("size", default=None)
    if not QUANTITY.match(size) or size.startswith("-") or not any(c in "123456789" for c in size):
        raise SpecError(section.path("size"), size, "is not a positive quantity (e.g. 10Gi)")
    return size


def _storage_class(section: SpecObject) -> str | None:
    """A volume's optional ``storageClassName``: None (the cluster's default) when not set."""
    storage_class = section.string("storageClassName", default="")
    if storage_class:
        check_subdomain(section.path("storageClassName"), storage_class)
    return storage_class or None


SPOOL_WHEN: Final = ("GatewayUnavailable", "Always")
"""``spec.router.spool.when``: spool what a gateway cannot take now, or every instance."""
MIN_RETENTION_SECONDS: Final = 60
MAX_RETENTION_SECONDS: Final = 30 * 86400


def _spool(section: SpecObject) -> SpoolSpec:
    """``spec.router.spool``: a volume per router, and when and how long it holds instances."""
    section.keys("size", "storageClassName", "when", "retentionSeconds")
    return SpoolSpec(
        size=_volume_size(section),
        storage_class_name=_storage_class(section),
        when=section.choice("when", SPOOL_WHEN, "GatewayUnavailable"),
        retention_seconds=section.integer(
            "retentionSeconds",
            default=86400,
            low=MIN_RETENTION_SECONDS,
            high=MAX_RETENTION_SECONDS,
        ),
    )


def _router(section: SpecObject, *, default_router_image: str) -> RouterSpec:
    section.keys(
        "replicas",
        "image",
        "aeTitle",
        "port",
        "serviceType",
        "service",
        "allowedCallingAETitles",
        "resources",
        "topologySpreadConstraints",
        "podTemplate",
        "plainPort",
        "tls",
        "spool",
        "timeouts",
    )
    image = pod.image(section, "image", default="") or default_router_image
    if not image:
        raise SpecError(
            section.path("image"),
            "",
            "names no image, and the operator has no default router image "
            "(its GATEWAYPOOL_IMAGE is not set)",
        )
    if any(char.isspace() for char in image):
        raise SpecError(section.path("image"), image, "is not an image reference (whitespace)")
    allowed = section.strings("allowedCallingAETitles")
    if len(allowed) > MAX_ALLOWED_CALLING_AE_TITLES:
        raise SpecError(
            section.path("allowedCallingAETitles"),
            allowed,
            f"has {len(allowed)} titles, more than {MAX_ALLOWED_CALLING_AE_TITLES}",
        )
    for index, title in enumerate(allowed):
        check_ae_title(f"{section.path('allowedCallingAETitles')}[{index}]", title)
    port = section.integer("port", default=11112, low=1, high=65535)
    plain_port = section.boolean("plainPort", default=True)
    tls_section = section.child("tls", optional=True)
    tls = None if tls_section is None else _router_tls(tls_section, allowed=allowed)
    spool_section = section.child("spool", optional=True)
    if tls is None and not plain_port:
        raise SpecError(
            section.path("plainPort"),
            plain_port,
            "needs spec.router.tls: without the plain port the router would have no DICOM "
            "port at all",
        )
    if tls is not None and plain_port and tls.port == port:
        raise SpecError(
            section.path("tls.port"),
            tls.port,
            "is spec.router.port too: the plain and the TLS port need two numbers "
            "(or set spec.router.plainPort: false)",
        )
    return RouterSpec(
        replicas=section.integer("replicas", default=2, low=1, high=MAX_ROUTER_REPLICAS),
        image=image,
        ae_title=section.ae_title("aeTitle", default="GATEWAYPOOL"),
        port=port,
        service=_router_service(section, plain_port=plain_port, tls=tls is not None),
        allowed_calling_ae_titles=allowed,
        resources=pod.resources(section, "resources"),
        pod_template=_router_pod_template(section),
        plain_port=plain_port,
        tls=tls,
        spool=None if spool_section is None else _spool(spool_section),
        timeouts=_router_timeouts(section.child("timeouts", optional=True)),
    )


#: ``spec.router.timeouts``: each field's name and range, as in the CRD.
ROUTER_TIMEOUTS: Final = {
    "gatewaySeconds": 3600,
    "connectSeconds": 300,
    "associationRequestSeconds": 600,
    "senderIdleSeconds": 86400,
    "gatewayIdleReleaseSeconds": 3600,
    "stallWarningSeconds": 3600,
}


def _router_timeouts(section: SpecObject | None) -> RouterTimeouts:
    """``spec.router.timeouts``: each in 1..its maximum, or unset (the router's default)."""
    if section is None:
        return RouterTimeouts()
    section.keys(*ROUTER_TIMEOUTS)
    value = {
        key: section.optional_integer(key, low=1, high=top) for key, top in ROUTER_TIMEOUTS.items()
    }
    return RouterTimeouts(
        gateway_seconds=value["gatewaySeconds"],
        connect_seconds=value["connectSeconds"],
        association_request_seconds=value["associationRequestSeconds"],
        sender_idle_seconds=value["senderIdleSeconds"],
        gateway_idle_release_seconds=value["gatewayIdleReleaseSeconds"],
        stall_warning_seconds=value["stallWarningSeconds"],
    )


def _router_pod_template(section: SpecObject) -> PodTemplateSpec:
    """``spec.router.podTemplate``, whose spread ``spec.router.topologySpreadConstraints``
    (the older spelling) may give instead, not both."""
    template_section = section.child("podTemplate")
    template = pod.pod_template(template_section, with_service_account=False)
    older = pod.spread(section)
    if older is None:
        return template
    if template.topology_spread_constraints is not None:
        raise SpecError(
            section.path("topologySpreadConstraints"),
            older,
            "is set with spec.router.podTemplate.topologySpreadConstraints too "
            "(one field: podTemplate.topologySpreadConstraints)",
        )
    return PodTemplateSpec(
        labels=template.labels,
        annotations=template.annotations,
        node_selector=template.node_selector,
        tolerations=template.tolerations,
        affinity=template.affinity,
        priority_class_name=template.priority_class_name,
        topology_spread_constraints=older,
    )


def _router_service(section: SpecObject, *, plain_port: bool, tls: bool) -> RouterServiceSpec:
    """``spec.router.service``, with ``spec.router.serviceType`` as the older name of its type.

    Every rule here is a rule of the API server for a Service (or of the
    router's ports), refused at the pool's field instead of as a Service
    the API server rejects on every pass; the CRD's rules say the same.
    """
    service = section.child("service")
    service.keys(
        "type",
        "annotations",
        "labels",
        "loadBalancerClass",
        "loadBalancerSourceRanges",
        "externalTrafficPolicy",
        "nodePorts",
        "ipFamilyPolicy",
        "ipFamilies",
    )
    alias = section.data.get("serviceType")
    alias_type = None if alias is None else section.choice("serviceType", _SERVICE_TYPES, "")
    kind = service.choice("type", _SERVICE_TYPES, alias_type or "ClusterIP")
    if alias_type is not None and service.data.get("type") is not None and kind != alias_type:
        raise SpecError(
            section.path("serviceType"),
            alias_type,
            f"differs from spec.router.service.type ({kind}); serviceType is the older name "
            "of service.type: set only service.type",
        )

    def only_with(key: str, types: Sequence[str]) -> None:
        if service.data.get(key) is not None and kind not in types:
            raise SpecError(
                service.path(key),
                service.data[key],
                f"needs spec.router.service.type {' or '.join(types)} (it is {kind})",
            )

    labels = service.string_map("labels", values="label")
    for key in labels:
        if key in RESERVED_LABELS:
            raise SpecError(
                f"{service.path('labels')}[{key!r}]",
                labels[key],
                "would override a label the pool's selectors rely on (set by the operator)",
            )
    only_with("loadBalancerClass", ("LoadBalancer",))
    load_balancer_class = service.string("loadBalancerClass", default="") or None
    if load_balancer_class is not None and not is_qualified_name(load_balancer_class):
        raise SpecError(
            service.path("loadBalancerClass"),
            load_balancer_class,
            "is not a qualified name (e.g. example.com/internal-lb)",
        )
    only_with("loadBalancerSourceRanges", ("LoadBalancer",))
    ranges = service.strings("loadBalancerSourceRanges")
    if len(ranges) > MAX_SOURCE_RANGES:
        raise SpecError(
            service.path("loadBalancerSourceRanges"),
            ranges,
            f"has {len(ranges)} ranges, more than {MAX_SOURCE_RANGES}",
        )
    for index, text in enumerate(ranges):
        _check_cidr(f"{service.path('loadBalancerSourceRanges')}[{index}]", text)
    only_with("externalTrafficPolicy", ("NodePort", "LoadBalancer"))
    traffic = service.data.get("externalTrafficPolicy")
    if traffic is not None:
        traffic = service.choice("externalTrafficPolicy", _EXTERNAL_TRAFFIC_POLICIES, "Cluster")
    only_with("nodePorts", ("NodePort", "LoadBalancer"))
    ports = _node_ports(service.child("nodePorts"), plain_port=plain_port, tls=tls)
    policy, families = _ip_families(service)
    return RouterServiceSpec(
        type=kind,
        annotations=service.string_map("annotations", values="any"),
        labels=labels,
        load_balancer_class=load_balancer_class,
        load_balancer_source_ranges=ranges,
        external_traffic_policy=traffic,
        node_port=ports["dicom"],
        tls_node_port=ports["dicomTLS"],
        ip_family_policy=policy,
        ip_families=families,
    )


def _node_ports(node_ports: SpecObject, *, plain_port: bool, tls: bool) -> dict[str, int | None]:
    """``spec.router.service.nodePorts``: ``dicom`` and ``dicomTLS``, each only with its port."""
    node_ports.keys("dicom", "dicomTLS")
    ports: dict[str, int | None] = {}
    for key, needed, why in (
        ("dicom", plain_port, "spec.router.plainPort (the plain DICOM port)"),
        ("dicomTLS", tls, "spec.router.tls (the DICOM TLS port)"),
    ):
        if node_ports.data.get(key) is None:
            ports[key] = None
            continue
        ports[key] = node_ports.integer(key, default=0, low=1, high=65535)
        if not needed:
            raise SpecError(node_ports.path(key), ports[key], f"needs {why}")
    if ports["dicom"] is not None and ports["dicom"] == ports["dicomTLS"]:
        raise SpecError(
            node_ports.path("dicomTLS"),
            ports["dicomTLS"],
            "is nodePorts.dicom too: the plain and the TLS port need two node ports",
        )
    return ports


def _ip_families(service: SpecObject) -> tuple[str | None, tuple[str, ...]]:
    """``ipFamilyPolicy`` and ``ipFamilies`` of the router Service, checked together."""
    policy = service.data.get("ipFamilyPolicy")
    if policy is not None:
        policy = service.choice("ipFamilyPolicy", _IP_FAMILY_POLICIES, "SingleStack")
    families = service.strings("ipFamilies")
    for index, family in enumerate(families):
        if family not in _IP_FAMILIES:
            raise SpecError(
                f"{service.path('ipFamilies')}[{index}]",
                family,
                f"is not one of {', '.join(_IP_FAMILIES)}",
            )
    if len(families) > 2 or len(set(families)) != len(families):
        raise SpecError(
            service.path("ipFamilies"), families, "is not one or two different families"
        )
    if len(families) == 2 and policy == "SingleStack":
        raise SpecError(
            service.path("ipFamilyPolicy"),
            policy,
            "cannot have two ipFamilies (use PreferDualStack or RequireDualStack)",
        )
    return policy, families


def _check_cidr(path: str, text: str) -> None:
    """Refuse `text` unless it is an IPv4 or IPv6 network in CIDR form (``10.20.0.0/16``)."""
    address, _, prefix = text.partition("/")
    if prefix.isdigit() and prefix.isascii() and "%" not in address:
        # ip_network would take a netmask (/255.255.0.0) or a scope (%eth0); Go's
        # ParseCIDR, which the API server uses, takes neither.
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            pass
        else:
            return
    raise SpecError(path, text, "is not an address range in CIDR form (e.g. 10.20.30.0/24)")


def _router_tls(section: SpecObject, *, allowed: Sequence[str]) -> RouterTLSSpec:
    """``spec.router.tls``, with its caller subjects checked against the allowed callers."""
    section.keys("secretName", "port", "clientCASecretName", "callerSubjects")
    secret_name = _required_secret_name(section, "secretName")
    port = section.integer("port", default=DEFAULT_TLS_PORT, low=1, high=65535)
    client_ca = _secret_name(section, "clientCASecretName")
    entries = section.objects("callerSubjects")
    path = section.path("callerSubjects")
    if entries and client_ca is None:
        raise SpecError(
            path,
            entries,
            "needs spec.router.tls.clientCASecretName: a caller's certificate subject can be "
            "checked only when callers must present a certificate (mutual TLS)",
        )
    if len(entries) > MAX_CALLER_SUBJECTS:
        raise SpecError(
            path, entries, f"has {len(entries)} entries, more than {MAX_CALLER_SUBJECTS}"
        )
    subjects: list[CallerSubject] = []
    seen: set[str] = set()
    for index, entry in enumerate(entries):
        item = SpecObject(entry, f"{path}[{index}]")
        item.keys("aeTitle", "subject")
        title = item.string("aeTitle", default=None)
        check_ae_title(item.path("aeTitle"), title)
        if "=" in title:
            raise SpecError(
                item.path("aeTitle"),
                title,
                "contains '=' (the router's --caller-subject option reads AE=SUBJECT, so a "
                "bound AE title cannot hold one)",
            )
        if title in seen:
            raise SpecError(item.path("aeTitle"), title, "appears twice (one subject per title)")
        seen.add(title)
        if allowed and title not in allowed:
            raise SpecError(
                item.path("aeTitle"),
                title,
                "is not in spec.router.allowedCallingAETitles, so the router would refuse it "
                "whatever its certificate (add it there too)",
            )
        subject = item.string("subject", default=None)
        if len(subject) > MAX_SUBJECT_LENGTH or not _SUBJECT.fullmatch(subject):
            raise SpecError(
                item.path("subject"),
                subject,
                "is not a distinguished name in RFC 4514 form "
                "(e.g. CN=ct01.radiology.example.org,O=Example Hospital)",
            )
        subjects.append(CallerSubject(ae_title=title, subject=subject))
    return RouterTLSSpec(
        secret_name=secret_name,
        port=port,
        client_ca_secret_name=client_ca,
        caller_subjects=tuple(subjects),
    )


def _secret_name(section: SpecObject, key: str) -> str | None:
    """An optional Secret's name: None when not set or empty."""
    value = section.string(key, default="")
    if not value:
        return None
    check_subdomain(section.path(key), value)
    return value


def _required_secret_name(section: SpecObject, key: str) -> str:
    value = _secret_name(section, key)
    if value is None:
        raise SpecError(section.path(key), SpecError.MISSING, "is required (a Secret's name)")
    return value


def _handover(section: SpecObject) -> HandoverSpec:
    section.keys("quietSeconds", "maxDrainSeconds", "failoverAfterSeconds")
    quiet = section.integer("quietSeconds", default=30, low=1, high=3600)
    failover = section.integer("failoverAfterSeconds", default=0, low=10, high=86400)
    max_drain = section.integer("maxDrainSeconds", default=600, low=10, high=86400)
    if max_drain < quiet:
        raise SpecError(
            section.path("maxDrainSeconds"),
            max_drain,
            f"is less than spec.handover.quietSeconds ({quiet}): "
            "a handover would be forced before a bucket could be quiet",
        )
    return HandoverSpec(
        quiet_seconds=quiet,
        max_drain_seconds=max_drain,
        failover_after_seconds=failover or None,
    )


def _autoscaling(
    section: SpecObject, *, buckets: int, gateway: GatewaySpec, handover: HandoverSpec
) -> AutoscalingSpec:
    """``spec.autoscaling``, checked against the rest of the spec as the CRD's rules do."""
    section.keys("minReplicas", "maxReplicas", "targets", "scaleDown")
    low = section.integer("minReplicas", default=1, low=1, high=MAX_REPLICAS)
    if section.data.get("maxReplicas") is None:
        raise SpecError(section.path("maxReplicas"), SpecError.MISSING, "is required")
    high = section.integer("maxReplicas", default=low, low=1, high=None)
    if high > buckets:
        raise SpecError(
            section.path("maxReplicas"),
            high,
            f"exceeds spec.buckets ({buckets}): every gateway needs at least one bucket",
        )
    if high > MAX_REPLICAS:
        raise SpecError(section.path("maxReplicas"), high, f"is more than {MAX_REPLICAS} gateways")
    if high < low:
        raise SpecError(
            section.path("maxReplicas"), high, f"is less than {section.path('minReplicas')} ({low})"
        )

    targets = section.child("targets", required=True)
    targets.keys("cpuUtilization", "studiesInFlight")
    cpu = targets.integer("cpuUtilization", default=0, low=1, high=None) or None
    studies = targets.integer("studiesInFlight", default=0, low=1, high=None) or None
    if cpu is None and studies is None:
        raise SpecError(
            section.path("targets"),
            targets.data,
            "sets no target (set cpuUtilization, studiesInFlight or both)",
        )
    if cpu is not None:
        _check_cpu_request(targets.path("cpuUtilization"), cpu, gateway)

    scale_down = section.child("scaleDown")
    scale_down.keys("stabilizationSeconds", "periodSeconds")
    period = scale_down.integer("periodSeconds", default=60, low=1, high=1800)
    window_path = scale_down.path("stabilizationSeconds")
    drain = handover.max_drain_seconds
    if scale_down.data.get("stabilizationSeconds") is None:
        window = max(MIN_DEFAULT_SCALE_DOWN_WINDOW, drain)
        if window > MAX_SCALE_DOWN_WINDOW:
            raise SpecError(
                "spec.handover.maxDrainSeconds",
                drain,
                f"is more than {MAX_SCALE_DOWN_WINDOW}: with spec.autoscaling, the autoscaler "
                f"waits at least maxDrainSeconds before removing a gateway ({window_path}, "
                f"default max(300, maxDrainSeconds)), and a HorizontalPodAutoscaler waits at "
                f"most {MAX_SCALE_DOWN_WINDOW} seconds",
            )
    else:
        window = scale_down.integer("stabilizationSeconds", default=0, low=0, high=None)
        if window > MAX_SCALE_DOWN_WINDOW:
            raise SpecError(
                window_path,
                window,
                f"is more than {MAX_SCALE_DOWN_WINDOW}, the longest scale-down window a "
                "HorizontalPodAutoscaler accepts",
            )
        if window < drain:
            raise SpecError(
                window_path,
                window,
                f"is less than spec.handover.maxDrainSeconds ({drain}): the autoscaler could "
                "remove a gateway before its buckets can drain",
            )
    return AutoscalingSpec(
        min_replicas=low,
        max_replicas=high,
        cpu_utilization=cpu,
        studies_in_flight=studies,
        stabilization_seconds=window,
        period_seconds=period,
    )


def _check_cpu_request(path: str, target: int, gateway: GatewaySpec) -> None:
    """A CPU target needs a CPU request above zero on the gateway pods.

    The HorizontalPodAutoscaler computes utilization as usage divided by the
    pods' request; without one it reports "missing request for cpu" and never
    scales, so the spec is refused rather than the autoscaler left stuck.
    """
    requests = gateway.resources.get("requests") or {}
    request = requests.get("cpu") if isinstance(requests, Mapping) else None
    why = (
        "the HorizontalPodAutoscaler measures CPU utilization against the gateway pods' "
        'CPU request, and without one reports "missing request for cpu" and does not scale'
    )
    if request is None:
        raise SpecError(path, target, f"needs spec.gateway.resources.requests.cpu: {why}")
    try:
        positive = parse_quantity(request)[0] > 0
    except QuantityError:
        positive = False
    if not positive:
        raise SpecError(
            path,
            target,
            f"needs spec.gateway.resources.requests.cpu above zero (it is {request!r}): {why}",
        )


_PEER_KEYS: Final = ("podSelector", "namespaceSelector", "ipBlock")
_PROTOCOLS: Final = ("TCP", "UDP", "SCTP")


def _network_policy(section: SpecObject) -> NetworkPolicySpec:
    section.keys("enabled", "extraIngress", "routerFrom")
    enabled = section.data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError(section.path("enabled"), enabled, f"is not a boolean ({kind_of(enabled)})")
    rules = section.objects("extraIngress")
    for index, rule in enumerate(rules):
        item = SpecObject(rule, f"{section.path('extraIngress')}[{index}]")
        item.keys("from", "ports")
        for peer_index, peer in enumerate(item.objects("from")):
            SpecObject(peer, f"{item.path('from')}[{peer_index}]").keys(*_PEER_KEYS)
        for port_index, port in enumerate(item.objects("ports")):
            entry = SpecObject(port, f"{item.path('ports')}[{port_index}]")
            entry.keys("protocol", "port", "endPort")
            entry.choice("protocol", _PROTOCOLS, "TCP")
            value = entry.data.get("port")
            if value is not None and not (isinstance(value, str) and value) and not is_int(value):
                raise SpecError(entry.path("port"), value, "is not a port number or name")
            if isinstance(value, int) and not 1 <= value <= 65535:
                raise SpecError(entry.path("port"), value, "is not a port (1 to 65535)")
    router_from = section.objects("routerFrom")
    for index, peer in enumerate(router_from):
        SpecObject(peer, f"{section.path('routerFrom')}[{index}]").keys(*_PEER_KEYS)
    return NetworkPolicySpec(enabled=enabled, extra_ingress=rules, router_from=router_from)
