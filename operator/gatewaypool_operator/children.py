"""Everything a GatewayPool owns, built as plain data from its spec.

Desired state is built here and applied elsewhere: these functions return
the objects as ``kubectl get -o json`` would show them, minus what the API
server fills in, so that a test can check a StatefulSet without a cluster
and the applier only compares and writes. Nothing here talks to the API.

The objects are built without an ownerReference: the reconciler adds
`owner_reference` to each as it applies them (the pool's uid is known only
from the live object), which makes the garbage collector delete them with
the pool.

Names and labels follow the shared contract; see the module constants.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gatewaypool import quantity
from gatewaypool.contract import API_GROUP, API_GROUP_VERSION, KIND, MAP_KEY
from gatewaypool_operator.specfields import thaw
from gatewaypool_operator.spectypes import AutoscalingSpec, PoolSpec

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "FS_GROUP",
    "KIND",
    "MAP_KEY",
    "ROUTER_DICOM_PORT",
    "ROUTER_HTTP_PORT",
    "ROUTER_TLS_PORT",
    "RUN_AS_USER",
    "SECRET_FILE_MODE",
    "STUDIES_IN_FLIGHT_METRIC",
    "TLS_DIRECTORY",
    "SecretMount",
    "autoscaler_name",
    "build_children",
    "gateway_dns_name",
    "gateway_pod_name",
    "labels",
    "map_configmap_name",
    "optional_children",
    "owner_reference",
    "router_name",
    "router_secret_mounts",
    "routers_configmap",
    "routers_configmap_name",
    "selector_labels",
    "selector_string",
    "statefulset_name",
    "topology_spread",
]

API_VERSION: Final = API_GROUP_VERSION
"""The GatewayPool's ``apiVersion``, as an ownerReference and the HPA's scaleTargetRef name it."""

ROUTER_DICOM_PORT: Final = 11112
"""The router container's DICOM port; ``spec.router.port`` is only the Service's."""
ROUTER_HTTP_PORT: Final = 8080
ROUTER_TLS_PORT: Final = 2762
"""The router container's DICOM TLS port; ``spec.router.tls.port`` is only the Service's,
so changing it moves the Service's port and restarts no router."""
RUN_AS_USER: Final = 65532
"""The router's user and group: the distroless "nonroot" user of the image."""
FS_GROUP: Final = 65532
"""The group that owns a gateway's data volume, so any non-root gateway user can write it."""

STUDIES_IN_FLIGHT_METRIC: Final = "gatewaypool_studies_in_flight"
"""The per-gateway Pods metric (served by Prometheus Adapter or KEDA from the routers'
``gatewaypool_router_studies_in_flight``) the autoscaler's studiesInFlight target reads."""

TLS_DIRECTORY: Final = "/etc/gatewaypool/tls"
"""Where the router pods mount the Secrets of ``spec.router.tls`` and ``spec.gateway.tls``,
one folder each (see `router_secret_mounts`)."""
SECRET_FILE_MODE: Final = 0o440
"""Secret files readable by their owner (root) and group only: the router pod's
``fsGroup``, which is the router's own group. A private key is never world-readable."""

CLUSTER_DOMAIN: Final = "svc.cluster.local"
TMP_VOLUME: Final = "tmp"
DATA_VOLUME: Final = "data"

_NAME_LABEL: Final = "app.kubernetes.io/name"
_INSTANCE_LABEL: Final = "app.kubernetes.io/instance"
_MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
#: The managed-by label's value on everything the operator makes.
MANAGED_BY: Final = "gatewaypool-operator"
_COMPONENT_LABEL: Final = "app.kubernetes.io/component"
_COMPONENTS: Final = ("gateway", "router", "map")


# --- names --------------------------------------------------------------------


def statefulset_name(name: str) -> str:
    """Return ``NAME-gw``: the gateway StatefulSet, its headless Service, NetworkPolicy, PDB."""
    return f"{name}-gw"


def router_name(name: str) -> str:
    """Return ``NAME-router``: the router Deployment, Service, ServiceAccount, Role, binding."""
    return f"{name}-router"


def map_configmap_name(name: str) -> str:
    """Return ``NAME-map``: the ConfigMap holding the bucket map."""
    return f"{name}-map"


def routers_configmap_name(name: str) -> str:
    """Return ``NAME-routers``: the ConfigMap the routers report into."""
    return f"{name}-routers"


