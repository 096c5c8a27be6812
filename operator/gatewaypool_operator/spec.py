"""The GatewayPool spec as typed, frozen data, checked once at the edge.

The API server checks a spec against the CRD's schema and fills in its
defaults, but the operator must not rely on that: a CRD installed without
the schema, an older CRD version, or the test emulator (which neither
validates nor defaults) would otherwise let a half-filled spec reach the
code that builds StatefulSets. `parse_spec` therefore applies every default
of the contract itself and checks everything the schema checks, plus what
only the operator can know: that a label cannot break the pool's selectors,
that an AE title is usable in a bucket map, that a router image exists at
all. Everything downstream receives a :class:`PoolSpec` and never looks at
raw dictionaries again.

Errors are :class:`SpecError`\\ s that name the field as a user writes it in
``kubectl edit`` (``spec.gateway.port``) and the offending value, since the
message ends up in an Event and in ``status.conditions`` where the user has
to find that field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from gatewaypool.contract import AE_TITLE_PATTERN, MAX_BUCKETS, ae_title_problem
from gatewaypool.quantity import QuantityError
from gatewaypool.quantity import parse as parse_quantity

__all__ = [
    "AE_TITLE_PATTERN",
    "DEFAULT_BUCKETS",
    "DEFAULT_TLS_PORT",
    "MAX_ALLOWED_CALLING_AE_TITLES",
    "MAX_CALLER_SUBJECTS",
    "MAX_NAME_LENGTH",
    "MAX_SCALE_DOWN_WINDOW",
    "MAX_SUBJECT_LENGTH",
    "RESERVED_LABELS",
    "SUBJECT_PATTERN",
    "AutoscalingSpec",
    "CallerSubject",
    "GatewaySpec",
    "GatewayTLSSpec",
    "HandoverSpec",
    "NetworkPolicySpec",
    "PodTemplateSpec",
    "PoolSpec",
    "RouterSpec",
    "RouterTLSSpec",
    "SpecError",
    "StorageSpec",
    "check_name",
    "parse_spec",
    "thaw",
]

DEFAULT_BUCKETS: Final = 4096
MAX_REPLICAS: Final = 1024
MAX_ROUTER_REPLICAS: Final = 100
MAX_SCALE_DOWN_WINDOW: Final = 3600
"""The longest scale-down stabilization window a HorizontalPodAutoscaler accepts, seconds."""
MIN_DEFAULT_SCALE_DOWN_WINDOW: Final = 300
"""The HorizontalPodAutoscaler's own scale-down window, the least the default ever is."""
TMP_PATH: Final = "/tmp"  # every pod mounts an emptyDir here; storage must not clash
DEFAULT_TLS_PORT: Final = 2762
"""The router Service's DICOM TLS port unless ``spec.router.tls.port`` says otherwise:
the port registered for DICOM over TLS (IANA "dicom-tls")."""
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

RESERVED_LABELS: Final = frozenset(
    {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/component",
    }
)
"""Label keys the operator sets on every child; a pod template may not override them,
since the selectors of the StatefulSet, Services, NetworkPolicy and PDB rely on them."""

_QUANTITY = re.compile(
    r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
    r"(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))?$"
)
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035, as Services need
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
SUBJECT_PATTERN: Final = (
    r'^((?i:CN|C|L|ST|O|OU|STREET|DC|UID)|[0-9]+(\.[0-9]+)+)=([^,+;"<>\\\x00-\x1f]|\\.)+'
    r'([,+] *((?i:CN|C|L|ST|O|OU|STREET|DC|UID)|[0-9]+(\.[0-9]+)+)=([^,+;"<>\\\x00-\x1f]|\\.)+)*$'
)
"""A distinguished name in RFC 4514 form (``CN=ct01.example.org,O=Example Hospital``):
``TYPE=VALUE`` pairs separated by ``,`` (or ``+`` within one RDN) and optional
spaces, special characters in values escaped with a backslash. TYPE is one of
the names RFC 4514 defines (any case) or a dotted OID (``2.5.4.5`` for a
serial number, ``1.2.840.113549.1.9.1`` for an e-mail address): what the
router's ``--caller-subject`` parses. The CRD's schema uses this pattern too."""
_SUBJECT = re.compile(SUBJECT_PATTERN)
_PULL_POLICIES: Final = ("Always", "IfNotPresent", "Never")
_SERVICE_TYPES: Final = ("ClusterIP", "NodePort", "LoadBalancer")
_RESOURCE_KEYS: Final = ("limits", "requests", "claims")


