"""The gateways' objects: StatefulSet, headless Service, NetworkPolicy.

The user's DICOM Storage SCP runs as the StatefulSet ``NAME-gw``, one pod
per gateway with a stable DNS name from the headless Service (the names the
bucket map lists), its own volume with ``spec.gateway.storage``, a
NetworkPolicy that lets only the pool's routers (and
``spec.networkPolicy.extraIngress``) reach it (and a PodDisruptionBudget of
one, from `gatewaypool_operator.children.podparts`). With
``spec.gateway.tls.serverCertSecretName`` every gateway pod mounts that
certificate (`secret_mounts`). Built as plain data;
`gatewaypool_operator.children.desired.build_children` puts them in the list
of what the pool owns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from gatewaypool_operator.children.names import (
    labels,
    object_metadata,
    selector_labels,
    statefulset_name,
)
from gatewaypool_operator.children.podparts import (
    CERT_KEYS,
    GATEWAY_CERT_DIRECTORY,
    TMP_VOLUME,
    SecretMount,
    container_resources,
    container_security_context,
    image_pull_secrets_field,
    scheduling_fields,
    secret_volume,
    topology_spread,
)
from gatewaypool_operator.spec.fields import thaw
from gatewaypool_operator.spec.types import GatewaySpec, PoolSpec

__all__ = [
    "DATA_VOLUME",
    "FS_GROUP",
    "PRIVILEGED_PORTS",
    "UNPRIVILEGED_PORT_SYSCTL",
    "network_policy",
    "secret_mounts",
    "service",
    "statefulset",
]

FS_GROUP: Final = 65532
"""The group that owns a gateway's data volume, so any non-root gateway user can write it."""
UNPRIVILEGED_PORT_SYSCTL: Final = "net.ipv4.ip_unprivileged_port_start"
"""The pod sysctl that lets a non-root gateway bind a port below `PRIVILEGED_PORTS`."""
PRIVILEGED_PORTS: Final = 1024
"""Ports below this need root or CAP_NET_BIND_SERVICE, unless the sysctl lowers the bound."""
DATA_VOLUME: Final = "data"
"""The volume of ``spec.gateway.storage``, and so the prefix of its claims' names."""


def secret_mounts(spec: PoolSpec) -> list[SecretMount]:
    """Return the Secrets the gateway pods mount: the certificate of ``serverCertSecretName``.

    Its files are `GATEWAY_CERT_DIRECTORY` ``/tls.crt`` and ``/tls.key``,
    which the gateway's own ``args`` or configuration name. The pod's
    ``fsGroup`` lets whatever non-root user the image runs as read them.
    """
    tls = spec.gateway.tls
    if tls is None or tls.server_cert_secret_name is None:
        return []
    return [
        SecretMount("tls-server", tls.server_cert_secret_name, GATEWAY_CERT_DIRECTORY, CERT_KEYS)
    ]