def autoscaler_name(name: str) -> str:
    """Return ``NAME``: the HorizontalPodAutoscaler, named like the pool it scales."""
    return name


def gateway_pod_name(name: str, ordinal: int) -> str:
    """Return ``NAME-gw-<ordinal>``, the StatefulSet's pod name and the gateway's map name."""
    return f"{statefulset_name(name)}-{ordinal}"


def gateway_dns_name(name: str, namespace: str, ordinal: int) -> str:
    """Return a gateway pod's stable DNS name, which the bucket map lists.

    ``NAME-gw-<ordinal>.NAME-gw.NS.svc.cluster.local``: the headless
    Service gives every StatefulSet pod this record, and publishes it before
    the pod is ready, so routers can resolve a gateway as soon as it starts.
    """
    return (
        f"{gateway_pod_name(name, ordinal)}.{statefulset_name(name)}.{namespace}.{CLUSTER_DOMAIN}"
    )


# --- labels -------------------------------------------------------------------


def labels(name: str, component: str) -> dict[str, str]:
    """Return the labels every object of pool `name` carries, for one component.

    Parameters
    ----------
    name
        The pool's name.
    component
        ``gateway``, ``router`` or ``map``.

    Raises
    ------
    ValueError
        For any other component: a typo would build selectors matching nothing.
    """
    _check_component(component)
    return {
        _NAME_LABEL: "gatewaypool",
        _INSTANCE_LABEL: name,
        _MANAGED_BY_LABEL: MANAGED_BY,
        _COMPONENT_LABEL: component,
    }


def selector_labels(name: str, component: str) -> dict[str, str]:
    """Return the labels that select one component's pods: instance and component.

    Selectors of StatefulSets and Deployments are immutable, so they hold
    only what never changes for a pool.
    """
    _check_component(component)
    return {_INSTANCE_LABEL: name, _COMPONENT_LABEL: component}


def selector_string(name: str) -> str:
    """Return the gateway pods' label selector as a string, for ``status.selector``.

    The scale subresource (and so ``kubectl scale`` and an HPA) reads it to
    find the pods that `spec.replicas` counts.
    """
    return ",".join(f"{key}={value}" for key, value in selector_labels(name, "gateway").items())


def _check_component(component: str) -> None:
    if component not in _COMPONENTS:
        raise ValueError(f"component: {component!r} is not one of {', '.join(_COMPONENTS)}")


# --- owner reference ------------------------------------------------------------