class SpecError(ValueError):
    """A GatewayPool spec the operator refuses.

    ``str(error)`` reads ``"<field path>: <value> <problem>"``, e.g.
    ``"spec.replicas: 5000 exceeds spec.buckets (4096)"``, or
    ``"<field path>: <problem>"`` when the field is missing.

    Parameters
    ----------
    field_path
        The field as written in the resource, from ``spec`` down
        (``spec.gateway.storage.size``, ``spec.gateway.env[2].name``).
    value
        The offending value, or `SpecError.MISSING` for a missing field.
    problem
        What is wrong, phrased to follow the value.
    """

    MISSING: Final = object()
    """Stands for the value of a required field that is absent."""

    def __init__(self, field_path: str, value: object, problem: str) -> None:
        if value is SpecError.MISSING:
            message = f"{field_path}: {problem}"
        else:
            message = f"{field_path}: {_show(value)} {problem}"
        super().__init__(message)
        self.field_path = field_path
        self.value = value
        self.problem = problem


@dataclass(frozen=True, slots=True)
class StorageSpec:
    """``spec.gateway.storage``: one PersistentVolumeClaim per gateway, named ``data``."""

    size: str
    storage_class_name: str | None = None
    mount_path: str = "/var/lib/gateway"
    #: What happens to a removed gateway's claim on scale-down: Retain or Delete.
    when_scaled: str = "Retain"


@dataclass(frozen=True, slots=True)
class PodTemplateSpec:
    """``spec.gateway.podTemplate``: extra settings for the gateway pods.

    Mappings are read-only and nested values frozen (see `thaw`), so a
    spec shared between reconciliations cannot be changed by accident.
    """

    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    node_selector: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    priority_class_name: str = ""
    service_account_name: str = ""
    #: None: the default spread over zones and nodes; ``()``: no constraints.
    topology_spread_constraints: tuple[Mapping[str, Any], ...] | None = None