def service(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    """Return the headless Service ``NAME-gw``, which gives each gateway pod its DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_metadata(statefulset_name(name), namespace, labels(name, "gateway")),
        "spec": {
            "clusterIP": "None",
            # DNS records before readiness: a router can resolve a starting gateway.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(name, "gateway"),
            "ports": [
                {
                    "name": "dicom",
                    "port": spec.gateway.port,
                    "targetPort": "dicom",
                    "protocol": "TCP",
                }
            ],
        },
    }


def statefulset(name: str, namespace: str, spec: PoolSpec, gateway_replicas: int) -> dict[str, Any]:
    """Return the gateway StatefulSet ``NAME-gw`` with `gateway_replicas` pods."""
    gateway = spec.gateway
    template = gateway.pod_template
    secrets = secret_mounts(spec)
    container = _container(gateway, secrets)
    pod_security = _pod_security(gateway, secrets)
    pod_spec: dict[str, Any] = {
        # Gateways do not call the Kubernetes API unless the user gives them an account.
        "automountServiceAccountToken": bool(template.service_account_name),
        "securityContext": pod_security,
        **image_pull_secrets_field(spec.image_pull_secrets),
        "containers": [container],
        "volumes": [
            {"name": TMP_VOLUME, "emptyDir": {}},
            *(secret_volume(mount) for mount in secrets),
        ],
        # How long a gateway may finish what it holds after SIGTERM (scale-down,
        # rolling update) before it is killed.
        "terminationGracePeriodSeconds": gateway.termination_grace_period_seconds,
    }
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    pod_spec.update(scheduling_fields(template))
    spread = topology_spread(name, "gateway", template.topology_spread_constraints)
    if spread:
        pod_spec["topologySpreadConstraints"] = spread

    pod_metadata: dict[str, Any] = {"labels": {**thaw(template.labels), **labels(name, "gateway")}}
    if template.annotations:
        pod_metadata["annotations"] = thaw(template.annotations)
    statefulset_spec: dict[str, Any] = {
        "replicas": gateway_replicas,
        "serviceName": statefulset_name(name),
        # Gateways are independent peers: start and stop them all at once.
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": selector_labels(name, "gateway")},
        "template": {"metadata": pod_metadata, "spec": pod_spec},
    }
    if gateway.storage is not None:
        claim_spec: dict[str, Any] = {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": gateway.storage.size}},
        }
        if gateway.storage.storage_class_name is not None:
            claim_spec["storageClassName"] = gateway.storage.storage_class_name
        statefulset_spec["volumeClaimTemplates"] = [
            {
                "metadata": {"name": DATA_VOLUME, "labels": labels(name, "gateway")},
                "spec": claim_spec,
            }
        ]
        # A removed gateway's claim is kept (its data may not be processed yet)
        # unless the spec says Delete; deleting the pool never deletes claims.
        statefulset_spec["persistentVolumeClaimRetentionPolicy"] = {
            "whenScaled": gateway.storage.when_scaled,
            "whenDeleted": "Retain",
        }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_metadata(statefulset_name(name), namespace, labels(name, "gateway")),
        "spec": statefulset_spec,
    }


def _container(gateway: GatewaySpec, secrets: Sequence[SecretMount]) -> dict[str, Any]:
    """The gateway container: the user's image, command and env, with our probe and mounts."""
    volume_mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if gateway.storage is not None:
        volume_mounts.append({"name": DATA_VOLUME, "mountPath": gateway.storage.mount_path})
    volume_mounts += [mount.volume_mount() for mount in secrets]
    container: dict[str, Any] = {
        "name": "gateway",
        "image": gateway.image,
        "imagePullPolicy": gateway.image_pull_policy,
    }
    if gateway.command:
        container["command"] = list(gateway.command)
    if gateway.args:
        container["args"] = list(gateway.args)
    container["ports"] = [{"name": "dicom", "containerPort": gateway.port, "protocol": "TCP"}]
    if gateway.env:
        container["env"] = thaw(gateway.env)
    container["resources"] = container_resources(gateway.resources)
    container["readinessProbe"] = {
        # Any DICOM SCP accepts a TCP connection when it can take associations;
        # a C-ECHO probe would need a DICOM client in the user's image.
        "tcpSocket": {"port": "dicom"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
    container["securityContext"] = container_security_context(
        run_as_non_root=gateway.security_context.run_as_non_root
    )
    container["volumeMounts"] = volume_mounts
    return container


def _pod_security(gateway: GatewaySpec, secrets: Sequence[SecretMount]) -> dict[str, Any]:
    """The gateway pod's securityContext."""
    security = gateway.security_context
    pod_security: dict[str, Any] = {
        # The image picks its user unless the spec does; by default it must not be root.
        "runAsNonRoot": security.run_as_non_root,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if security.run_as_user is not None:
        pod_security["runAsUser"] = security.run_as_user
    if security.run_as_group is not None:
        pod_security["runAsGroup"] = security.run_as_group
    if security.fs_group is not None or gateway.storage is not None or secrets:
        # A fresh volume and Secret files are root's; the group makes the
        # volume writable and the Secret files readable to any non-root user.
        pod_security["fsGroup"] = security.fs_group if security.fs_group is not None else FS_GROUP
        pod_security["fsGroupChangePolicy"] = "OnRootMismatch"
    if gateway.port < PRIVILEGED_PORTS:
        # A non-root gateway may bind its DICOM port (104) without a capability:
        # the pod's own network namespace lets unprivileged users bind from the
        # port up. A "safe" sysctl, allowed by the baseline and restricted Pod
        # Security levels and by every kubelet since Kubernetes 1.22.
        pod_security["sysctls"] = [{"name": UNPRIVILEGED_PORT_SYSCTL, "value": str(gateway.port)}]
    return pod_security


def network_policy(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    """Return the NetworkPolicy ``NAME-gw``: the routers and the spec's extra ingress only."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_metadata(statefulset_name(name), namespace, labels(name, "gateway")),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(name, "gateway")},
            # Ingress only: what gateways send (to PACS, AI services) is the user's business.
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    # A podSelector without namespaceSelector: this namespace only.
                    "from": [{"podSelector": {"matchLabels": selector_labels(name, "router")}}],
                    "ports": [{"protocol": "TCP", "port": spec.gateway.port}],
                },
                # What else reaches the gateways: metrics scrapes, storage
                # commitment N-EVENT-REPORTs, results sent back, web UIs.
                *thaw(spec.network_policy.extra_ingress),
            ],
        },
    }