def owner_reference(pool_body: Mapping[str, Any]) -> dict[str, Any]:
    """Return the ownerReference every child of `pool_body` carries.

    ``controller: true`` makes the pool the one manager of the child;
    ``blockOwnerDeletion`` keeps foreground deletion of the pool waiting
    until its children are gone.

    Parameters
    ----------
    pool_body
        The GatewayPool as the API returns it; needs ``metadata.name`` and
        ``metadata.uid``.

    Raises
    ------
    ValueError
        If the body has no name or uid: a reference without a uid is refused
        by the API server, and must not be sent.
    """
    metadata = pool_body.get("metadata") or {}
    name = metadata.get("name")
    uid = metadata.get("uid")
    if not isinstance(name, str) or not name or not isinstance(uid, str) or not uid:
        raise ValueError(
            f"pool body needs metadata.name and metadata.uid, has name={name!r} uid={uid!r}"
        )
    return {
        "apiVersion": pool_body.get("apiVersion") or API_VERSION,
        "kind": pool_body.get("kind") or KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


# --- children -------------------------------------------------------------------


def build_children(
    *,
    name: str,
    namespace: str,
    spec: PoolSpec,
    map_data: Mapping[str, str] | None,
    gateway_replicas: int,
) -> list[dict[str, Any]]:
    """Return every object pool `name` owns and the operator keeps in line with the spec.

    The list excludes the ``NAME-routers`` ConfigMap (see `routers_configmap`):
    routers write into it, so the operator creates it once and never
    overwrites it.

    Parameters
    ----------
    name, namespace
        The pool's.
    spec
        The pool's checked spec.
    map_data
        The ``NAME-map`` ConfigMap's data to publish: the bucket map
        (`MAP_KEY`) and the handover's state beside it, written together; or
        None if there is no map yet (no gateway was Ready): the ConfigMap is
        then built with no data, and routers stay unready until a map appears.
    gateway_replicas
        The StatefulSet's replica count. Usually ``spec.replicas``; while
        scaling down the operator keeps the leaving pods until their buckets
        have moved, so it decides this, not the spec.

    Returns
    -------
    list[dict]
        StatefulSet, headless Service, router Deployment, router Service,
        ServiceAccount, Role, RoleBinding, ConfigMap ``NAME-map``,
        NetworkPolicies ``NAME-gw`` and ``NAME-router`` (unless
        ``spec.networkPolicy.enabled`` is false) and PodDisruptionBudgets
        ``NAME-gw`` and ``NAME-router``, and the HorizontalPodAutoscaler
        ``NAME`` when ``spec.autoscaling`` is set, in an order that can be
        created as is (what an object refers to comes first).

    Raises
    ------
    ValueError
        If `gateway_replicas` is negative.
    """
    if gateway_replicas < 0:
        raise ValueError(f"gateway_replicas: {gateway_replicas!r} is negative")
    policies = (
        [_network_policy(name, namespace, spec), _router_network_policy(name, namespace, spec)]
        if spec.network_policy.enabled
        else []
    )
    autoscalers = (
        [_horizontal_pod_autoscaler(name, namespace, spec.autoscaling)]
        if spec.autoscaling is not None
        else []
    )
    return [
        _service_account(name, namespace),
        _role(name, namespace),
        _role_binding(name, namespace),
        _map_configmap(name, namespace, map_data),
        _headless_service(name, namespace, spec),
        _statefulset(name, namespace, spec, gateway_replicas),
        *policies,
        _pod_disruption_budget(name, namespace),
        _router_deployment(name, namespace, spec),
        _router_pod_disruption_budget(name, namespace),
        _router_service(name, namespace, spec),
        *autoscalers,
    ]


def optional_children(name: str) -> list[tuple[str, str]]:
    """Return (kind, name) of the children a spec may leave out, which are then deleted.

    The NetworkPolicies go with ``spec.networkPolicy.enabled: false``, the
    HorizontalPodAutoscaler with ``spec.autoscaling``.
    """
    return [
        ("NetworkPolicy", statefulset_name(name)),
        ("NetworkPolicy", router_name(name)),
        ("HorizontalPodAutoscaler", autoscaler_name(name)),
    ]


def routers_configmap(*, name: str, namespace: str) -> dict[str, Any]:
    """Return the ``NAME-routers`` ConfigMap, empty: create it once, never overwrite it.

    Every router patches its own key (its pod name) with the map version it
    applied; an operator that replaced the ConfigMap would erase those
    reports and stall every handover, so the applier must only create it
    when it is missing.
    """
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(routers_configmap_name(name), namespace, labels(name, "router")),
        "data": {},
    }


def _metadata(object_name: str, namespace: str, object_labels: Mapping[str, str]) -> dict[str, Any]:
    return {"name": object_name, "namespace": namespace, "labels": dict(object_labels)}


def _resources(resources: Mapping[str, Any]) -> dict[str, Any]:
    """Resource requirements without empty ``requests``/``limits``.

    The API server drops an empty map (``omitempty``), so one sent would
    never be seen again and would read as drift on every pass.
    """
    return {key: value for key, value in thaw(resources).items() if value}


def _map_configmap(name: str, namespace: str, map_data: Mapping[str, str] | None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(map_configmap_name(name), namespace, labels(name, "map")),
        "data": dict(map_data or {}),
    }


