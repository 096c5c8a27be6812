"""Two operator replicas with kopf peering: one works, the other stands by."""

from __future__ import annotations

from pathlib import Path

import kubernetes.client

from gatewaypool_local.peers import wait_until
from support.cluster import GROUP, NS, PLURAL, REPO, VERSION
from support.kubeemu import KubeEmulator
from support.operatorproc import OperatorProcess


def start(kube: KubeEmulator, log: Path, priority: int) -> OperatorProcess:
    operator = OperatorProcess(
        log,
        kubeconfig=kube.kubeconfig_path,
        extra_args=["--resync", "1", "--peering", "gatewaypool", "--priority", str(priority)],
    )
    operator.start()
    return operator


def replicas(kube: KubeEmulator) -> int | None:
    statefulset = kube.get("StatefulSet", "ct-gw", NS)
    return None if statefulset is None else int(statefulset["spec"]["replicas"])


def test_the_higher_priority_replica_works_and_the_other_takes_over(tmp_path: Path) -> None:
    with KubeEmulator() as kube:
        kube.apply_crd(REPO / "crds" / "gatewaypool.io_gatewaypools.yaml")
        kube.create_namespace(NS)
        kube.create(
            "ClusterKopfPeering",
            {
                "apiVersion": "kopf.dev/v1",
                "kind": "ClusterKopfPeering",
                "metadata": {"name": "gatewaypool"},
            },
        )
        active = start(kube, tmp_path / "active.log", 100)
        standby = start(kube, tmp_path / "standby.log", 50)
        try:
            # A peered kopf starts paused and says so only when it resumes.
            wait_until(
                lambda: "Resuming operations" in (tmp_path / "active.log").read_text(),
                timeout=30,
                what="the higher priority replica works",
            )
            custom = kubernetes.client.CustomObjectsApi(kube.api_client())
            custom.create_namespaced_custom_object(
                GROUP,
                VERSION,
                NS,
                PLURAL,
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "GatewayPool",
                    "metadata": {"name": "ct", "namespace": NS},
                    "spec": {"replicas": 2, "gateway": {"image": "scp:1"}},
                },
            )
            wait_until(lambda: replicas(kube) == 2, timeout=30, what="pool created")
            standby_log = (tmp_path / "standby.log").read_text()
            assert "Resuming operations" not in standby_log, "the standby must stay paused"
            assert "Creation is processed" not in standby_log
            assert "resync:" not in standby_log, "the standby's resync must not run"

            active.stop()
            wait_until(
                lambda: "Resuming operations" in (tmp_path / "standby.log").read_text(),
                timeout=60,
                what="the standby resumes",
            )
            custom.patch_namespaced_custom_object_scale(
                GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 3}}
            )
            wait_until(lambda: replicas(kube) == 3, timeout=30, what="scaled by the standby")
        finally:
            active.stop()
            standby.stop()
