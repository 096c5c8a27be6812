"""Operator, router and gateways together: a pool scaled from 3 to 5 under traffic.

The Kubernetes API is the emulator; the operator and the router are real
processes; the test plays kubelet: one real DICOM gateway (a pynetdicom SCP)
per StatefulSet replica on loopback, with readiness written back into the
StatefulSet's status. The router reaches the map's cluster DNS names through
its own ``--connect-to`` rules.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest

from gatewaypool.bucketmap import parse_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.kubeemu import KubeEmulator
from gatewaypool_local.operatorproc import OperatorProcess
from gatewaypool_local.peers import PynetdicomSink, free_port, storescu, wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, generate_study

REPO = Path(__file__).resolve().parents[2]
NS = "radiology"
GROUP, VERSION, PLURAL = "gatewaypool.io", "v1alpha1", "gatewaypools"
MAX_GATEWAYS = 5
GATEWAY_PORT = 104


class Kubelet:
    """Runs one gateway process per StatefulSet replica and reports readiness."""

    def __init__(self, kube: KubeEmulator, work: Path, ports: list[int]) -> None:
        self.kube = kube
        self.work = work
        self.ports = ports
        self.gateways: dict[int, PynetdicomSink] = {}

    def sync(self) -> int:
        statefulset = self.kube.get("StatefulSet", "ct-gw", NS)
        if statefulset is None:
            return 0
        wanted = int(statefulset["spec"]["replicas"])
        for ordinal in range(wanted):
            if ordinal not in self.gateways:
                sink = PynetdicomSink(
                    self.work / f"ct-gw-{ordinal}", ae_title="TRIAGE", port=self.ports[ordinal]
                )
                sink.start()
                self.gateways[ordinal] = sink
        for ordinal in [o for o in self.gateways if o >= wanted]:
            self.gateways.pop(ordinal).stop()
        self.kube.write_status(
            "apps",
            "v1",
            "statefulsets",
            NS,
            "ct-gw",
            status={"replicas": wanted, "readyReplicas": wanted, "currentReplicas": wanted},
        )
        return wanted

    def stop(self) -> None:
        for sink in self.gateways.values():
            sink.stop()


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator() as emulator:
        emulator.apply_crd(REPO / "crds" / "gatewaypool.io_gatewaypools.yaml")
        emulator.create_namespace(NS)
        yield emulator


def published_version(kube: KubeEmulator) -> int:
    configmap = kube.get("ConfigMap", "ct-map", NS)
    text = ((configmap or {}).get("data") or {}).get("map.json")
    return parse_map(text).version if text else 0


def send(router: RouterProcess, studies: list[Study], calling_ae: str) -> None:
    files = [path for study in studies for path in study.files]
    result = storescu(
        router.host, router.port, files, calling_ae=calling_ae, called_ae=router.ae_title
    )
    assert result.returncode == 0, result.stderr[-2000:]


def holders(kubelet: Kubelet) -> dict[str, dict[int, int]]:
    """StudyInstanceUID -> {gateway ordinal: instances held}."""
    found: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for ordinal, sink in kubelet.gateways.items():
        for item in sink.received():
            found[item.study_uid][ordinal] += 1
    return found


def test_scale_from_three_to_five_under_traffic(kube: KubeEmulator, tmp_path: Path) -> None:
    ports = [free_port() for _ in range(MAX_GATEWAYS)]
    kubelet = Kubelet(kube, tmp_path, ports)
    operator = OperatorProcess(
        tmp_path / "operator.log", kubeconfig=kube.kubeconfig_path, extra_args=["--resync", "1"]
    )
    operator.start()
    router: RouterProcess | None = None
    try:
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
                "spec": {
                    "replicas": 3,
                    "gateway": {"image": "triage:1", "aeTitle": "TRIAGE", "port": GATEWAY_PORT},
                },
            },
        )
        wait_until(lambda: kubelet.sync() == 3, timeout=30, what="three gateways running")
        wait_until(lambda: published_version(kube) == 1, timeout=30, what="map version 1")

        # The router pod, as the Deployment would run it.
        kube.create(
            "Pod",
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": "ct-router-0",
                    "namespace": NS,
                    "labels": {
                        "app.kubernetes.io/instance": "ct",
                        "app.kubernetes.io/component": "router",
                        "app.kubernetes.io/name": "gatewaypool",
                        "app.kubernetes.io/managed-by": "gatewaypool-operator",
                    },
                },
                "spec": {"containers": [{"name": "router", "image": "gatewaypool:test"}]},
            },
        )
        connect_to = [
            f"ct-gw-{i}.ct-gw.{NS}.svc.cluster.local:{GATEWAY_PORT}:127.0.0.1:{ports[i]}"
            for i in range(MAX_GATEWAYS)
        ]
        router = RouterProcess(
            tmp_path / "router",
            extra_args=[
                "--map-configmap",
                f"{NS}/ct-map",
                "--report-configmap",
                f"{NS}/ct-routers",
                "--pod-name",
                "ct-router-0",
                "--kubeconfig",
                str(kube.kubeconfig_path),
                *[arg for rule in connect_to for arg in ("--connect-to", rule)],
            ],
        )
        router.start()
        assert router.metric("gatewaypool_router_map_version") == 1

        first = [
            generate_study(tmp_path / "data", study_index=i, instances=10, rows=32, columns=32)
            for i in range(6)
        ]
        send(router, first[:3], "CT1")
        send(router, first[3:], "CT2")

        # kubectl scale gwp/ct --replicas=5
        custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 5}}
        )
        written = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and written is None:
            if published_version(kube) == 2:
                written = time.monotonic()
        assert written is not None, "the operator did not publish map version 2"
        wait_until(
            lambda: router.metric("gatewaypool_router_map_version") == 2,
            timeout=10,
            what="router on map version 2",
        )
        assert time.monotonic() - written < 2.0
        wait_until(lambda: kubelet.sync() == 5, timeout=30, what="five gateways running")

        second = [
            generate_study(tmp_path / "data", study_index=i, instances=10, rows=32, columns=32)
            for i in range(6, 14)
        ]
        send(router, second[:4], "CT1")
        send(router, second[4:], "CT3")

        new_map = parse_map(kube.get("ConfigMap", "ct-map", NS)["data"]["map.json"])  # type: ignore[index]
        found = holders(kubelet)
        for study in first + second:
            where = found[study.study_uid]
            assert len(where) == 1, f"study split over gateways {dict(where)}"
            assert sum(where.values()) == 10, "instances lost"
        for study in second:
            [ordinal] = found[study.study_uid]
            owner = new_map.gateway_for(study_bucket(study.study_uid, new_map.buckets))
            assert owner.name == f"ct-gw-{ordinal}"
        assert {o for s in second for o in found[s.study_uid]} & {3, 4}, "no study on a newcomer"

        # The router told the operator which version it runs; status shows it.
        def in_sync() -> bool:
            status: dict[str, Any] = (kube.get("GatewayPool", "ct", NS) or {}).get("status") or {}
            return status.get("mapVersion") == 2 and status.get("routers") == "1/1"

        wait_until(in_sync, timeout=30, what="status routers 1/1 on version 2")
    finally:
        if router is not None:
            router.stop()
        kubelet.stop()
        operator.stop()