def _headless_service(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(statefulset_name(name), namespace, labels(name, "gateway")),
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


def _container_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _statefulset(
    name: str, namespace: str, spec: PoolSpec, gateway_replicas: int
) -> dict[str, Any]:
    gateway = spec.gateway
    template = gateway.pod_template
    volume_mounts: list[dict[str, Any]] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    if gateway.storage is not None:
        volume_mounts.append({"name": DATA_VOLUME, "mountPath": gateway.storage.mount_path})
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
    container["resources"] = _resources(gateway.resources)
    container["readinessProbe"] = {
        # Any DICOM SCP accepts a TCP connection when it can take associations;
        # a C-ECHO probe would need a DICOM client in the user's image.
        "tcpSocket": {"port": "dicom"},
        "periodSeconds": 5,
        "failureThreshold": 3,
    }
    container["securityContext"] = _container_security_context()
    container["volumeMounts"] = volume_mounts

    pod_security: dict[str, Any] = {
        # The gateway image picks its user; it must only not be root.
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if gateway.storage is not None:
        # A fresh volume is root's; the group makes it writable to any non-root user.
        pod_security["fsGroup"] = FS_GROUP
        pod_security["fsGroupChangePolicy"] = "OnRootMismatch"
    pod_spec: dict[str, Any] = {
        # Gateways do not call the Kubernetes API unless the user gives them an account.
        "automountServiceAccountToken": bool(template.service_account_name),
        "securityContext": pod_security,
        "containers": [container],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}],
        # How long a gateway may finish what it holds after SIGTERM (scale-down,
        # rolling update) before it is killed.
        "terminationGracePeriodSeconds": gateway.termination_grace_period_seconds,
    }
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.node_selector:
        pod_spec["nodeSelector"] = thaw(template.node_selector)
    if template.tolerations:
        pod_spec["tolerations"] = thaw(template.tolerations)
    if template.affinity:
        pod_spec["affinity"] = thaw(template.affinity)
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name
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
        "metadata": _metadata(statefulset_name(name), namespace, labels(name, "gateway")),
        "spec": statefulset_spec,
    }


DEFAULT_SPREAD_KEYS: Final = ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
"""Gateways and routers spread over zones, then nodes, unless the spec says otherwise."""


def topology_spread(
    name: str, component: str, constraints: Sequence[Mapping[str, Any]] | None
) -> list[dict[str, Any]]:
    """Return a component's ``topologySpreadConstraints``.

    Not set in the spec (None): one constraint per key of
    `DEFAULT_SPREAD_KEYS`, ``maxSkew: 1``, ``ScheduleAnyway`` -- a preference
    that never keeps a pod from starting (on a one-node cluster, in a cluster
    without zone labels). Set: the spec's constraints, where one without a
    ``labelSelector`` gets the component's selector (without one it would
    count no pods). ``[]``: none.
    """
    if constraints is None:
        constraints = [
            {"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway"}
            for key in DEFAULT_SPREAD_KEYS
        ]
    result = []
    for constraint in constraints:
        item = thaw(constraint)
        item.setdefault("labelSelector", {"matchLabels": selector_labels(name, component)})
        result.append(item)
    return result


def _network_policy(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(statefulset_name(name), namespace, labels(name, "gateway")),
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


def _router_network_policy(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    dicom_ports = [
        *([ROUTER_DICOM_PORT] if spec.router.plain_port else []),
        *([ROUTER_TLS_PORT] if spec.router.tls is not None else []),
    ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(router_name(name), namespace, labels(name, "router")),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(name, "router")},
            "policyTypes": ["Ingress"],
            # No "from": modalities send from anywhere, and Prometheus scrapes
            # /metrics from its own namespace. In a default-deny namespace the
            # routers are reachable on their DICOM ports (plain, TLS or both)
            # and their HTTP port, and no other.
            "ingress": [
                {
                    "ports": [
                        *({"protocol": "TCP", "port": port} for port in dicom_ports),
                        {"protocol": "TCP", "port": ROUTER_HTTP_PORT},
                    ]
                }
            ],
        },
    }


def _pod_disruption_budget(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(statefulset_name(name), namespace, labels(name, "gateway")),
        "spec": {
            # One gateway at a time: its buckets fail over only after the operator moves them.
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(name, "gateway")},
        },
    }


def _router_pod_disruption_budget(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(router_name(name), namespace, labels(name, "router")),
        "spec": {
            # One router at a time: a node drain never takes the pool's DICOM
            # endpoint away, and a single router can still be evicted.
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(name, "router")},
        },
    }


_CERT_KEYS: Final = ("tls.crt", "tls.key")  # a kubernetes.io/tls Secret
_CA_KEY: Final = "ca.crt"


@dataclass(frozen=True, slots=True)
class SecretMount:
    """One Secret the router pods mount read-only: volume, Secret, folder, and the keys used.

    Only `keys` are projected into the folder: the Secret of a cert-manager
    CA (``ca.crt``, ``tls.crt``, ``tls.key``) may serve as a client CA without
    its private key reaching the routers. No ``subPath``: the kubelet swaps
    a Secret volume's files atomically when the Secret changes, which is how
    a renewed certificate reaches running routers.
    """

    volume: str
    secret_name: str
    directory: str
    keys: tuple[str, ...]

    def path(self, key: str) -> str:
        """The file of `key` inside the router container."""
        return f"{self.directory}/{key}"


