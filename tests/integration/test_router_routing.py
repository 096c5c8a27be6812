"""The router in front of three real gateways of three kinds.

DCMTK storescu sends; DCMTK storescp, Orthanc and a pynetdicom SCP receive.
Every study must land whole on the one gateway its bucket names, every
instance must arrive, byte for byte as sent.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from gatewaypool.bucketmap import Gateway as MapGateway
from gatewaypool.bucketmap import balanced_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.peers.dcmtk import StoreSCP, echoscu, storescu
from gatewaypool_local.peers.orthanc import Orthanc
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_bytes

RouterFactory = Callable[..., RouterProcess]
StudyFactory = Callable[..., list[Study]]


def test_echo_is_answered_by_the_router(
    start_router: RouterFactory, pynetdicom_gateway: PynetdicomSink
) -> None:
    router = start_router([pynetdicom_gateway])
    result = echoscu(router.host, router.port, called_ae=router.ae_title)
    assert result.returncode == 0, result.stderr
    assert router.wait_events("association.released")


def test_studies_over_several_associations_land_whole_and_identical(
    start_router: RouterFactory,
    storescp_gateway: StoreSCP,
    orthanc_gateway: Orthanc,
    pynetdicom_gateway: PynetdicomSink,
    ct_studies: StudyFactory,
) -> None:
    gateways = [storescp_gateway, orthanc_gateway, pynetdicom_gateway]
    router = start_router(gateways)
    studies = ct_studies(12, instances=50)

    # Four concurrent associations: study 0 split over the first two, the
    # others dealt round robin so each association carries several studies.
    plan: list[list[Path]] = [[], [], [], []]
    plan[0] += studies[0].files[:25]
    plan[1] += studies[0].files[25:]
    for index, study in enumerate(studies[1:]):
        plan[index % 4] += study.files
    assert all(len({f.parent for f in files}) >= 1 for files in plan)
    outcomes: list[int] = []

    def send(files: list[Path], index: int) -> None:
        result = storescu(
            router.host, router.port, files, calling_ae=f"CT{index}", called_ae=router.ae_title
        )
        outcomes.append(result.returncode)

    threads = [threading.Thread(target=send, args=(files, i)) for i, files in enumerate(plan)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [0, 0, 0, 0]

    total = sum(len(s.files) for s in studies)
    names = ["gw-0", "gw-1", "gw-2"]
    expected_map = balanced_map(
        [
            MapGateway(name=n, host=g.host, port=g.port, ae_title=g.ae_title)
            for n, g in zip(names, gateways, strict=True)
        ]
    )
    sent = {
        sop: hashlib.sha256(dataset_bytes(path)).hexdigest()
        for study in studies
        for sop, path in zip(study.sop_instance_uids, study.files, strict=True)
    }
    holders: dict[str, set[str]] = defaultdict(set)
    received: dict[str, str] = {}
    for name, gateway in zip(names, gateways, strict=True):
        gateway.wait_for_count(
            sum(
                len(s.files)
                for s in studies
                if expected_map.gateway_for(study_bucket(s.study_uid, 4096)).name == name
            ),
            timeout=30,
        )
        for item in gateway.received():
            holders[item.study_uid].add(name)
            assert item.sop_instance_uid not in received, f"instance delivered twice: {name} {item}"
            received[item.sop_instance_uid] = item.dataset_sha256()

    assert len(received) == total
    assert received == sent, "a delivered data set differs from the sent file's data set"
    for study in studies:
        expected = expected_map.gateway_for(study_bucket(study.study_uid, 4096)).name
        assert holders[study.study_uid] == {expected}, f"study split or misrouted: {study}"
    # The seed spreads the twelve studies over all three gateways.
    assert set().union(*holders.values()) == set(names)
    assert router.metric(
        "gatewaypool_router_instances_total", gateway="gw-0", outcome="success"
    ) + router.metric(
        "gatewaypool_router_instances_total", gateway="gw-1", outcome="success"
    ) + router.metric("gatewaypool_router_instances_total", gateway="gw-2", outcome="success") == (
        total
    )
    released = router.wait_events("association.released", 4)
    assert sorted(r["calling_ae"] for r in released) == ["CT0", "CT1", "CT2", "CT3"]
    assert sum(r["instances"] for r in released) == total
