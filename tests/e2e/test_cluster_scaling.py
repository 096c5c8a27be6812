"""A pool scaled 3 → 5 → 2 → 4 under traffic, with two routers, on the real control plane.

Everything a hospital's cluster would run is real or plays its part with
real timing: the API server, the StatefulSet, Deployment and EndpointSlice
controllers, the scheduler, the operator as the chart's Deployment under
its own ServiceAccount, two router pods of the operator's Deployment, and
one pynetdicom gateway per StatefulSet pod (the kubelet stand-in starts
each a second after binding; it is Ready only when its probe passes).
Studies flow to the router Service's ClusterIP through every scale, each
over several associations, while ``kubectl scale`` moves the pool: no
instance may fail, go unanswered or be lost, and no study may be split
(one whose sender went silent for longer than ``quietSeconds``, a retry's
pause, was complete by the README's definition, and may go on elsewhere).
"""

from __future__ import annotations

from pathlib import Path

from gatewaypool.bucketmap import parse_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.synth import generate_study
from support.realcluster import Cluster
from support.realpool import gateway_spec, operated_pool
from support.traffic import Traffic, assert_whole_or_resumed

ROUTERS = 2
QUIET_SECONDS = 2


def test_scale_three_five_two_four_under_traffic(
    cluster: Cluster, cluster_namespace: str, tmp_path: Path
) -> None:
    with operated_pool(
        cluster,
        cluster_namespace,
        {
            "replicas": 3,
            "gateway": gateway_spec(),
            "router": {"replicas": ROUTERS},
            "handover": {"quietSeconds": QUIET_SECONDS, "maxDrainSeconds": 60},
        },
    ) as pool:
        pool.wait_settled(3, ROUTERS, timeout=120)
        studies = [
            generate_study(tmp_path / "data", study_index=i, instances=20, rows=16, columns=16)
            for i in range(400)
        ]
        traffic = Traffic([pool.router_service()], studies, seed=0, senders=3)
        traffic.start()
        wait_until(lambda: traffic.sent_studies() >= 5, timeout=60, what="traffic flowing")
        for replicas in (5, 2, 4):
            before = traffic.sent_studies()
            pool.scale(replicas)
            pool.wait_settled(replicas, ROUTERS, timeout=180)
            assert traffic.sent_studies() > before, f"no study finished while scaling to {replicas}"
        assert traffic.sent_studies() < len(studies), "traffic ran out before the last scale"
        outcome = traffic.finish()
        final = parse_map(pool.map_text())
        late = Traffic([pool.router_service()], studies[-6:], seed=1, senders=2)
        late.start()
        after = late.finish(drain=True)

    assert not outcome.failed, sorted(outcome.failed.items())[:5]
    assert not outcome.unanswered
    assert outcome.studies[-1] not in studies[-6:], "the late studies were sent before"
    holders = pool.gateways_of_studies()
    stored = {sop for instances in pool.stored().values() for sop in instances}
    for study in outcome.studies:
        assert set(study.sop_instance_uids) <= outcome.acknowledged.keys()
    assert_whole_or_resumed(traffic, outcome.studies, holders, quiet_seconds=QUIET_SECONDS)
    assert outcome.acknowledged.keys() <= stored, "an acknowledged instance is on no gateway"
    assert not after.failed and len(after.studies) == 6
    for study in after.studies:
        [gateway] = holders[study.study_uid]
        owner = final.gateway_for(study_bucket(study.study_uid, final.buckets))
        assert owner.name == gateway
    used = {gateway for gateways in holders.values() for gateway in gateways}
    assert {"ct-gw-3", "ct-gw-4"} <= used, "no study on a newcomer"
    events = pool.events()
    assert "HandoverStarted" in events and "HandoverCompleted" in events
    assert "HandoverForced" not in events