def router_secret_mounts(spec: PoolSpec) -> list[SecretMount]:
    """Return the Secrets the router pods mount for ``spec.router.tls`` and ``spec.gateway.tls``.

    The folders are the contract with the router's options (``--tls-cert``
    and the others): ``server``, ``client-ca``, ``gateway-ca`` and
    ``gateway-client`` below `TLS_DIRECTORY`.
    """
    mounts: list[SecretMount] = []
    tls = spec.router.tls
    if tls is not None:
        mounts.append(
            SecretMount("tls-server", tls.secret_name, f"{TLS_DIRECTORY}/server", _CERT_KEYS)
        )
        if tls.client_ca_secret_name is not None:
            mounts.append(
                SecretMount(
                    "tls-client-ca",
                    tls.client_ca_secret_name,
                    f"{TLS_DIRECTORY}/client-ca",
                    (_CA_KEY,),
                )
            )
    gateway_tls = spec.gateway.tls
    if gateway_tls is not None:
        mounts.append(
            SecretMount(
                "gateway-tls-ca",
                gateway_tls.ca_secret_name,
                f"{TLS_DIRECTORY}/gateway-ca",
                (_CA_KEY,),
            )
        )
        if gateway_tls.client_cert_secret_name is not None:
            mounts.append(
                SecretMount(
                    "gateway-tls-client",
                    gateway_tls.client_cert_secret_name,
                    f"{TLS_DIRECTORY}/gateway-client",
                    _CERT_KEYS,
                )
            )
    return mounts


def _tls_arguments(spec: PoolSpec) -> list[str]:
    """The router's TLS options, naming the files `router_secret_mounts` puts in place."""
    mounts = {mount.volume: mount for mount in router_secret_mounts(spec)}
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
        arguments += ["--tls-client-ca", mounts["tls-client-ca"].path(_CA_KEY)]
    if spec.router.tls is not None:
        for binding in spec.router.tls.caller_subjects:
            arguments += ["--caller-subject", f"{binding.ae_title}={binding.subject}"]
    if "gateway-tls-ca" in mounts:
        arguments += ["--gateway-tls-ca", mounts["gateway-tls-ca"].path(_CA_KEY)]
    if "gateway-tls-client" in mounts:
        client = mounts["gateway-tls-client"]
        arguments += [
            "--gateway-tls-cert",
            client.path("tls.crt"),
            "--gateway-tls-key",
            client.path("tls.key"),
        ]
    return arguments


def _router_command(name: str, namespace: str, spec: PoolSpec) -> list[str]:
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
    workers = router_workers(spec.router.resources)
    if workers is not None:
        command += ["--workers", str(workers)]
    return command


def router_workers(resources: Mapping[str, Any]) -> int | None:
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


def _router_deployment(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    mounts = router_secret_mounts(spec)
    container: dict[str, Any] = {
        "name": "router",
        "image": spec.router.image,
        "command": _router_command(name, namespace, spec),
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
        "resources": _resources(spec.router.resources),
        # Ready once a map is applied: a router without one can only refuse studies.
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": _container_security_context(),
        "volumeMounts": [
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            *(
                {"name": mount.volume, "mountPath": mount.directory, "readOnly": True}
                for mount in mounts
            ),
        ],
    }
    pod_security: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if mounts:
        # Secret files belong to root; the kubelet gives them this group, the
        # router's own, which mode 0440 lets read them.
        pod_security["fsGroup"] = RUN_AS_USER
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(router_name(name), namespace, labels(name, "router")),
        "spec": {
            "replicas": spec.router.replicas,
            "selector": {"matchLabels": selector_labels(name, "router")},
            # Never below the wanted count during a rollout: senders keep a router to talk to.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": labels(name, "router")},
                "spec": {
                    "serviceAccountName": router_name(name),
                    # The router reads its map and writes its report through the API.
                    "automountServiceAccountToken": True,
                    "securityContext": pod_security,
                    "containers": [container],
                    "volumes": [
                        {"name": TMP_VOLUME, "emptyDir": {}},
                        *(_secret_volume(mount) for mount in mounts),
                    ],
                    **_spread_field(name, "router", spec.router.topology_spread_constraints),
                },
            },
        },
    }


