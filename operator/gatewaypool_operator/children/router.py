"""The routers' objects: Deployment or StatefulSet, Services, RBAC, NetworkPolicy, Secrets.

The study router runs as the Deployment ``NAME-router`` behind the Service
of the same name or, with ``spec.router.spool``, as the StatefulSet
``NAME-router`` (`statefulset`), each pod with a PersistentVolumeClaim of
its own for the spool, and the headless Service ``NAME-router-pods`` the
StatefulSet names; the Service modalities send to stays ``NAME-router``.
Both kinds have the same pod template but for the spool's volume, options
and grace period, and the same selector, so the router Service and the
PodDisruptionBudget cover the pods of both while one replaces the other.
The routers have a ServiceAccount, Role and RoleBinding that allow
exactly the API calls a router makes, a NetworkPolicy that opens its DICOM
and HTTP ports and no other (and a PodDisruptionBudget of one, from
`gatewaypool_operator.children.podparts`). The Secrets
of ``spec.router.tls`` and ``spec.gateway.tls`` are mounted into its pods
(`secret_mounts`), and its command line names the files they hold. Built
as plain data; `gatewaypool_operator.children.desired.build_children` puts
them in the list of what the pool owns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Final

from gatewaypool import quantity
from gatewaypool_operator.children.names import (
    labels,
    map_configmap_name,
    object_metadata,
    router_name,
    router_pods_service_name,
    routers_configmap_name,
    selector_labels,
)
from gatewaypool_operator.children.podparts import (
    CA_KEY,
    CERT_KEYS,
    TLS_DIRECTORY,
    TMP_VOLUME,
    SecretMount,
    container_resources,
    container_security_context,
    image_pull_secrets_field,
    scheduling_fields,
    secret_volume,
    spread_field,
)
from gatewaypool_operator.spec.fields import thaw
from gatewaypool_operator.spec.types import PoolSpec, RouterTimeouts, SpoolSpec

__all__ = [
    "ROUTER_DICOM_PORT",
    "ROUTER_HTTP_PORT",
    "ROUTER_TLS_PORT",
    "RUN_AS_USER",
    "SPOOL_DIRECTORY",
    "SPOOL_SHUTDOWN_GRACE_SECONDS",
    "SPOOL_TERMINATION_GRACE_SECONDS",
    "SPOOL_USABLE_PERCENT",
    "SPOOL_VOLUME",
    "deployment",
    "network_policy",
    "pods_service",
    "role",
    "role_binding",
    "secret_mounts",
    "service",
    "service_account",
    "spool_max_bytes",
    "statefulset",
    "workers",
]

ROUTER_DICOM_PORT: Final = 11112
"""The router container's DICOM port; ``spec.router.port`` is only the Service's."""
ROUTER_HTTP_PORT: Final = 8080
ROUTER_TLS_PORT: Final = 2762
"""The router container's DICOM TLS port; ``spec.router.tls.port`` is only the Service's,
so changing it moves the Service's port and restarts no router."""
RUN_AS_USER: Final = 65532
"""The router's user and group: the distroless "nonroot" user of the image."""
SPOOL_VOLUME: Final = "spool"
"""The volumeClaimTemplate of the router StatefulSet: claims ``spool-NAME-router-<i>``."""
SPOOL_DIRECTORY: Final = "/var/spool/gatewaypool"
"""Where a router pod mounts its spool volume (``--spool-dir``)."""
SPOOL_USABLE_PERCENT: Final = 85
"""The share of ``spec.router.spool.size`` a router may fill (``--spool-max-bytes``).

The rest is what a file system takes before a non-root process can write a
byte: ext4 keeps 5% of the blocks for root (the router is not root), its
inode tables take about 1.6% and its journal up to 256 MiB (32 MiB on a
1 GiB volume); and what the spool writes beside the data sets (a metadata
file and a directory entry per instance) and the instance being written
are not in the count the router keeps. 15% covers those from 1 GiB up, so
a full spool answers 0xA700 before the disk answers ENOSPC.
"""
SPOOL_SHUTDOWN_GRACE_SECONDS: Final = 90
"""A spooling router's ``--shutdown-grace``: after SIGTERM it stops accepting,
lets open associations end and forwards what its spool holds, within this."""
SPOOL_TERMINATION_GRACE_SECONDS: Final = SPOOL_SHUTDOWN_GRACE_SECONDS + 15
"""Its pods' ``terminationGracePeriodSeconds``: the shutdown grace, then time to
write a last report and exit before the kubelet's SIGKILL."""


