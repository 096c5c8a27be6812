"""Chaos on the real control plane: a pool scaled 2 → 5 → 1 → 3 under traffic, a router killed.

The operator runs as the chart's Deployment, the two routers as its
Deployment's pods, the gateways as the StatefulSet's, all under the real
controllers and scheduler, with the kubelet stand-in's timing (a container
starts a second after its pod is bound, is Ready when its probe passes, and
a crashed one is restarted after the kubelet's back-off). Senders keep
sending studies to the router Service, each over several associations, while
the pool is scaled through the scale subresource; in the middle of the
second handover one router's process dies (SIGKILL), and the kubelet starts
it again.

Asserted: no study split across gateways (but for one whose sender went
silent for longer than ``quietSeconds``, a retry's pause: complete by the
README's definition, and at most a tenth of them), no instance answered with a
failure, every instance acknowledged (senders retry what got no answer, as
modalities do) and every acknowledged instance held by a gateway, and every
handover completed or forced and recorded alike in the pool's status, its
Events and the operator's metrics.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.synth import generate_study
from support.realcluster import Cluster
from support.realpool import RealPool, gateway_spec, operated_pool
from support.traffic import Traffic, assert_whole_or_resumed

STUDIES = 300
MIN_STUDIES = 30
INSTANCES = 40
QUIET_SECONDS = 2
MAX_DRAIN_SECONDS = 60
ROUTERS = 2
#: One seed in the suite; more with GATEWAYPOOL_CHAOS_SEEDS=1,2,3.
SEEDS = [int(seed) for seed in os.environ.get("GATEWAYPOOL_CHAOS_SEEDS", "1").split(",")]


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_scale_2_5_1_3_with_a_router_killed_under_traffic(
    cluster: Cluster, cluster_namespace: str, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    order = list(range(STUDIES))
    rng.shuffle(order)
    # Made as the senders need them: a run sends far fewer than STUDIES.
    studies = (
        generate_study(
            tmp_path / "data", study_index=i, instances=INSTANCES, rows=16, columns=16, seed=seed
        )
        for i in order
    )
    with operated_pool(
        cluster,
        cluster_namespace,
        {
            "replicas": 2,
            "gateway": gateway_spec(),
            "router": {"replicas": ROUTERS},
            "handover": {
                "quietSeconds": QUIET_SECONDS,
                "maxDrainSeconds": MAX_DRAIN_SECONDS,
            },
        },
    ) as pool:
        pool.wait_settled(2, ROUTERS, timeout=120)
        traffic = Traffic([pool.router_service()], studies, seed=seed, senders=3)
        traffic.start()
        wait_until(lambda: traffic.sent_studies() >= 3, timeout=60, what="traffic flowing")
        for step, replicas in enumerate([5, 1, 3]):
            pool.scale(replicas)
            if step == 1:
                # Mid-handover: one router's process dies at once; the kubelet restarts it.
                wait_until(
                    lambda: bool(pool.status().get("movingBuckets")),
                    timeout=30,
                    what="buckets moving",
                )
                victim = sorted(pool.router_addresses())[rng.randrange(ROUTERS)]
                cluster.kubelet.crash(cluster_namespace, victim)
            pool.wait_settled(replicas, ROUTERS, timeout=MAX_DRAIN_SECONDS + 90)
            assert traffic.sent_studies() < STUDIES, "traffic ran out before the scale ended"
        wait_until(
            lambda: traffic.sent_studies() >= MIN_STUDIES, timeout=120, what="enough studies"
        )
        outcome = traffic.finish()
        status = pool.status()
        events = pool.events()
        operator = pool.operator_address()
        metrics = {
            result: RealPool.metric(
                operator,
                "gatewaypool_operator_handovers_total",
                port=8082,
                labels={"namespace": cluster_namespace, "pool": "ct", "result": result},
            )
            for result in ("completed", "forced")
        }
        restarts = cluster.kubelet.pod(cluster_namespace, victim)

    assert not cluster.kubelet.errors, cluster.kubelet.errors[-5:]
    assert restarts is not None and restarts.containers["router"].restarts == 1
    assert not outcome.failed, f"failed instances: {sorted(outcome.failed.items())[:5]}"
    assert not outcome.unanswered
    assert len(outcome.studies) >= MIN_STUDIES
    holders = pool.gateways_of_studies()
    stored = {sop for instances in pool.stored().values() for sop in instances}
    for study in outcome.studies:
        assert set(study.sop_instance_uids) <= outcome.acknowledged.keys()
    assert_whole_or_resumed(traffic, outcome.studies, holders, quiet_seconds=QUIET_SECONDS)
    assert outcome.acknowledged.keys() <= stored, "acknowledged but not held"
    handovers = status.get("handovers") or {}
    assert handovers.get("completed", 0) + handovers.get("forced", 0) > 0
    assert "HandoverStarted" in events
    assert "HandoverCompleted" in events
    assert metrics == {
        "completed": handovers.get("completed", 0),
        "forced": handovers.get("forced", 0),
    }
    assert (events.count("HandoverForced") > 0) == (handovers.get("forced", 0) > 0)
