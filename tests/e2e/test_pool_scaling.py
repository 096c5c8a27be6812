"""Operator, router and gateways together: a pool scaled from 3 to 5 under traffic.

The Kubernetes API is the emulator; the operator and the router are real
processes; the kubelet harness runs one real DICOM gateway (a pynetdicom
SCP) per StatefulSet pod with a real cluster's delays (listening 1.5 s after
the pod is asked for, Ready 0.5 s later). Studies keep flowing, each over
several associations, while the pool scales: the new gateways receive
buckets only once Ready, each moving bucket changes gateway only once
quiet, and no study is split.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from gatewaypool.bucketmap import parse_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.peers import wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import generate_study
from support.cluster import GROUP, NS, PLURAL, VERSION
from support.kubeemu import KubeEmulator
from support.pool import operated_pool, pool_status, settled
from support.pool import router as start_router
from support.traffic import Traffic


def test_scale_from_three_to_five_under_traffic(kube: KubeEmulator, tmp_path: Path) -> None:
    studies = [
        generate_study(tmp_path / "data", study_index=i, instances=20, rows=16, columns=16)
        for i in range(240)
    ]
    router: RouterProcess | None = None
    with operated_pool(
        kube,
        tmp_path,
        replicas=3,
        max_gateways=5,
        quiet_seconds=2,
        max_drain_seconds=60,
        resync=5,
    ) as pool:
        kubelet, custom = pool.kubelet, pool.api
        try:
            router = start_router(kube, kubelet, tmp_path, "ct-router-0")
            router.start()
            first = router.metric("gatewaypool_router_map_version")
            assert first >= 1

            traffic = Traffic([router], studies, seed=0, senders=3)
            traffic.start()
            wait_until(lambda: traffic.sent_studies() >= 5, timeout=60, what="traffic flowing")
            # kubectl scale gwp/ct --replicas=5
            custom.patch_namespaced_custom_object_scale(
                GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 5}}
            )
            wait_until(lambda: settled(kube, kubelet, 5), timeout=90, what="settled at five")
            assert traffic.sent_studies() < len(studies), "traffic ran out before the scale ended"
            final = parse_map(kube.get("ConfigMap", "ct-map", NS)["data"]["map.json"])  # type: ignore[index]
            wait_until(
                lambda: router.metric("gatewaypool_router_map_version") == final.version,
                timeout=10,
                what="the router on the final map",
            )
            wait_until(
                lambda: (
                    pool_status(kube, kubelet).get("routers") == "1/1"
                    and pool_status(kube, kubelet).get("mapVersion") == final.version
                ),
                timeout=30,
                what="status: the router on the final version",
            )
            outcome = traffic.finish()
            # Studies sent once the scale is over land where the final map says.
            after = Traffic([router], studies[-6:], seed=1, senders=2)
            after.start()
            late = after.finish(drain=True)
            held: dict[str, set[int]] = defaultdict(set)
            holders: set[str] = set()
            for ordinal, sink in kubelet.gateways.items():
                for item in sink.received():
                    held[item.study_uid].add(ordinal)
                    holders.add(item.sop_instance_uid)
            events = [e.get("reason") for e in kube.objects("v1/events", NS)]
        finally:
            if router is not None:
                router.stop()

    assert not outcome.failed, sorted(outcome.failed.items())[:5]
    assert not outcome.unanswered
    assert outcome.studies[-1] not in studies[-6:], "the late studies were sent before"
    for study in outcome.studies:
        assert set(study.sop_instance_uids) <= outcome.acknowledged.keys()
        assert len(held[study.study_uid]) == 1, (
            f"study split over {held[study.study_uid]}, "
            f"longest pause {traffic.longest_pause(study):.1f} s"
        )
    assert outcome.acknowledged.keys() <= holders
    assert not late.failed and len(late.studies) == 6
    for study in late.studies:
        [ordinal] = held[study.study_uid]
        owner = final.gateway_for(study_bucket(study.study_uid, final.buckets))
        assert owner.name == f"ct-gw-{ordinal}"
    assert {o for indexes in held.values() for o in indexes} >= {3, 4}, "no study on a newcomer"
    assert "HandoverStarted" in events and "HandoverCompleted" in events
