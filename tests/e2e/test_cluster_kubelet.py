"""The kubelet stand-in keeps a real cluster's timing, or it would flatter the operator.

The real StatefulSet controller and scheduler make and bind the pods; the
stand-in (:mod:`support.nodes`) starts each container `start_after` seconds
after binding, reports the pod Ready only when its readiness probe passes,
and stops the process as soon as the pod is deleted.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import kubernetes.client

from gatewaypool_local.peers.gateway import echo
from gatewaypool_local.peers.process import wait_until
from support.realcluster import Cluster

#: Seconds between two looks at the server (the kubelet stand-in runs in this process).
POLL_SECONDS = 0.2
#: The container starts, and listens only this much later: Ready must wait for it.
LISTENS_AFTER = 4


def _statefulset(replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "gw"},
        "spec": {
            "replicas": replicas,
            "serviceName": "gw",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "gw"}},
            "template": {
                "metadata": {"labels": {"app": "gw"}},
                "spec": {
                    "terminationGracePeriodSeconds": 30,
                    "containers": [
                        {
                            "name": "gw",
                            "image": "registry.example.org/test/busybox:1",
                            "command": [
                                "sh",
                                "-c",
                                f"sleep {LISTENS_AFTER}; exec storescp --aetitle GW 104",
                            ],
                            "ports": [{"name": "dicom", "containerPort": 104}],
                            "readinessProbe": {"tcpSocket": {"port": "dicom"}, "periodSeconds": 1},
                        }
                    ],
                },
            },
        },
    }


def _time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _status(pod: dict[str, Any]) -> tuple[bool, bool]:
    """Whether the pod's container is running, and whether the pod is Ready."""
    status = pod.get("status") or {}
    running = any(
        "running" in (c.get("state") or {}) for c in status.get("containerStatuses") or []
    )
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []
    )
    return running, ready


def test_pods_listen_late_become_ready_later_and_die_at_once(
    cluster: Cluster, cluster_namespace: str
) -> None:
    apps: Any = kubernetes.client.AppsV1Api(cluster.api())
    asked = time.monotonic()
    apps.create_namespaced_stateful_set(cluster_namespace, _statefulset(2))

    def pods() -> dict[str, dict[str, Any]]:
        return {p["metadata"]["name"]: p for p in cluster.pods(cluster_namespace, "app=gw")}

    wait_until(lambda: len(pods()) == 2, timeout=30, what="two pods", interval=POLL_SECONDS)
    # Created at once, neither running nor Ready yet.
    assert not any(any(_status(p)) for p in pods().values())
    wait_until(
        lambda: all(_status(p)[0] for p in pods().values()),
        timeout=30,
        what="containers running",
        interval=POLL_SECONDS,
    )
    assert time.monotonic() - asked >= cluster.kubelet.start_after
    addresses = {name: p["status"]["podIP"] for name, p in pods().items()}
    wait_until(
        lambda: all(_status(p)[1] for p in pods().values()),
        timeout=30,
        what="both Ready",
        interval=POLL_SECONDS,
    )
    # Running but not listening yet: not Ready until the probe passes.
    for name, pod in pods().items():
        [container] = pod["status"]["containerStatuses"]
        started = _time(container["state"]["running"]["startedAt"])
        [ready] = [c for c in pod["status"]["conditions"] if c["type"] == "Ready"]
        # The API's times are whole seconds.
        assert _time(ready["lastTransitionTime"]) - started >= LISTENS_AFTER - 1, name
    for address in addresses.values():
        assert echo(address, 104, called_ae="GW") == 0
    wait_until(
        lambda: (
            (apps.read_namespaced_stateful_set("gw", cluster_namespace).status.ready_replicas) == 2
        ),
        timeout=30,
        what="readyReplicas 2",
        interval=POLL_SECONDS,
    )

    apps.patch_namespaced_stateful_set("gw", cluster_namespace, {"spec": {"replicas": 1}})
    # storescp stops on SIGTERM: the pod goes long before its 30 s of grace.
    deleted = time.monotonic()
    wait_until(
        lambda: sorted(pods()) == ["gw-0"],
        timeout=20,
        what="pod gw-1 deleted",
        interval=POLL_SECONDS,
    )
    assert time.monotonic() - deleted < 15
    assert echo(addresses["gw-1"], 104, called_ae="GW", timeout=1) is None
    assert echo(addresses["gw-0"], 104, called_ae="GW") == 0
