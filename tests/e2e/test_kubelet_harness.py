"""The kubelet harness keeps a real cluster's timing, or it would flatter the operator."""

from __future__ import annotations

import time
from pathlib import Path

import kubernetes.client

from gatewaypool_local.peers import echo, wait_until
from support.cluster import NS
from support.kubeemu import KubeEmulator
from support.kubelet import GatewayKubelet


def _statefulset(replicas: int) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "ct-gw", "namespace": NS},
        "spec": {
            "replicas": replicas,
            "serviceName": "ct-gw",
            "selector": {"matchLabels": {"app": "gw"}},
            "template": {
                "metadata": {"labels": {"app": "gw"}},
                "spec": {"containers": [{"name": "gw", "image": "gw:1"}]},
            },
        },
    }


def _ready_pods(kube: KubeEmulator) -> set[str]:
    return {
        pod["metadata"]["name"]
        for pod in kube.objects("Pod", NS)
        if any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (pod.get("status") or {}).get("conditions") or []
        )
    }


def test_pods_listen_late_become_ready_later_and_die_at_once(tmp_path: Path) -> None:
    with KubeEmulator() as kube:
        kube.create_namespace(NS)
        with GatewayKubelet(
            kube, tmp_path, namespace=NS, pool="ct", ae_title="GW", port=104, max_gateways=3
        ) as kubelet:
            apps = kubernetes.client.AppsV1Api(kube.api_client())
            asked = time.monotonic()
            apps.create_namespaced_stateful_set(NS, _statefulset(2))
            wait_until(lambda: len(kube.objects("Pod", NS)) == 2, timeout=10, what="two pods")
            # Created at once, not listening nor Ready yet.
            assert not _ready_pods(kube)
            assert echo("127.0.0.1", kubelet.ports[0], called_ae="GW", timeout=1) is None
            wait_until(lambda: kubelet.running_ordinals() == {0, 1}, timeout=30, what="listening")
            listening = time.monotonic()
            assert listening - asked >= kubelet.listen_after
            assert echo("127.0.0.1", kubelet.ports[0], called_ae="GW") == 0
            wait_until(
                lambda: _ready_pods(kube) == {"ct-gw-0", "ct-gw-1"}, timeout=10, what="Ready"
            )
            assert time.monotonic() - asked >= kubelet.listen_after + kubelet.ready_after
            wait_until(
                lambda: (
                    ((kube.get("StatefulSet", "ct-gw", NS) or {}).get("status") or {}).get(
                        "readyReplicas"
                    )
                    == 2
                ),
                timeout=10,
                what="readyReplicas 2",
            )
            apps.patch_namespaced_stateful_set("ct-gw", NS, {"spec": {"replicas": 1}})
            wait_until(lambda: kubelet.running_ordinals() == {0}, timeout=10, what="scaled in")
            assert echo("127.0.0.1", kubelet.ports[1], called_ae="GW", timeout=1) is None
            wait_until(
                lambda: {p["metadata"]["name"] for p in kube.objects("Pod", NS)} == {"ct-gw-0"},
                timeout=10,
                what="pod ct-gw-1 deleted",
            )
            assert not kubelet.errors