@dataclass(frozen=True, slots=True)
class GatewayTLSSpec:
    """``spec.gateway.tls``: the router talks TLS to every gateway.

    Both are names of Secrets in the pool's namespace, mounted into the
    router pods: ``ca_secret_name`` holds ``ca.crt`` (the CA bundle gateway
    certificates must verify against), ``client_cert_secret_name`` a
    ``kubernetes.io/tls`` certificate the router presents to the gateways.
    """

    ca_secret_name: str
    client_cert_secret_name: str | None = None


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """``spec.gateway``: the user's DICOM Storage SCP, one pod per gateway."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    port: int = 104
    ae_title: str = "GATEWAY"
    env: tuple[Mapping[str, Any], ...] = ()
    resources: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    storage: StorageSpec | None = None
    pod_template: PodTemplateSpec = field(default_factory=PodTemplateSpec)
    termination_grace_period_seconds: int = 30
    #: None: the router speaks plain DICOM to the gateways.
    tls: GatewayTLSSpec | None = None


@dataclass(frozen=True, slots=True)
class CallerSubject:
    """One ``spec.router.tls.callerSubjects`` entry: the certificate an AE title must present.

    ``subject`` is a distinguished name in RFC 4514 form, as the router
    compares it with the caller's client certificate.
    """

    ae_title: str
    subject: str


@dataclass(frozen=True, slots=True)
class RouterTLSSpec:
    """``spec.router.tls``: DICOM over TLS on the router's own TLS port.

    Secret names are in the pool's namespace: ``secret_name`` a
    ``kubernetes.io/tls`` Secret (``tls.crt``, ``tls.key``), as cert-manager
    writes it; ``client_ca_secret_name`` one with ``ca.crt``, which turns on
    mutual TLS: every caller on the TLS port must present a certificate it
    verifies.
    """

    secret_name: str
    port: int = DEFAULT_TLS_PORT
    client_ca_secret_name: str | None = None
    caller_subjects: tuple[CallerSubject, ...] = ()


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """``spec.router``: the study router Deployment and its Service."""

    image: str
    replicas: int = 2
    ae_title: str = "GATEWAYPOOL"
    port: int = 11112
    service_type: str = "ClusterIP"
    allowed_calling_ae_titles: tuple[str, ...] = ()
    resources: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    #: None: the default spread over zones and nodes; ``()``: no constraints.
    topology_spread_constraints: tuple[Mapping[str, Any], ...] | None = None
    #: Whether the router listens on its plain DICOM port; False needs `tls`.
    plain_port: bool = True
    #: None: no TLS port.
    tls: RouterTLSSpec | None = None


@dataclass(frozen=True, slots=True)
class HandoverSpec:
    """``spec.handover``: how long a moving bucket must be quiet, and the most to wait."""

    quiet_seconds: int = 30
    max_drain_seconds: int = 600
    #: A gateway pod not Ready this long has its buckets moved at once (forced); None: never.
    failover_after_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class NetworkPolicySpec:
    """``spec.networkPolicy``: the NetworkPolicies of the gateways and the routers.

    ``extra_ingress`` are NetworkPolicy ingress rules (``from`` peers and
    ``ports``) the gateways accept besides the routers: metrics scrapes,
    storage commitment N-EVENT-REPORTs, results sent back over DICOM, web UIs.
    """

    enabled: bool = True
    extra_ingress: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class AutoscalingSpec:
    """``spec.autoscaling``: the HorizontalPodAutoscaler the operator keeps for the pool.

    At least one of the targets is set. ``stabilization_seconds`` is resolved:
    when the spec leaves it out it is ``max(300, spec.handover.maxDrainSeconds)``,
    so a scale-down the autoscaler decides is never quicker than a handover may take.
    """

    max_replicas: int
    stabilization_seconds: int
    min_replicas: int = 1
    #: Average CPU utilization of the gateway pods, percent of their CPU request.
    cpu_utilization: int | None = None
    #: Average studies in flight per gateway (the routers' per-gateway metric).
    studies_in_flight: int | None = None
    #: At most one gateway is removed per this many seconds.
    period_seconds: int = 60


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """A whole GatewayPool spec with every default applied.

    Build it with `parse_spec`; the constructor trusts its arguments (tests
    and the operator's own code), only `parse_spec` checks.
    """

    gateway: GatewaySpec
    router: RouterSpec
    replicas: int = 1
    buckets: int = DEFAULT_BUCKETS
    handover: HandoverSpec = field(default_factory=HandoverSpec)
    network_policy: NetworkPolicySpec = field(default_factory=NetworkPolicySpec)
    #: None: no autoscaler; ``spec.replicas`` is the user's to set.
    autoscaling: AutoscalingSpec | None = None


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
    root = _Object(
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
    )


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
    if not isinstance(name, str) or not _DNS_LABEL.match(name):
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


def thaw(value: Any) -> Any:
    """Return a frozen value as plain, mutable ``dict``\\ s and ``list``\\ s.

    The spec keeps free-form fields (``env``, ``resources``, ``affinity``,
    ...) read-only; a Kubernetes object built from them needs plain JSON
    types, and a fresh copy each time so that the object can be changed
    without touching the spec.
    """
    if isinstance(value, Mapping):
        return {key: thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value


# --- sections -----------------------------------------------------------------


def _gateway(section: _Object) -> GatewaySpec:
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
    )
    storage = section.child("storage", optional=True)
    tls = section.child("tls", optional=True)
    return GatewaySpec(
        image=_image(section, "image", default=None),
        image_pull_policy=section.choice("imagePullPolicy", _PULL_POLICIES, "IfNotPresent"),
        command=section.strings("command"),
        args=section.strings("args"),
        port=section.integer("port", default=104, low=1, high=65535),
        ae_title=section.ae_title("aeTitle", default="GATEWAY"),
        env=_env(section),
        resources=_resources(section, "resources"),
        storage=None if storage is None else _storage(storage),
        pod_template=_pod_template(section.child("podTemplate")),
        termination_grace_period_seconds=section.integer(
            "terminationGracePeriodSeconds", default=30, low=0, high=3600
        ),
        tls=None if tls is None else _gateway_tls(tls),
    )


def _gateway_tls(section: _Object) -> GatewayTLSSpec:
    section.keys("caSecretName", "clientCertSecretName")
    return GatewayTLSSpec(
        ca_secret_name=_required_secret_name(section, "caSecretName"),
        client_cert_secret_name=_secret_name(section, "clientCertSecretName"),
    )


def _storage(section: _Object) -> StorageSpec:
    section.keys("size", "storageClassName", "mountPath", "whenScaled")
    size = section.string("size", default=None)
    if not _QUANTITY.match(size) or size.startswith("-") or not any(c in "123456789" for c in size):
        raise SpecError(section.path("size"), size, "is not a positive quantity (e.g. 10Gi)")
    storage_class = section.string("storageClassName", default="")
    if storage_class:
        _check_subdomain(section.path("storageClassName"), storage_class)
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
        storage_class_name=storage_class or None,
        mount_path=mount_path,
        when_scaled=section.choice("whenScaled", ("Retain", "Delete"), "Retain"),
    )


def _pod_template(section: _Object) -> PodTemplateSpec:
    section.keys(
        "labels",
        "annotations",
        "nodeSelector",
        "tolerations",
        "affinity",
        "priorityClassName",
        "serviceAccountName",
        "topologySpreadConstraints",
    )
    labels = section.string_map("labels", values="label")
    for key in labels:
        if key in RESERVED_LABELS:
            raise SpecError(
                f"{section.path('labels')}[{key!r}]",
                labels[key],
                "would override a label the pool's selectors rely on (set by the operator)",
            )
    priority_class = section.string("priorityClassName", default="")
    if priority_class:
        _check_subdomain(section.path("priorityClassName"), priority_class)
    service_account = section.string("serviceAccountName", default="")
    if service_account:
        _check_subdomain(section.path("serviceAccountName"), service_account)
    return PodTemplateSpec(
        labels=labels,
        annotations=section.string_map("annotations", values="any"),
        node_selector=section.string_map("nodeSelector", values="label"),
        tolerations=_tolerations(section),
        affinity=_affinity(section),
        priority_class_name=priority_class,
        service_account_name=service_account,
        topology_spread_constraints=_spread(section),
    )


def _router(section: _Object, *, default_router_image: str) -> RouterSpec:
    section.keys(
        "replicas",
        "image",
        "aeTitle",
        "port",
        "serviceType",
        "allowedCallingAETitles",
        "resources",
        "topologySpreadConstraints",
        "plainPort",
        "tls",
    )
    image = _image(section, "image", default="") or default_router_image
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
        _check_ae_title(f"{section.path('allowedCallingAETitles')}[{index}]", title)
    port = section.integer("port", default=11112, low=1, high=65535)
    plain_port = section.boolean("plainPort", default=True)
    tls_section = section.child("tls", optional=True)
    tls = None if tls_section is None else _router_tls(tls_section, allowed=allowed)
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
        service_type=section.choice("serviceType", _SERVICE_TYPES, "ClusterIP"),
        allowed_calling_ae_titles=allowed,
        resources=_resources(section, "resources"),
        topology_spread_constraints=_spread(section),
        plain_port=plain_port,
        tls=tls,
    )


def _router_tls(section: _Object, *, allowed: Sequence[str]) -> RouterTLSSpec:
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
        item = _Object(entry, f"{path}[{index}]")
        item.keys("aeTitle", "subject")
        title = item.string("aeTitle", default=None)
        _check_ae_title(item.path("aeTitle"), title)
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


def _secret_name(section: _Object, key: str) -> str | None:
    """An optional Secret's name: None when not set or empty."""
    value = section.string(key, default="")
    if not value:
        return None
    _check_subdomain(section.path(key), value)
    return value


def _required_secret_name(section: _Object, key: str) -> str:
    value = _secret_name(section, key)
    if value is None:
        raise SpecError(section.path(key), SpecError.MISSING, "is required (a Secret's name)")
    return value


def _handover(section: _Object) -> HandoverSpec:
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
    section: _Object, *, buckets: int, gateway: GatewaySpec, handover: HandoverSpec
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


_TOLERATION_KEYS: Final = ("key", "operator", "value", "effect", "tolerationSeconds")
_TOLERATION_OPERATORS: Final = ("Exists", "Equal")
_TAINT_EFFECTS: Final = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
_AFFINITY_KEYS: Final = ("nodeAffinity", "podAffinity", "podAntiAffinity")
_SPREAD_KEYS: Final = (
    "maxSkew",
    "topologyKey",
    "whenUnsatisfiable",
    "labelSelector",
    "minDomains",
    "nodeAffinityPolicy",
    "nodeTaintsPolicy",
    "matchLabelKeys",
)
_WHEN_UNSATISFIABLE: Final = ("DoNotSchedule", "ScheduleAnyway")
_PEER_KEYS: Final = ("podSelector", "namespaceSelector", "ipBlock")
_PROTOCOLS: Final = ("TCP", "UDP", "SCTP")


def _tolerations(section: _Object) -> tuple[Mapping[str, Any], ...]:
    tolerations = section.objects("tolerations")
    for index, toleration in enumerate(tolerations):
        item = _Object(toleration, f"{section.path('tolerations')}[{index}]")
        item.keys(*_TOLERATION_KEYS)
        operator = item.choice("operator", _TOLERATION_OPERATORS, "Equal")
        item.choice("effect", _TAINT_EFFECTS, "")
        item.string("key", default="")
        item.string("value", default="")
        if operator == "Exists" and item.data.get("value"):
            raise SpecError(item.path("value"), item.data["value"], "must be empty with Exists")
        if item.data.get("tolerationSeconds") is not None:
            item.integer("tolerationSeconds", default=0, low=-(2**63), high=2**63 - 1)
    return tolerations


def _affinity(section: _Object) -> Mapping[str, Any]:
    affinity = section.free_object("affinity")
    _Object(affinity, section.path("affinity")).keys(*_AFFINITY_KEYS)
    for key, value in affinity.items():
        if not isinstance(value, Mapping):
            raise SpecError(f"{section.path('affinity')}.{key}", value, "is not an object")
    return affinity


def _spread(section: _Object) -> tuple[Mapping[str, Any], ...] | None:
    """``topologySpreadConstraints``: None when not set (the default spread applies)."""
    if section.data.get("topologySpreadConstraints") is None:
        return None
    constraints = section.objects("topologySpreadConstraints")
    seen: set[tuple[str, str]] = set()
    for index, constraint in enumerate(constraints):
        item = _Object(constraint, f"{section.path('topologySpreadConstraints')}[{index}]")
        item.keys(*_SPREAD_KEYS)
        if item.data.get("maxSkew") is None:
            raise SpecError(item.path("maxSkew"), SpecError.MISSING, "is required")
        item.integer("maxSkew", default=1, low=1, high=None)
        key = item.string("topologyKey", default=None)
        if not key:
            raise SpecError(item.path("topologyKey"), key, "is empty")
        if item.data.get("whenUnsatisfiable") is None:
            raise SpecError(item.path("whenUnsatisfiable"), SpecError.MISSING, "is required")
        when = item.choice("whenUnsatisfiable", _WHEN_UNSATISFIABLE, "ScheduleAnyway")
        if (key, when) in seen:
            raise SpecError(
                item.path("topologyKey"),
                key,
                f"appears twice with whenUnsatisfiable {when} (the pair must be unique)",
            )
        seen.add((key, when))
        if item.data.get("labelSelector") is not None:
            item.child("labelSelector")
    return constraints


def _network_policy(section: _Object) -> NetworkPolicySpec:
    section.keys("enabled", "extraIngress")
    enabled = section.data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError(section.path("enabled"), enabled, f"is not a boolean ({_kind(enabled)})")
    rules = section.objects("extraIngress")
    for index, rule in enumerate(rules):
        item = _Object(rule, f"{section.path('extraIngress')}[{index}]")
        item.keys("from", "ports")
        for peer_index, peer in enumerate(item.objects("from")):
            _Object(peer, f"{item.path('from')}[{peer_index}]").keys(*_PEER_KEYS)
        for port_index, port in enumerate(item.objects("ports")):
            entry = _Object(port, f"{item.path('ports')}[{port_index}]")
            entry.keys("protocol", "port", "endPort")
            entry.choice("protocol", _PROTOCOLS, "TCP")
            value = entry.data.get("port")
            if value is not None and not (isinstance(value, str) and value) and not _is_int(value):
                raise SpecError(entry.path("port"), value, "is not a port number or name")
            if isinstance(value, int) and not 1 <= value <= 65535:
                raise SpecError(entry.path("port"), value, "is not a port (1 to 65535)")
    return NetworkPolicySpec(enabled=enabled, extra_ingress=rules)


def _image(section: _Object, key: str, *, default: str | None) -> str:
    image = section.string(key, default=default)
    if default is None and not image:
        raise SpecError(section.path(key), image, "is empty (an image reference is required)")
    if any(char.isspace() for char in image):
        raise SpecError(section.path(key), image, "is not an image reference (whitespace)")
    return image


def _env(section: _Object) -> tuple[Mapping[str, Any], ...]:
    env = section.objects("env")
    for index, variable in enumerate(env):
        path = f"{section.path('env')}[{index}].name"
        name = variable.get("name")
        if name is None:
            raise SpecError(path, SpecError.MISSING, "is required (every variable has a name)")
        if not isinstance(name, str) or not name:
            raise SpecError(path, name, "is not a variable name (a non-empty string)")
        value = variable.get("value")
        if value is not None and not isinstance(value, str):
            # A YAML number here is the usual slip; the StatefulSet would be refused.
            raise SpecError(
                f"{section.path('env')}[{index}].value",
                value,
                f'is not a string ({_kind(value)}; quote it: "{value}")',
            )
        source = variable.get("valueFrom")
        if source is not None and not isinstance(source, Mapping):
            raise SpecError(f"{section.path('env')}[{index}].valueFrom", source, "is not an object")
    return env


def _resources(section: _Object, key: str) -> Mapping[str, Any]:
    resources = section.free_object(key)
    path = section.path(key)
    for name, value in resources.items():
        if name not in _RESOURCE_KEYS:
            raise SpecError(
                f"{path}.{name}",
                value,
                f"is not a known field (expected {', '.join(_RESOURCE_KEYS)})",
            )
        if name == "claims":
            continue
        if not isinstance(value, Mapping):
            raise SpecError(f"{path}.{name}", value, "is not a mapping of resource to quantity")
        for resource, quantity in value.items():
            if _is_int(quantity) or isinstance(quantity, float):
                ok = math.isfinite(quantity) and quantity >= 0
            else:
                ok = (
                    isinstance(quantity, str)
                    and bool(_QUANTITY.match(quantity))
                    and not quantity.startswith("-")
                )
            if not ok:
                raise SpecError(
                    f"{path}.{name}[{resource!r}]",
                    quantity,
                    "is not a quantity (e.g. 500m, 1Gi)",
                )
    return resources


# --- field readers ------------------------------------------------------------


class _Object:
    """One mapping of the spec, its path, and readers that check and default its fields."""

    def __init__(self, data: object, path: str, *, keys: Sequence[str] | None = None) -> None:
        if not isinstance(data, Mapping):
            raise SpecError(path, data, f"is not an object ({_kind(data)})")
        for key in data:
            if not isinstance(key, str):
                raise SpecError(path, key, "is not a field name (a string)")
        self.data: Mapping[str, Any] = data
        self._path = path
        if keys is not None:
            self.keys(*keys)

    def path(self, key: str) -> str:
        return f"{self._path}.{key}"

    def keys(self, *known: str) -> None:
        for key in self.data:
            if key not in known:
                raise SpecError(
                    self.path(key),
                    self.data[key],
                    f"is set, but {self._path} has no field {key!r} "
                    f"(its fields: {', '.join(known)})",
                )

    def _get(self, key: str) -> Any:
        # An explicit null is "not set", as the API server treats it.
        return self.data.get(key)

    def child(self, key: str, *, required: bool = False, optional: bool = False) -> Any:
        value = self._get(key)
        if value is None:
            if required:
                raise SpecError(self.path(key), SpecError.MISSING, "is required")
            if optional:
                return None
            value = {}
        return _Object(value, self.path(key))

    def integer(self, key: str, *, default: int, low: int, high: int | None) -> int:
        value = self._get(key)
        if value is None:
            return default
        if not _is_int(value):
            raise SpecError(self.path(key), value, f"is not an integer ({_kind(value)})")
        if value < low:
            raise SpecError(self.path(key), value, f"is less than {low}")
        if high is not None and value > high:
            raise SpecError(self.path(key), value, f"is more than {high}")
        return int(value)

    def string(self, key: str, *, default: str | None) -> str:
        value = self._get(key)
        if value is None:
            if default is None:
                raise SpecError(self.path(key), SpecError.MISSING, "is required")
            return default
        if not isinstance(value, str):
            raise SpecError(self.path(key), value, f"is not a string ({_kind(value)})")
        return value

    def boolean(self, key: str, *, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise SpecError(self.path(key), value, f"is not a boolean ({_kind(value)})")
        return value

    def choice(self, key: str, choices: Sequence[str], default: str) -> str:
        value = self.string(key, default=default)
        if value not in choices:
            raise SpecError(self.path(key), value, f"is not one of {', '.join(choices)}")
        return value

    def ae_title(self, key: str, *, default: str) -> str:
        value = self.string(key, default=default)
        _check_ae_title(self.path(key), value)
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise SpecError(self.path(key), value, f"is not a list of strings ({_kind(value)})")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise SpecError(f"{self.path(key)}[{index}]", item, "is not a string")
        return tuple(value)

    def objects(self, key: str) -> tuple[Mapping[str, Any], ...]:
        value = self._get(key)
        if value is None:
            return ()
        if not isinstance(value, list | tuple):
            raise SpecError(self.path(key), value, f"is not a list of objects ({_kind(value)})")
        result = []
        for index, item in enumerate(value):
            result.append(_Object(item, f"{self.path(key)}[{index}]").frozen())
        return tuple(result)

    def free_object(self, key: str) -> Mapping[str, Any]:
        value = self._get(key)
        if value is None:
            return MappingProxyType({})
        return _Object(value, self.path(key)).frozen()

    def string_map(self, key: str, *, values: str) -> Mapping[str, str]:
        """Read a map of string to string; keys are qualified names, as labels need."""
        value = self._get(key)
        if value is None:
            return MappingProxyType({})
        section = _Object(value, self.path(key))
        for name, item in section.data.items():
            item_path = f"{self.path(key)}[{name!r}]"
            if not isinstance(item, str):
                raise SpecError(item_path, item, f"is not a string ({_kind(item)})")
            _check_qualified_name(self.path(key), name)
            if values == "label" and not (item == "" or _is_label_name(item)):
                raise SpecError(
                    item_path,
                    item,
                    "is not a label value (up to 63 letters, digits, '-', '_', '.'; "
                    "alphanumeric at both ends)",
                )
        return section.frozen()

    def frozen(self) -> Mapping[str, Any]:
        frozen: Mapping[str, Any] = _freeze(self.data)
        return frozen


# --- value checks -------------------------------------------------------------


def _check_ae_title(path: str, value: str) -> None:
    problem = ae_title_problem(value)
    if problem is not None:
        raise SpecError(path, value, f"is not an AE title ({problem})")


def _check_subdomain(path: str, value: str) -> None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.fullmatch(value):
        raise SpecError(path, value, "is not a DNS subdomain (lower-case, as object names are)")


def _check_qualified_name(path: str, key: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if (slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or not _is_label_name(
        name
    ):
        raise SpecError(
            path,
            key,
            "is not a valid key (an optional DNS-subdomain prefix and '/', then up to 63 "
            "letters, digits, '-', '_', '.'; alphanumeric at both ends)",
        )


def _is_label_name(value: str) -> bool:
    return len(value) <= 63 and bool(_LABEL_NAME.match(value))


def _is_int(value: object) -> bool:
    # bool is an int subclass; a YAML "yes" must not pass as 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({key: _freeze(item) for key, item in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


def _kind(value: object) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        tuple: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _show(value: object, limit: int = 100) -> str:
    text = repr(thaw(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
