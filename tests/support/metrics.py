"""metrics-server in the test cluster: ``metrics.k8s.io`` for ``kubectl top`` and the HPA.

The objects are those of metrics-server's upstream manifests (v0.8.0's
``manifests/base`` with its ``release`` and ``test`` components, as
``kustomize`` renders them): its ServiceAccount, RBAC, Deployment and
Service in ``kube-system``, and the APIService ``v1beta1.metrics.k8s.io``
(``insecureSkipTLSVerify``, as upstream) that makes the API server's
aggregation layer send ``/apis/metrics.k8s.io`` to it. The binary is the
upstream program built from its Go module (``tests/metricsserver``, built by
``./dev.sh``; the image stand-in of :mod:`support.images`), run by the
kubelet stand-in like any pod. It scrapes each Node's ``/metrics/resource``
(:mod:`support.kubeletserver`) every 15 s; the real HPA controller in
kube-controller-manager then reads pods' CPU from it.

:func:`deploy` applies the objects and does not wait; :func:`wait_available`
waits for the APIService to be Available (metrics-server is Ready after its
second scrape, some 20 to 40 seconds after it starts). The tests that need
``metrics.k8s.io`` do both once per session, through one fixture.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import kubernetes.client
import yaml

from gatewaypool import quantity
from gatewaypool_local.peers.process import wait_until

if TYPE_CHECKING:
    from support.realcluster import Cluster

NAMESPACE = "kube-system"
NAME = "metrics-server"
APISERVICE = "v1beta1.metrics.k8s.io"
IMAGE = "registry.k8s.io/metrics-server/metrics-server:v0.8.0"
_LABELS = {"k8s-app": NAME}


def _meta(name: str, namespaced: bool = True) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": dict(_LABELS)}
    if namespaced:
        meta["namespace"] = NAMESPACE
    return meta


def _binding(kind: str, name: str, role_kind: str, role: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(name, namespaced=kind == "RoleBinding"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
    }


def manifests() -> list[dict[str, Any]]:
    """The upstream objects, with the ``test`` component's ``--kubelet-insecure-tls``."""
    aggregated = _meta("system:aggregated-metrics-reader", namespaced=False)
    aggregated["labels"].update(
        {
            f"rbac.authorization.k8s.io/aggregate-to-{verb}": "true"
            for verb in ("view", "edit", "admin")
        }
    )
    probe = {"port": "https", "scheme": "HTTPS"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(NAME)},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": aggregated,
            "rules": [
                {
                    "apiGroups": ["metrics.k8s.io"],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": _meta("system:metrics-server", namespaced=False),
            "rules": [
                {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                {
                    "apiGroups": [""],
                    "resources": ["pods", "nodes"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        _binding(
            "RoleBinding",
            "metrics-server-auth-reader",
            "Role",
            "extension-apiserver-authentication-reader",
        ),
        _binding(
            "ClusterRoleBinding",
            "metrics-server:system:auth-delegator",
            "ClusterRole",
            "system:auth-delegator",
        ),
        _binding(
            "ClusterRoleBinding", "system:metrics-server", "ClusterRole", "system:metrics-server"
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta(NAME),
            "spec": {
                "selector": dict(_LABELS),
                "ports": [
                    {
                        "name": "https",
                        "port": 443,
                        "protocol": "TCP",
                        "targetPort": "https",
                        "appProtocol": "https",
                    }
                ],
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(NAME),
            "spec": {
                "selector": {"matchLabels": dict(_LABELS)},
                "strategy": {"rollingUpdate": {"maxUnavailable": 0}},
                "template": {
                    "metadata": {"labels": dict(_LABELS)},
                    "spec": {
                        "serviceAccountName": NAME,
                        "priorityClassName": "system-cluster-critical",
                        "nodeSelector": {"kubernetes.io/os": "linux"},
                        "volumes": [{"name": "tmp-dir", "emptyDir": {}}],
                        "containers": [
                            {
                                "name": NAME,
                                "image": IMAGE,
                                "imagePullPolicy": "IfNotPresent",
                                "args": [
                                    "--cert-dir=/tmp",
                                    "--secure-port=10250",
                                    "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
                                    "--kubelet-use-node-status-port",
                                    "--metric-resolution=15s",
                                    "--kubelet-insecure-tls",
                                ],
                                "resources": {"requests": {"cpu": "100m", "memory": "200Mi"}},
                                "ports": [
                                    {"name": "https", "containerPort": 10250, "protocol": "TCP"}
                                ],
                                "readinessProbe": {
                                    "httpGet": {"path": "/readyz", **probe},
                                    "periodSeconds": 10,
                                    "failureThreshold": 3,
                                    "initialDelaySeconds": 20,
                                },
                                "livenessProbe": {
                                    "httpGet": {"path": "/livez", **probe},
                                    "periodSeconds": 10,
                                    "failureThreshold": 3,
                                },
                                "securityContext": {
                                    "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True,
                                    "runAsUser": 1000,
                                    "allowPrivilegeEscalation": False,
                                    "seccompProfile": {"type": "RuntimeDefault"},
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [{"name": "tmp-dir", "mountPath": "/tmp"}],
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": _meta(APISERVICE, namespaced=False),
            "spec": {
                "service": {"name": NAME, "namespace": NAMESPACE},
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "insecureSkipTLSVerify": True,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]


def deploy(cluster: Cluster) -> None:
    """Apply the objects (``kubectl apply --server-side``, as a user installs them); no wait."""
    cluster.kubectl(
        "apply",
        "--server-side",
        "--field-manager=kubectl",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(manifests()),
    )


def _available(cluster: Cluster) -> tuple[bool, str]:
    registration: Any = kubernetes.client.ApiregistrationV1Api(cluster.api())
    found = registration.read_api_service(APISERVICE)
    for condition in (found.status.conditions if found.status else None) or []:
        if condition.type == "Available":
            return condition.status == "True", f"{condition.reason}: {condition.message}"
    return False, "no Available condition yet"


def wait_available(cluster: Cluster, *, timeout: float = 120) -> None:
    """Wait until the aggregation layer serves ``metrics.k8s.io`` (the APIService is Available).

    On a timeout the error carries :func:`diagnosis`.
    """
    try:
        wait_until(lambda: _available(cluster)[0], timeout=timeout, what=f"APIService {APISERVICE}")
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{diagnosis(cluster)}") from exc


def diagnosis(cluster: Cluster) -> str:
    """The APIService's condition, metrics-server's pod conditions and the end of its log."""
    lines = [f"APIService {APISERVICE}: {_available(cluster)[1]}"]
    for pod in cluster.pods(NAMESPACE, f"k8s-app={NAME}"):
        status = pod.get("status") or {}
        conditions = [
            (c["type"], c["status"], c.get("lastTransitionTime"), c.get("reason"))
            for c in status.get("conditions") or []
        ]
        writers = [
            (f["manager"], f.get("subresource"), f.get("time"))
            for f in pod["metadata"].get("managedFields") or []
        ]
        restarts = [
            (c["name"], c.get("restartCount"), (c.get("lastState") or {}).get("terminated"))
            for c in status.get("containerStatuses") or []
        ]
        lines.append(f"pod {pod['metadata']['name']}: {status.get('phase')} {conditions}")
        lines.append(f"  restarts {restarts}")
        lines.append(f"  written by {writers}")
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    for event in core.list_namespaced_event(NAMESPACE).items:
        if event.involved_object.name.startswith(NAME):
            lines.append(f"event {event.involved_object.name}: {event.reason} {event.message}")
    ran = cluster.kubelet.pods(NAMESPACE)
    lines.append(cluster.kubelet.log(ran[-1])[-3000:] if ran else "(no metrics-server pod ran)")
    lines += [f"kubelet error: {error}" for error in cluster.kubelet.errors[-5:]]
    for node, server in cluster.kubelet.servers().items():
        answered = [
            f"{time.strftime('%H:%M:%S', time.gmtime(s.at))} {s.path} {s.status} {s.seconds:.3f}s"
            for s in list(server.served)[-6:]
        ]
        lines.append(f"kubelet {node} answered: {answered or 'nothing yet'}")
    return "\n".join(lines)


@dataclass(frozen=True)
class PodUsage:
    """One pod's figures in ``metrics.k8s.io``: summed over its containers."""

    cpu_cores: float
    memory_bytes: int
    window: str
    timestamp: str


def pod_usage(cluster: Cluster, namespace: str) -> dict[str, PodUsage]:
    """``kubectl top pods`` for `namespace`: ``/apis/metrics.k8s.io/v1beta1/namespaces/NS/pods``.

    Pods metrics-server has no figures for yet are missing.
    """
    custom: Any = kubernetes.client.CustomObjectsApi(cluster.api())
    answer = custom.list_namespaced_custom_object("metrics.k8s.io", "v1beta1", namespace, "pods")
    usage: dict[str, PodUsage] = {}
    for item in answer.get("items", []):
        containers = [c["usage"] for c in item.get("containers", [])]
        usage[item["metadata"]["name"]] = PodUsage(
            cpu_cores=float(sum(quantity.parse(c["cpu"])[0] for c in containers)),
            memory_bytes=int(sum(quantity.parse(c["memory"])[0] for c in containers)),
            window=item.get("window", ""),
            timestamp=item.get("timestamp", ""),
        )
    return usage