def _secret_volume(mount: SecretMount) -> dict[str, Any]:
    return {
        "name": mount.volume,
        "secret": {
            "secretName": mount.secret_name,
            "items": [{"key": key, "path": key} for key in mount.keys],
            "defaultMode": SECRET_FILE_MODE,
        },
    }


SCALE_UP_POLICIES: Final = (
    {"type": "Percent", "value": 100, "periodSeconds": 15},
    {"type": "Pods", "value": 4, "periodSeconds": 15},
)
"""Scale up promptly: double the gateways, or add four, every 15 s, whichever is more."""


def _horizontal_pod_autoscaler(
    name: str, namespace: str, autoscaling: AutoscalingSpec
) -> dict[str, Any]:
    """The autoscaling/v2 HorizontalPodAutoscaler aimed at the pool's scale subresource.

    It writes ``spec.replicas`` of the GatewayPool, never the StatefulSet's:
    every step it takes goes through the bucket handover like a manual scale.
    Scale-down waits ``stabilization_seconds`` (never shorter than a handover
    may take) and removes at most one gateway per ``period_seconds``.
    """
    metrics: list[dict[str, Any]] = []
    if autoscaling.cpu_utilization is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {
                        "type": "Utilization",
                        "averageUtilization": autoscaling.cpu_utilization,
                    },
                },
            }
        )
    if autoscaling.studies_in_flight is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": STUDIES_IN_FLIGHT_METRIC},
                    # A quantity: the API server stores it as a string.
                    "target": {
                        "type": "AverageValue",
                        "averageValue": str(autoscaling.studies_in_flight),
                    },
                },
            }
        )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(autoscaler_name(name), namespace, labels(name, "gateway")),
        "spec": {
            "scaleTargetRef": {"apiVersion": API_VERSION, "kind": KIND, "name": name},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": metrics,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [dict(policy) for policy in SCALE_UP_POLICIES],
                    "selectPolicy": "Max",
                },
                "scaleDown": {
                    "stabilizationWindowSeconds": autoscaling.stabilization_seconds,
                    "policies": [
                        {
                            "type": "Pods",
                            "value": 1,
                            "periodSeconds": autoscaling.period_seconds,
                        }
                    ],
                    "selectPolicy": "Min",
                },
            },
        },
    }


def _spread_field(
    name: str, component: str, constraints: Sequence[Mapping[str, Any]] | None
) -> dict[str, Any]:
    spread = topology_spread(name, component, constraints)
    return {"topologySpreadConstraints": spread} if spread else {}


def _router_service(name: str, namespace: str, spec: PoolSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(router_name(name), namespace, labels(name, "router")),
        "spec": {
            "type": spec.router.service_type,
            "selector": selector_labels(name, "router"),
            "ports": _router_service_ports(spec),
        },
    }


def _router_service_ports(spec: PoolSpec) -> list[dict[str, Any]]:
    """``dicom`` on ``spec.router.port`` unless plainPort is off, ``dicom-tls`` with TLS."""
    ports = []
    if spec.router.plain_port:
        ports.append(
            {"name": "dicom", "port": spec.router.port, "targetPort": "dicom", "protocol": "TCP"}
        )
    if spec.router.tls is not None:
        ports.append(
            {
                "name": "dicom-tls",
                "port": spec.router.tls.port,
                "targetPort": "dicom-tls",
                "protocol": "TCP",
            }
        )
    return ports


def _service_account(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(router_name(name), namespace, labels(name, "router")),
    }


def _role(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(router_name(name), namespace, labels(name, "router")),
        # Least privilege, exactly the calls a router makes (checked against
        # them in tests/integration/test_rbac_calls.py): read and watch the map
        # (a watch narrowed to one name by a field selector is authorized by
        # resourceNames), merge-patch its own key into the reports.
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [map_configmap_name(name)],
                "verbs": ["get", "watch"],
            },
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [routers_configmap_name(name)],
                "verbs": ["patch"],
            },
        ],
    }


def _role_binding(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(router_name(name), namespace, labels(name, "router")),
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": router_name(name),
        },
        "subjects": [{"kind": "ServiceAccount", "name": router_name(name), "namespace": namespace}],
    }