def network_policy(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    """Return the NetworkPolicy ``NAME-router``: the DICOM ports from ``routerFrom`` or anywhere,
    the HTTP port from anywhere."""
    dicom_ports = [
        *([ROUTER_DICOM_PORT] if spec.router.plain_port else []),
        *([ROUTER_TLS_PORT] if spec.router.tls is not None else []),
    ]
    router_from = thaw(spec.network_policy.router_from)
    if router_from:
        # The modality subnets (ipBlock) or pods the spec names reach the DICOM
        # ports; the HTTP port (probes, Prometheus) stays open as before.
        ingress = [
            {
                "from": router_from,
                "ports": [{"protocol": "TCP", "port": port} for port in dicom_ports],
            },
            {"ports": [{"protocol": "TCP", "port": ROUTER_HTTP_PORT}]},
        ]
    else:
        # No "from": modalities send from anywhere, and Prometheus scrapes
        # /metrics from its own namespace. In a default-deny namespace the
        # routers are reachable on their DICOM ports (plain, TLS or both)
        # and their HTTP port, and no other.
        ingress = [
            {
                "ports": [
                    *({"protocol": "TCP", "port": port} for port in dicom_ports),
                    {"protocol": "TCP", "port": ROUTER_HTTP_PORT},
                ]
            }
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_metadata(router_name(name), namespace, labels(name, "router")),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(name, "router")},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def secret_mounts(spec: PoolSpec) -> list[SecretMount]:
    """Return the Secrets the router pods mount for ``spec.router.tls`` and ``spec.gateway.tls``.

    The folders are the contract with the router's options (``--tls-cert``
    and the others): ``server``, ``client-ca``, ``gateway-ca`` and
    ``gateway-client`` below `TLS_DIRECTORY`.
    """
    mounts: list[SecretMount] = []
    tls = spec.router.tls
    if tls is not None:
        mounts.append(
            SecretMount("tls-server", tls.secret_name, f"{TLS_DIRECTORY}/server", CERT_KEYS)
        )
        if tls.client_ca_secret_name is not None:
            mounts.append(
                SecretMount(
                    "tls-client-ca",
                    tls.client_ca_secret_name,
                    f"{TLS_DIRECTORY}/client-ca",
                    (CA_KEY,),
                )
            )
    gateway_tls = spec.gateway.tls
    if gateway_tls is not None:
        mounts.append(
            SecretMount(
                "gateway-tls-ca",
                gateway_tls.ca_secret_name,
                f"{TLS_DIRECTORY}/gateway-ca",
                (CA_KEY,),
            )
        )
        if gateway_tls.client_cert_secret_name is not None:
            mounts.append(
                SecretMount(
                    "gateway-tls-client",
                    gateway_tls.client_cert_secret_name,
                    f"{TLS_DIRECTORY}/gateway-client",
                    CERT_KEYS,
                )
            )
    return mounts


def _tls_arguments(spec: PoolSpec) -> list[str]:
    """The router's TLS options, naming the files `secret_mounts` puts in place."""
    mounts = {mount.volume: mount for mount in secret_mounts(spec)}
    arguments: list[str] = []
    if "tls-server" in mounts:
        server = mounts["tls-server"]
        arguments += [
            "--tls-port",
            str(ROUTER_TLS_PORT),
            "--tls-cert",
            server.path("tls.crt"),
            "--tls-key",
            server.path("tls.key"),
        ]
    if "tls-client-ca" in mounts:
        arguments += ["--tls-client-ca", mounts["tls-client-ca"].path(CA_KEY)]
    if spec.router.tls is not None:
        for binding in spec.router.tls.caller_subjects:
            arguments += ["--caller-subject", f"{binding.ae_title}={binding.subject}"]
    if "gateway-tls-ca" in mounts:
        arguments += ["--gateway-tls-ca", mounts["gateway-tls-ca"].path(CA_KEY)]
    if "gateway-tls-client" in mounts:
        client = mounts["gateway-tls-client"]
        arguments += [
            "--gateway-tls-cert",
            client.path("tls.crt"),
            "--gateway-tls-key",
            client.path("tls.key"),
        ]
    return arguments


def _command(name: str, namespace: str, spec: PoolSpec) -> list[str]:
    command = [
        "gatewaypool",
        "router",
        "--map-configmap",
        f"{namespace}/{map_configmap_name(name)}",
        "--report-configmap",
        f"{namespace}/{routers_configmap_name(name)}",
        "--aet",
        spec.router.ae_title,
        *(["--port", str(ROUTER_DICOM_PORT)] if spec.router.plain_port else ["--no-plain-port"]),
        "--http-port",
        str(ROUTER_HTTP_PORT),
        # A study counts as in flight until it has been quiet this long: the
        # same quiet period after which a handover takes it as complete.
        "--study-quiet-seconds",
        str(spec.handover.quiet_seconds),
    ]
    command += _tls_arguments(spec)
    for title in spec.router.allowed_calling_ae_titles:
        command += ["--allow-calling-aet", title]
    # What the gateways accept, where the pool says so: routers then skip that probe.
    for uid in spec.gateway.accepted_transfer_syntaxes:
        command += ["--accepted-transfer-syntax", uid]
    for uid in spec.gateway.sop_classes:
        command += ["--sop-class", uid]
    count = workers(spec.router.resources)
    if count is not None:
        command += ["--workers", str(count)]
    if spec.router.spool is not None:
        command += _spool_arguments(spec.router.spool)
    command += _timeout_arguments(spec.router.timeouts)
    return command


def _timeout_arguments(timeouts: RouterTimeouts) -> list[str]:
    """The router's timeout options the pool sets (the others keep the router's defaults)."""
    options = (
        ("--gateway-timeout", timeouts.gateway_seconds),
        ("--connect-timeout", timeouts.connect_seconds),
        ("--acse-timeout", timeouts.association_request_seconds),
        ("--idle-timeout", timeouts.sender_idle_seconds),
        ("--gateway-idle-release", timeouts.gateway_idle_release_seconds),
        ("--stall-warning", timeouts.stall_warning_seconds),
    )
    return [part for option, value in options if value is not None for part in (option, str(value))]


def _spool_arguments(spool: SpoolSpec) -> list[str]:
    """The router's spool options: its folder on the volume, when, how much, how long."""
    return [
        "--spool-dir",
        SPOOL_DIRECTORY,
        "--spool-when",
        spool.when,
        "--spool-max-bytes",
        str(spool_max_bytes(spool.size)),
        "--spool-retention",
        str(spool.retention_seconds),
        # Time to forward what the spool holds after SIGTERM (scale-down, rollout).
        "--shutdown-grace",
        str(SPOOL_SHUTDOWN_GRACE_SECONDS),
    ]


def spool_max_bytes(size: str) -> int:
    """Return ``--spool-max-bytes`` for a volume of `size`: `SPOOL_USABLE_PERCENT` of it."""
    value, _ = quantity.parse(size)
    return int(value) * SPOOL_USABLE_PERCENT // 100


def workers(resources: Mapping[str, Any]) -> int | None:
    """Return the router's ``--workers``: its CPU request in whole cores, rounded up.

    A router process uses about one core, so a router given more than one
    runs one worker per core. The request, not the limit, is what the
    scheduler guarantees; 1.5 cores round up to 2 workers that share them.
    Without a request, None: the flag is left out and the router counts the
    CPUs its container may use (its cgroup quota, which a CPU limit sets).
    """
    requests = resources.get("requests") or {}
    cpu = requests.get("cpu")
    if cpu is None:
        return None
    cores, _ = quantity.parse(cpu)
    return max(1, math.ceil(cores))


def deployment(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    """Return the router Deployment ``NAME-router``, with its TLS Secrets mounted."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_metadata(router_name(name), namespace, labels(name, "router")),
        "spec": {
            "replicas": spec.router.replicas,
            "selector": {"matchLabels": selector_labels(name, "router")},
            # Never below the wanted count during a rollout: senders keep a router to talk to.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": _pod_template(name, namespace, spec),
        },
    }


def statefulset(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    """Return the router StatefulSet ``NAME-router`` of ``spec.router.spool``.

    Each router gets the claim ``spool-NAME-router-<i>``, mounted at
    `SPOOL_DIRECTORY`. Claims are kept when a router is scaled away and when
    the StatefulSet or the pool is deleted (``Retain`` both): a spool may
    still hold acknowledged instances, which the router that next mounts it
    (the same ordinal, when the routers grow again or the spool comes back)
    forwards.

    Raises
    ------
    ValueError
        If the spec has no spool.
    """
    spool = spec.router.spool
    if spool is None:
        raise ValueError("spec.router.spool is not set: the routers are a Deployment")
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": spool.size}},
    }
    if spool.storage_class_name is not None:
        claim_spec["storageClassName"] = spool.storage_class_name
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_metadata(router_name(name), namespace, labels(name, "router")),
        "spec": {
            "replicas": spec.router.replicas,
            "serviceName": router_pods_service_name(name),
            # Routers are independent peers: start and stop them all at once.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector_labels(name, "router")},
            "template": _pod_template(name, namespace, spec),
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": SPOOL_VOLUME, "labels": labels(name, "router")},
                    "spec": claim_spec,
                }
            ],
            "persistentVolumeClaimRetentionPolicy": {
                "whenScaled": "Retain",
                "whenDeleted": "Retain",
            },
        },
    }


def pods_service(name: str, namespace: str) -> dict[str, Any]:
    """Return the headless Service ``NAME-router-pods`` the router StatefulSet names."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(
            router_pods_service_name(name), namespace, labels(name, "router")
        ),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(name, "router"),
            "ports": [
                {"name": "http", "port": ROUTER_HTTP_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }


def _pod_template(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    """The router pods' template, for the Deployment and for the StatefulSet alike."""
    mounts = secret_mounts(spec)
    spool = spec.router.spool
    container: dict[str, Any] = {
        "name": "router",
        "image": spec.router.image,
        "command": _command(name, namespace, spec),
        "ports": [
            *(
                [{"name": "dicom", "containerPort": ROUTER_DICOM_PORT, "protocol": "TCP"}]
                if spec.router.plain_port
                else []
            ),
            *(
                [{"name": "dicom-tls", "containerPort": ROUTER_TLS_PORT, "protocol": "TCP"}]
                if spec.router.tls is not None
                else []
            ),
            {"name": "http", "containerPort": ROUTER_HTTP_PORT, "protocol": "TCP"},
        ],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {
                "name": "POD_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
        ],
        "resources": container_resources(spec.router.resources),
        # Ready once a map is applied: a router without one can only refuse studies.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        # Liveness waits for this: a router on a slow or busy node can take
        # longer than liveness's 30 s to load, fork its workers and listen, and
        # would otherwise be killed before it ever served (in a loop).
        "startupProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 90,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            *([{"name": SPOOL_VOLUME, "mountPath": SPOOL_DIRECTORY}] if spool else []),
            *(mount.volume_mount() for mount in mounts),
        ],
    }
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if mounts or spool:
        # Secret files and a fresh volume belong to root; the kubelet gives
        # them this group, the router's own, which lets it read the Secrets
        # (mode 0440) and write its spool.
        pod_security["fsGroup"] = RUN_AS_USER
    if spool:
        # Only a volume whose top folder is not already the group's is walked.
        pod_security["fsGroupChangePolicy"] = "OnRootMismatch"
    template = spec.router.pod_template
    pod_metadata: dict[str, Any] = {"labels": {**thaw(template.labels), **labels(name, "router")}}
    if template.annotations:
        pod_metadata["annotations"] = thaw(template.annotations)
    pod_spec: dict[str, Any] = {
        "serviceAccountName": router_name(name),
        # The router reads its map and writes its report through the API.
        "automountServiceAccountToken": True,
        "securityContext": pod_security,
        **image_pull_secrets_field(spec.image_pull_secrets),
        "containers": [container],
        "volumes": [
            {"name": TMP_VOLUME, "emptyDir": {}},
            *(secret_volume(mount) for mount in mounts),
        ],
        **scheduling_fields(template),
        **spread_field(name, "router", template.topology_spread_constraints),
    }
    if spool:
        # A router leaving forwards what its spool holds before it exits.
        pod_spec["terminationGracePeriodSeconds"] = SPOOL_TERMINATION_GRACE_SECONDS
    return {"metadata": pod_metadata, "spec": pod_spec}


def service(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    """Return the router Service ``NAME-router``: the pool's DICOM endpoint.

    Only what ``spec.router.service`` sets is written. What the API server
    allocates -- ``clusterIP``/``clusterIPs``, a node port not fixed in the
    spec, ``healthCheckNodePort`` -- is never in the object, so server-side
    apply leaves it alone, and it survives every edit of the pool, a change
    of type included (the name never changes; the allocated node ports go
    only when the type no longer needs them).
    """
    service = spec.router.service
    metadata = object_metadata(
        router_name(name), namespace, {**thaw(service.labels), **labels(name, "router")}
    )
    if service.annotations:
        metadata["annotations"] = thaw(service.annotations)
    service_spec: dict[str, Any] = {
        "type": service.type,
        "selector": selector_labels(name, "router"),
        "ports": _service_ports(spec),
    }
    if service.load_balancer_class is not None:
        service_spec["loadBalancerClass"] = service.load_balancer_class
    if service.load_balancer_source_ranges:
        service_spec["loadBalancerSourceRanges"] = list(service.load_balancer_source_ranges)
    if service.external_traffic_policy is not None:
        service_spec["externalTrafficPolicy"] = service.external_traffic_policy
    if service.ip_family_policy is not None:
        service_spec["ipFamilyPolicy"] = service.ip_family_policy
    if service.ip_families:
        service_spec["ipFamilies"] = list(service.ip_families)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": service_spec,
    }


def _service_ports(spec: PoolSpec) -> list[dict[str, Any]]:
    """``dicom`` on ``spec.router.port`` unless plainPort is off, ``dicom-tls`` with TLS;
    each with its fixed node port, if the spec gives one."""
    service = spec.router.service
    ports: list[dict[str, Any]] = []
    if spec.router.plain_port:
        ports.append(
            {"name": "dicom", "port": spec.router.port, "targetPort": "dicom", "protocol": "TCP"}
        )
        if service.node_port is not None:
            ports[-1]["nodePort"] = service.node_port
    if spec.router.tls is not None:
        ports.append(
            {
                "name": "dicom-tls",
                "port": spec.router.tls.port,
                "targetPort": "dicom-tls",
                "protocol": "TCP",
            }
        )
        if service.tls_node_port is not None:
            ports[-1]["nodePort"] = service.tls_node_port
    return ports


def service_account(name: str, namespace: str) -> dict[str, Any]:
    """Return the routers' ServiceAccount ``NAME-router``."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_metadata(router_name(name), namespace, labels(name, "router")),
    }


def role(name: str, namespace: str) -> dict[str, Any]:
    """Return the routers' Role ``NAME-router``: exactly the calls a router makes."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": object_metadata(router_name(name), namespace, labels(name, "router")),
        # Least privilege, exactly the calls a router makes (checked against
        # them in tests/e2e/test_cluster_rbac.py): list and watch the map
        # (a list or watch narrowed to one name by a field selector is
        # authorized by resourceNames), merge-patch its own key into the reports.
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [map_configmap_name(name)],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [routers_configmap_name(name)],
                "verbs": ["patch"],
            },
        ],
    }


def role_binding(name: str, namespace: str) -> dict[str, Any]:
    """Return the RoleBinding ``NAME-router`` of the routers' Role to their ServiceAccount."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": object_metadata(router_name(name), namespace, labels(name, "router")),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": router_name(name),
        },
        "subjects": [{"kind": "ServiceAccount", "name": router_name(name), "namespace": namespace}],
    }
