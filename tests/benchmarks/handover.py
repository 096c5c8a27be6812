"""Benchmark: how long a scale change takes to hand over its buckets, idle and under traffic.

    ./dev.sh bench-handover [--quiet-seconds 5] [--buckets 4096]

Runs the real operator and two real routers against the API emulator, with
the kubelet harness playing the cluster (a gateway listens 1.5 s after its
pod is asked for, is Ready 0.5 s later). For each step it prints the time
from the replica change to the last completed move, the buckets moved
against the theoretical minimum (what `gatewaypool.assignment.rebalance`
moves), and the forced moves. The time is bounded below by quietSeconds
(every moving bucket must be quiet that long) plus the closing
confirmation (a router report, every 2 s); it is not a test.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import kubernetes.client

from gatewaypool.assignment import moved_buckets, rebalance
from gatewaypool.bucketmap import BucketMap, parse_map
from gatewaypool_local.peers import wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import generate_study
from support.cluster import GROUP, NS, PLURAL, VERSION
from support.kubeemu import KubeEmulator
from support.kubelet import GatewayKubelet
from support.operatorproc import OperatorProcess
from support.pool import pool_status, settled
from support.pool import router as start_router
from support.traffic import Traffic

REPO = Path(__file__).resolve().parents[2]


def published(kube: KubeEmulator) -> BucketMap:
    return parse_map(kube.get("ConfigMap", "ct-map", NS)["data"]["map.json"])  # type: ignore[index]


def step(
    kube: KubeEmulator, kubelet: GatewayKubelet, replicas: int, *, label: str
) -> tuple[str, float, int, int, int]:
    before = published(kube)
    forced_before = int((pool_status(kube, kubelet).get("handovers") or {}).get("forced") or 0)
    started = time.monotonic()
    kubernetes.client.CustomObjectsApi(kube.api_client()).patch_namespaced_custom_object_scale(
        GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": replicas}}
    )
    wait_until(lambda: settled(kube, kubelet, replicas), timeout=900, what=label)
    seconds = time.monotonic() - started
    after = published(kube)
    moved = sum(1 for a, b in zip(before.owners, after.owners, strict=True) if a != b)
    minimum = len(moved_buckets(list(before.owners), rebalance(list(before.owners), replicas)))
    handovers = pool_status(kube, kubelet).get("handovers") or {}
    forced = int(handovers.get("forced") or 0) - forced_before
    return label, seconds, moved, minimum, forced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet-seconds", type=int, default=5)
    parser.add_argument("--buckets", type=int, default=4096)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gwp-bench-handover-") as tmp, KubeEmulator() as kube:
        work = Path(tmp)
        kube.apply_crd(REPO / "crds" / "gatewaypool.io_gatewaypools.yaml")
        kube.create_namespace(NS)
        kubelet = GatewayKubelet(
            kube, work, namespace=NS, pool="ct", ae_title="GW", port=104, max_gateways=5
        )
        operator = OperatorProcess(
            work / "operator.log", kubeconfig=kube.kubeconfig_path, extra_args=["--resync", "5"]
        )
        routers: list[RouterProcess] = []
        operator.start()
        kubelet.start()
        try:
            kubernetes.client.CustomObjectsApi(kube.api_client()).create_namespaced_custom_object(
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
                        "buckets": args.buckets,
                        "gateway": {"image": "gw:1", "aeTitle": "GW"},
                        "handover": {"quietSeconds": args.quiet_seconds, "maxDrainSeconds": 600},
                    },
                },
            )
            wait_until(lambda: settled(kube, kubelet, 3), timeout=120, what="three gateways")
            for i in range(2):
                name = f"ct-router-{i}"
                router = start_router(kube, kubelet, work, name)
                router.start()
                routers.append(router)
            rows.append(step(kube, kubelet, 5, label="3 -> 5, idle"))
            rows.append(step(kube, kubelet, 3, label="5 -> 3, idle"))
            studies = [
                generate_study(work / "data", study_index=i, instances=20, rows=16, columns=16)
                for i in range(400)
            ]
            traffic = Traffic(routers, studies, seed=0, senders=4)
            traffic.start()
            rows.append(step(kube, kubelet, 5, label="3 -> 5, under traffic"))
            rows.append(step(kube, kubelet, 3, label="5 -> 3, under traffic"))
            outcome = traffic.finish()
        finally:
            for router in routers:
                router.stop()
            kubelet.stop()
            operator.stop()
    print(f"\nhandover benchmark: {args.buckets} buckets, quietSeconds {args.quiet_seconds}")
    print(f"{'step':<26}{'seconds':>9}{'moved':>8}{'minimum':>9}{'forced':>8}")
    for label, seconds, moved, minimum, forced in rows:
        print(f"{label:<26}{seconds:>9.1f}{moved:>8}{minimum:>9}{forced:>8}")
    print(
        f"traffic: {len(outcome.studies)} studies, {len(outcome.acknowledged)} instances "
        f"acknowledged, {len(outcome.failed)} failed, {outcome.retries} retried"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
