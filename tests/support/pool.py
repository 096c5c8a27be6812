"""A pool's routers and settledness, as the end-to-end tests and the benchmark see them.

Routers run as processes of their own; each gets the Pod object its
Deployment would make (the operator counts router pods and waits for their
reports) and the ``--connect-to`` rules that reach the kubelet's gateways.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client

from gatewaypool_local.peers import wait_until
from gatewaypool_local.routerproc import RouterProcess
from support.cluster import GROUP, NS, PLURAL, VERSION, custom
from support.kubeemu import KubeEmulator
from support.kubelet import GatewayKubelet
from support.operatorproc import OperatorProcess

POOL = "ct"
GATEWAY_PORT = 104
GATEWAY_AE = "TRIAGE"


@dataclass(frozen=True)
class OperatedPool:
    """What `operated_pool` started, and an API client for the pool."""

    operator: OperatorProcess
    kubelet: GatewayKubelet
    api: kubernetes.client.CustomObjectsApi


@contextmanager
def operated(
    kube: KubeEmulator,
    work: Path,
    *,
    spec: Mapping[str, Any],
    max_gateways: int,
    resync: float,
) -> Iterator[OperatedPool]:
    """The operator and the kubelet running, pool `POOL` created with `spec`.

    Yields as soon as the pool is created, before anything of it runs, so
    that a caller can start what must be there while it settles (routers).
    Stops the operator and the kubelet on the way out, after whatever the
    caller started inside.
    """
    operator = OperatorProcess(
        work / "operator.log",
        kubeconfig=kube.kubeconfig_path,
        extra_args=["--resync", str(resync)],
    )
    kubelet = GatewayKubelet(
        kube,
        work,
        namespace=NS,
        pool=POOL,
        ae_title=GATEWAY_AE,
        port=GATEWAY_PORT,
        max_gateways=max_gateways,
    )
    api = custom(kube)
    with ExitStack() as stack:
        for part in (operator, kubelet):
            part.start()
            stack.callback(part.stop)
        api.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NS,
            PLURAL,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "GatewayPool",
                "metadata": {"name": POOL, "namespace": NS},
                "spec": dict(spec),
            },
        )
        yield OperatedPool(operator, kubelet, api)


def pool_spec(*, replicas: int, quiet_seconds: int, max_drain_seconds: int) -> dict[str, Any]:
    """The spec of a pool of `replicas` gateways the kubelet harness runs."""
    return {
        "replicas": replicas,
        "gateway": {"image": "triage:1", "aeTitle": GATEWAY_AE, "port": GATEWAY_PORT},
        "handover": {"quietSeconds": quiet_seconds, "maxDrainSeconds": max_drain_seconds},
    }


@contextmanager
def operated_pool(
    kube: KubeEmulator,
    work: Path,
    *,
    replicas: int,
    max_gateways: int,
    quiet_seconds: int,
    max_drain_seconds: int,
    resync: float,
) -> Iterator[OperatedPool]:
    """The operator and the kubelet running, pool `POOL` made and settled at `replicas`."""
    spec = pool_spec(
        replicas=replicas, quiet_seconds=quiet_seconds, max_drain_seconds=max_drain_seconds
    )
    with operated(kube, work, spec=spec, max_gateways=max_gateways, resync=resync) as pool:
        wait_until(
            lambda: settled(kube, pool.kubelet, replicas),
            timeout=60,
            what=f"{replicas} gateways ready",
        )
        yield pool


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
