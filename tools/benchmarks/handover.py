"""Benchmark: how long a scale change takes to hand over its buckets, idle and under traffic.

    ./dev.sh bench-handover [--quiet-seconds 5] [--buckets 4096]

Runs on the real control plane (:mod:`support.realcluster`), as the
end-to-end scaling test does: the operator as the chart's Deployment, two
router pods of the operator's Deployment, one pynetdicom gateway per
StatefulSet pod. A gateway starts late and is Ready later, as in a
cluster: the scheduler binds its pod, the kubelet stand-in starts it a
second later, and it is Ready once its readiness probe passes. The pool
goes 3 -> 5 -> 3 idle, then again while senders send studies to the router
Service's ClusterIP.

For each step it prints the time from the replica change (``kubectl
scale``) to the last completed move (the first pool status, as a watch
sees it, with nothing moving and the buckets on exactly the new
gateways), the buckets moved against the theoretical minimum (what
`gatewaypool.assignment.rebalance` moves), and the forced moves. The time
is bounded below by quietSeconds (every moving bucket must be quiet that
long) plus the closing confirmation (a router report, every 2 s). It also
prints the time until the pool settled (every gateway Ready, nothing
moving, the routers confirmed, the StatefulSet at the new size: what the
emulator version of this benchmark timed), which each step waits for
before the next. It is not a test: the figures depend on the
machine. It starts a cluster of its own, so it runs in the test sandbox
(``./dev.sh`` puts it there).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewaypool.assignment import moved_buckets, rebalance
from gatewaypool.bucketmap import parse_map
from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.synth import generate_study
from support.informer import Informer
from support.realcluster import Cluster, running_cluster, session_folder
from support.realpool import RealPool, gateway_spec, operated_pool
from support.traffic import Traffic

POOL = "ct"
ROUTERS = 2
SENDERS = 4


@dataclass(frozen=True)
class Step:
    label: str
    seconds: float  # to the last completed move
    settled: float  # to the pool settled
    moved: int
    minimum: int
    forced: int


class HandoverClock:
    """When a watch of the pool first saw its handover to `replicas` gateways done."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self._lock = threading.Lock()
        self._replicas: int | None = None
        self._done_at: float | None = None
        self._informer = Informer(
            cluster.api(),
            f"/apis/{API_GROUP}/{API_VERSION}/namespaces/{namespace}/{PLURAL}",
            on_change=self._changed,
        )

    def __enter__(self) -> HandoverClock:
        self._informer.start()
        self._informer.wait_synced()
        return self

    def __exit__(self, *exc: object) -> None:
        self._informer.stop()

    def expect(self, replicas: int) -> None:
        """Clock the next handover: to `replicas` gateways."""
        with self._lock:
            self._replicas, self._done_at = replicas, None

    def done_at(self) -> float | None:
        with self._lock:
            return self._done_at

    def _changed(self, kind: str, pool: dict[str, Any]) -> None:
        if kind == "DELETED" or pool["metadata"]["name"] != POOL:
            return
        status = pool.get("status") or {}
        with self._lock:
            if self._replicas is None or self._done_at is not None:
                return
            # bucketCounts lists a joining or drained gateway too, with 0 buckets.
            owners = [n for n in (status.get("bucketCounts") or {}).values() if n]
            if not status.get("movingBuckets") and len(owners) == self._replicas:
                self._done_at = time.monotonic()


def step(pool: RealPool, clock: HandoverClock, replicas: int, *, label: str) -> Step:
    before = parse_map(pool.map_text())
    forced_before = int((pool.status().get("handovers") or {}).get("forced") or 0)
    clock.expect(replicas)
    started = time.monotonic()
    pool.scale(replicas)
    wait_until(lambda: clock.done_at() is not None, timeout=900, interval=0.1, what=label)
    done_at = clock.done_at()
    assert done_at is not None
    wait_until(
        lambda: pool.settled(replicas, ROUTERS),
        timeout=300,
        interval=0.2,
        what=f"{label}: settled",
    )
    settled = time.monotonic() - started
    after = parse_map(pool.map_text())
    moved = sum(1 for a, b in zip(before.owners, after.owners, strict=True) if a != b)
    minimum = len(moved_buckets(list(before.owners), rebalance(list(before.owners), replicas)))
    forced = int((pool.status().get("handovers") or {}).get("forced") or 0) - forced_before
    return Step(label, done_at - started, settled, moved, minimum, forced)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet-seconds", type=int, default=5)
    parser.add_argument("--buckets", type=int, default=4096)
    args = parser.parse_args()
    spec = {
        "replicas": 3,
        "buckets": args.buckets,
        "gateway": gateway_spec(),
        "router": {"replicas": ROUTERS},
        "handover": {"quietSeconds": args.quiet_seconds, "maxDrainSeconds": 600},
    }
    rows: list[Step] = []
    with (
        tempfile.TemporaryDirectory(prefix="gwp-bench-handover-") as tmp,
        running_cluster(session_folder()) as cluster,
        cluster.namespace("bench-handover") as namespace,
    ):
        studies = [
            generate_study(Path(tmp) / "data", study_index=i, instances=20, rows=16, columns=16)
            for i in range(400)
        ]
        try:
            with (
                operated_pool(cluster, namespace, spec, name=POOL) as pool,
                HandoverClock(cluster, namespace) as clock,
            ):
                wait_until(
                    lambda: pool.settled(3, ROUTERS),
                    timeout=180,
                    interval=0.2,
                    what="three gateways and two routers",
                )
                rows.append(step(pool, clock, 5, label="3 -> 5, idle"))
                rows.append(step(pool, clock, 3, label="5 -> 3, idle"))
                traffic = Traffic([pool.router_service()], studies, seed=0, senders=SENDERS)
                traffic.start()
                wait_until(lambda: traffic.sent_studies() >= 5, timeout=60, what="traffic")
                rows.append(step(pool, clock, 5, label="3 -> 5, under traffic"))
                rows.append(step(pool, clock, 3, label="5 -> 3, under traffic"))
                outcome = traffic.finish()
        except BaseException:
            cluster.print_pod_logs(namespace, lines=40)
            raise
    print(f"\nhandover benchmark: {args.buckets} buckets, quietSeconds {args.quiet_seconds}")
    print(f"{'step':<26}{'seconds':>9}{'settled':>9}{'moved':>8}{'minimum':>9}{'forced':>8}")
    for r in rows:
        print(
            f"{r.label:<26}{r.seconds:>9.1f}{r.settled:>9.1f}{r.moved:>8}{r.minimum:>9}{r.forced:>8}"
        )
    print(
        f"traffic: {len(outcome.studies)} studies, {len(outcome.acknowledged)} instances "
        f"acknowledged, {len(outcome.failed)} failed, {outcome.retries} retried"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
