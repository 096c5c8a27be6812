"""The GatewayPool spec as typed, frozen data: one dataclass per section of ``spec``.

`gatewaypool_operator.spec.parse.parse_spec` builds a `PoolSpec` from the raw
spec, with every default applied and every field checked; everything
downstream of it reads these types and never raw dictionaries. The
constructors trust their arguments (tests and the operator's own code
build them directly); only `parse_spec` checks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_TLS_PORT",
    "AutoscalingSpec",
    "CallerSubject",
    "GatewaySecurityContextSpec",
    "GatewaySpec",
    "GatewayTLSSpec",
    "HandoverSpec",
    "NetworkPolicySpec",
    "PodTemplateSpec",
    "PoolSpec",
    "RouterServiceSpec",
    "RouterSpec",
    "RouterTLSSpec",
    "RouterTimeouts",
    "SpoolSpec",
    "StorageSpec",
]

DEFAULT_BUCKETS: Final = 4096
DEFAULT_TLS_PORT: Final = 2762
"""The router Service's DICOM TLS port unless ``spec.router.tls.port`` says otherwise:
the port registered for DICOM over TLS (IANA "dicom-tls")."""


@dataclass(frozen=True, slots=True)
class StorageSpec:
    """``spec.gateway.storage``: one PersistentVolumeClaim per gateway, named ``data``."""

    size: str
    storage_class_name: str | None = None
    mount_path: str = "/var/lib/gateway"
    #: What happens to a removed gateway's claim on scale-down: Retain or Delete.
    when_scaled: str = "Retain"


@dataclass(frozen=True, slots=True)
class SpoolSpec:
    """``spec.router.spool``: a volume per router where it stores instances to forward later.

    With it the routers run as a StatefulSet, each with a PersistentVolumeClaim
    named ``spool`` (`gatewaypool_operator.children.router.statefulset`).
    """

    size: str
    storage_class_name: str | None = None
    #: ``GatewayUnavailable``: spool only what the instance's gateway cannot take
    #: now; ``Always``: acknowledge every instance once it is on the volume.
    when: str = "GatewayUnavailable"
    #: An instance spooled longer than this sets the pool's SpoolBacklog condition;
    #: it is never dropped.
    retention_seconds: int = 86400


@dataclass(frozen=True, slots=True)
class PodTemplateSpec:
    """``spec.gateway.podTemplate``: extra settings for the gateway pods.

    Mappings are read-only and nested values frozen (see
    `gatewaypool_operator.spec.fields.thaw`), so a spec shared between
    reconciliations cannot be changed by accident.
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

    All are names of Secrets in the pool's namespace. Mounted into the
    router pods: ``ca_secret_name`` holds ``ca.crt`` (the CA bundle gateway
    certificates must verify against), ``client_cert_secret_name`` a
    ``kubernetes.io/tls`` certificate the router presents to the gateways.
    Mounted into the gateway pods: ``server_cert_secret_name``, the
    ``kubernetes.io/tls`` certificate the gateways serve.
    """

    ca_secret_name: str
    client_cert_secret_name: str | None = None
    server_cert_secret_name: str | None = None


@dataclass(frozen=True, slots=True)
class GatewaySecurityContextSpec:
    """``spec.gateway.securityContext``: the user and groups the gateway pods run as.

    None leaves a field to the image (its ``USER``) or, for ``fs_group``, to
    the operator's default (65532 when the pods mount a volume or Secret).
    """

    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool = True
    fs_group: int | None = None


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
    security_context: GatewaySecurityContextSpec = field(default_factory=GatewaySecurityContextSpec)
    #: Transfer syntax UIDs the gateways accept, preferred first (routers'
    #: ``--accepted-transfer-syntax``); empty: routers probe the gateways.
    accepted_transfer_syntaxes: tuple[str, ...] = ()
    #: SOP class UIDs the gateways accept (routers' ``--sop-class``); empty:
    #: routers probe the gateways.
    sop_classes: tuple[str, ...] = ()


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
class RouterServiceSpec:
    """``spec.router.service``: the router Service modalities send to.

    Fields left None are not written, so the API server's defaults (and
    what it allocates: the cluster IP, node ports not fixed here) stay.
    ``node_port`` and ``tls_node_port`` fix the node ports of the plain and
    TLS DICOM ports (``nodePorts.dicom``, ``nodePorts.dicomTLS``).
    """

    type: str = "ClusterIP"
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    load_balancer_class: str | None = None
    load_balancer_source_ranges: tuple[str, ...] = ()
    external_traffic_policy: str | None = None
    node_port: int | None = None
    tls_node_port: int | None = None
    ip_family_policy: str | None = None
    ip_families: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouterTimeouts:
    """``spec.router.timeouts``, in seconds; None keeps the router's own default."""

    gateway_seconds: int | None = None
    connect_seconds: int | None = None
    association_request_seconds: int | None = None
    sender_idle_seconds: int | None = None
    gateway_idle_release_seconds: int | None = None
    stall_warning_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """``spec.router``: the study router Deployment and its Service."""

    image: str
    replicas: int = 2
    ae_title: str = "GATEWAYPOOL"
    port: int = 11112
    service: RouterServiceSpec = field(default_factory=RouterServiceSpec)
    allowed_calling_ae_titles: tuple[str, ...] = ()
    resources: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    #: ``spec.router.podTemplate`` (its service account is always the router's own);
    #: the spread is ``spec.router.podTemplate.topologySpreadConstraints`` or the older
    #: ``spec.router.topologySpreadConstraints``.
    pod_template: PodTemplateSpec = field(default_factory=PodTemplateSpec)
    #: Whether the router listens on its plain DICOM port; False needs `tls`.
    plain_port: bool = True
    #: None: no TLS port.
    tls: RouterTLSSpec | None = None
    #: None: cut-through only, the routers a Deployment without volumes.
    spool: SpoolSpec | None = None
    timeouts: RouterTimeouts = field(default_factory=RouterTimeouts)


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
    #: NetworkPolicy peers that may reach the routers' DICOM ports; ``()``: anyone.
    router_from: tuple[Mapping[str, Any], ...] = ()


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
    #: Secrets the kubelet pulls the router and gateway images with.
    image_pull_secrets: tuple[str, ...] = ()
