"""A pool's routers and settledness, as the end-to-end tests and the benchmark see them.

Routers run as processes of their own; each gets the Pod object its
Deployment would make (the operator counts router pods and waits for their
reports) and the ``--connect-to`` rules that reach the kubelet's gateways.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gatewaypool_local.routerproc import RouterProcess
from support.kubeemu import KubeEmulator
from support.kubelet import GatewayKubelet


def pool_status(kube: KubeEmulator, kubelet: GatewayKubelet) -> dict[str, Any]:
    """The status of the kubelet's pool (empty before the operator wrote one)."""
    pool = kube.get("GatewayPool", kubelet.pool, kubelet.namespace) or {}
    status: dict[str, Any] = pool.get("status") or {}
    return status


def settled(kube: KubeEmulator, kubelet: GatewayKubelet, replicas: int) -> bool:
    """`replicas` gateways running and Ready, nothing moving, each owning buckets."""
    status = pool_status(kube, kubelet)
    return (
        status.get("replicas") == replicas
        and status.get("readyReplicas") == replicas
        and not status.get("movingBuckets")
        and kubelet.running_ordinals() == set(range(replicas))
        and len(status.get("bucketCounts") or {}) == replicas
    )


def router(
    kube: KubeEmulator,
    kubelet: GatewayKubelet,
    work: Path,
    name: str,
    *,
    extra_args: Sequence[str] = (),
) -> RouterProcess:
    """A router pod `name` of the kubelet's pool, and its process (not started).

    `extra_args` are the router flags the operator would render from the
    pool's spec (``--study-quiet-seconds``, for one).
    """
    namespace, pool = kubelet.namespace, kubelet.pool
    kube.create(
        "Pod",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/instance": pool,
                    "app.kubernetes.io/component": "router",
                    "app.kubernetes.io/name": "gatewaypool",
                    "app.kubernetes.io/managed-by": "gatewaypool-operator",
                },
            },
            "spec": {"containers": [{"name": "router", "image": "gatewaypool:test"}]},
        },
    )
    return RouterProcess(
        work / name,
        extra_args=[
            "--map-configmap",
            f"{namespace}/{pool}-map",
            "--report-configmap",
            f"{namespace}/{pool}-routers",
            "--pod-name",
            name,
            "--kubeconfig",
            str(kube.kubeconfig_path),
            *[arg for rule in kubelet.connect_to() for arg in ("--connect-to", rule)],
            *extra_args,
        ],
    )
