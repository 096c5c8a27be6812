"""A pool scaled 3 → 5 → 2 under traffic while a gateway is down and its buckets spooled.

The routers have a spool each (``spec.router.spool``, volumes from the test
StorageClass). Studies flow to the router Service as in
``test_cluster_scaling.py``; before each scale the kubelet stand-in holds
gateway 1 down (its process killed and not restarted: connections refused,
not Ready), so the routers acknowledge its buckets' instances from their
spools. Those buckets do not move while spooled (handover rule 12), the
others do; when gateway 1 is back the routers forward what they spooled and
the pool settles. No instance may fail, go unanswered or be lost, no study
may be split, and no handover is forced.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.synth import generate_study
from support.provisioner import STORAGE_CLASS
from support.realcluster import Cluster
from support.realpool import RealPool, gateway_spec, operated_pool
from support.traffic import Traffic

POLL = 0.5
STUDIES = 5000


def spooled(pool: RealPool) -> int:
    return int((pool.status().get("spool") or {}).get("instances") or 0)


def moved_without_gateway_1(pool: RealPool, replicas: int) -> bool:
    """Growing: the newcomers own buckets. Shrinking: the leavers are gone (their buckets
    went to gateway 0, the one Ready keeper)."""
    status = pool.status()
    counts = status.get("bucketCounts") or {}
    if replicas > 3:
        return all(counts.get(f"ct-gw-{g}") for g in range(3, replicas))
    return status.get("replicas") == replicas


def test_scaling_three_five_two_while_a_gateway_is_down_and_its_buckets_spooled(
    cluster: Cluster, cluster_namespace: str, tmp_path: Path
) -> None:
    """Gateway 1 stops twice, once per scale, while studies flow: its buckets' instances
    are acknowledged from the routers' spools, stay on gateway 1's buckets (which do not
    move while spooled) and reach it when it is back; nothing fails, nothing splits."""
    spec = {
        "replicas": 3,
        "gateway": gateway_spec(),
        "router": {
            "replicas": 2,
            "spool": {"size": "256Mi", "storageClassName": STORAGE_CLASS},
        },
        "handover": {"quietSeconds": 2, "maxDrainSeconds": 300},
    }
    with operated_pool(cluster, cluster_namespace, spec) as pool:
        pool.wait_settled(3, 2, timeout=150)
        # Made as the senders take them: more than the scenario can send.
        studies = (
            generate_study(tmp_path / "data", study_index=i, instances=10, rows=16, columns=16)
            for i in range(STUDIES)
        )
        traffic = Traffic([pool.router_service()], studies, seed=0, senders=3)
        traffic.start()
        try:
            wait_until(lambda: traffic.sent_studies() >= 3, timeout=60, what="traffic flowing")
            for replicas in (5, 2):
                cluster.kubelet.hold(cluster_namespace, "ct-gw-1")
                wait_until(
                    lambda: spooled(pool) > 0, timeout=60, what="gateway 1's instances spooled"
                )
                before = traffic.sent_studies()
                pool.scale(replicas)
                # The other buckets move meanwhile; gateway 1's spooled ones wait for it.
                wait_until(
                    partial(moved_without_gateway_1, pool, replicas),
                    timeout=120,
                    what=f"buckets moved towards {replicas} gateways while gateway 1 is down",
                    interval=POLL,
                )
                cluster.kubelet.release(cluster_namespace, "ct-gw-1")
                pool.wait_settled(replicas, 2, timeout=150)
                assert traffic.sent_studies() > before, f"no study finished scaling to {replicas}"
            assert traffic.sent_studies() < STUDIES, "traffic ran out before the last scale"
        finally:
            outcome = traffic.finish()
        wait_until(lambda: spooled(pool) == 0, timeout=90, what="every spool forwarded")

    assert not outcome.failed, sorted(outcome.failed.items())[:5]
    assert not outcome.unanswered
    holders = pool.gateways_of_studies()
    stored = {sop for instances in pool.stored().values() for sop in instances}
    for study in outcome.studies:
        assert set(study.sop_instance_uids) <= outcome.acknowledged.keys()
        assert len(holders[study.study_uid]) == 1, f"study split over {holders[study.study_uid]}"
    assert outcome.acknowledged.keys() <= stored, "an acknowledged instance is on no gateway"
    used = {gateway for gateways in holders.values() for gateway in gateways}
    assert {"ct-gw-1", "ct-gw-3"} <= used
    assert "HandoverForced" not in pool.events()
