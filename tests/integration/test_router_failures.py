"""A gateway that dies: nothing acknowledged that no gateway holds.

A pynetdicom sender timing nothing, just sending instance after instance on
one association and recording each status, while a gateway is killed with
SIGKILL and later restarted on the same port.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pynetdicom import _config
from pynetdicom.association import Association

from gatewaypool.bucketmap import balanced_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local import scu
from gatewaypool_local.peers.gateway import map_gateways
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, generate_study, study_uid_for

RouterFactory = Callable[..., RouterProcess]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
TRANSIENT = {0xA701, 0xA702, 0xA703}


@contextmanager
def association(router: RouterProcess) -> Iterator[Association]:
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # send file bytes verbatim
    try:
        with scu.open_association(
            router.host,
            router.port,
            contexts=[(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)],
            calling_ae="MODALITY",
            called_ae=router.ae_title,
            timeout=30,
        ) as assoc:
            yield assoc
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def store(assoc: Association, path: Path) -> int | None:
    response = scu.store(assoc, path)
    return int(response.Status) if response and "Status" in response else None


def studies_on(
    gateways: list[PynetdicomSink], wanted: list[int], out: Path, instances: int
) -> list[Study]:
    """One generated study for each wanted gateway index (as the router's map routes it)."""
    bucket_map = balanced_map(map_gateways(gateways))
    chosen: list[Study] = []
    index = 0
    for target in wanted:
        while True:
            owner = bucket_map.owners[study_bucket(study_uid_for(study_index=index), 4096)]
            index += 1
            if owner == target:
                chosen.append(
                    generate_study(
                        out, study_index=index - 1, instances=instances, rows=32, columns=32
                    )
                )
                break
    return chosen


def test_gateway_killed_mid_study(start_router: RouterFactory, tmp_path: Path) -> None:
    doomed = PynetdicomSink(tmp_path / "doomed", ae_title="DOOMED")
    healthy = PynetdicomSink(tmp_path / "healthy", ae_title="HEALTHY")
    with doomed, healthy:
        router = start_router([doomed, healthy])
        study_a, study_b = studies_on([doomed, healthy], [0, 1], tmp_path / "data", 30)
        statuses: dict[str, int | None] = {}
        with association(router) as assoc:
            for i in range(10):
                statuses[study_a.sop_instance_uids[i]] = store(assoc, study_a.files[i])
                statuses[study_b.sop_instance_uids[i]] = store(assoc, study_b.files[i])
            doomed.kill()
            for i in range(10, 20):
                statuses[study_a.sop_instance_uids[i]] = store(assoc, study_a.files[i])
                statuses[study_b.sop_instance_uids[i]] = store(assoc, study_b.files[i])
            doomed.restart()
            for i in range(20, 30):
                statuses[study_a.sop_instance_uids[i]] = store(assoc, study_a.files[i])
                statuses[study_b.sop_instance_uids[i]] = store(assoc, study_b.files[i])
        held_a = {item.sop_instance_uid for item in doomed.received()}
        held_b = {item.sop_instance_uid for item in healthy.received()}

    a = study_a.sop_instance_uids
    b = study_b.sop_instance_uids
    # Before the kill, and after the restart, everything is delivered.
    assert all(statuses[uid] == 0 for uid in a[:10] + a[20:])
    # While the gateway is dead its instances fail, with a transient status.
    assert all(statuses[uid] in TRANSIENT for uid in a[10:20]), [statuses[u] for u in a[10:20]]
    # The other gateway is served throughout, on the same association.
    assert all(statuses[uid] == 0 for uid in b)
    assert held_b == set(b)
    # Success only for what a gateway holds; failures are not there.
    acknowledged = {uid for uid, status in statuses.items() if status == 0}
    assert acknowledged <= held_a | held_b
    assert held_a == set(a[:10] + a[20:])
    assert (
        router.metric(
            "gatewaypool_router_gateway_failures_total",
            gateway="gw-0",
            reason="gateway_unreachable",
        )
        >= 9
    )
    failed = router.events("instance.failed")
    assert {r["sop_instance_uid"] for r in failed} == set(a[10:20])
    assert all(r["gateway"] == "gw-0" and r["status"].startswith("0xA70") for r in failed)


def test_gateway_dies_while_the_instance_is_in_flight(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    # The gateway has the whole instance but waits before answering: killed
    # in that window, it never acknowledged it. The sender must see a
    # failure (it will retry; a duplicate is harmless, a loss is not).
    slow = PynetdicomSink(tmp_path / "slow", ae_title="SLOW", delay=30.0)
    with slow:
        router = start_router([slow])
        [study] = studies_on([slow], [0], tmp_path / "data", 2)
        result: list[int | None] = []
        with association(router) as assoc:
            sender = threading.Thread(target=lambda: result.append(store(assoc, study.files[0])))
            sender.start()
            wait_until(
                lambda: bool(router.metrics().get(("gatewaypool_router_active_associations", ()))),
                timeout=10,
                what="association open",
            )
            wait_until(
                lambda: "answering in" in slow.log_path.read_text(errors="replace"),
                timeout=10,
                what="instance at the gateway",
            )
            slow.kill()
            sender.join(timeout=30)
            assert not sender.is_alive()
            assert result == [0xA703]
            # The association survives; the next instance fails fast and cleanly.
            assert store(assoc, study.files[1]) == 0xA701
        assert slow.received_count() == 0
    assert router.events("instance.failed")[0]["status_name"] == "GATEWAY_ABORTED"


def test_gateway_status_passes_through_unchanged(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    warning = PynetdicomSink(tmp_path / "warn", ae_title="WARN", status=0xB000)
    with warning:
        router = start_router([warning])
        [study] = studies_on([warning], [0], tmp_path / "data", 1)
        with association(router) as assoc:
            assert store(assoc, study.files[0]) == 0xB000
    refusing = PynetdicomSink(tmp_path / "full", ae_title="FULL", fail_after=0)
    with refusing:
        router = start_router([refusing])
        [study] = studies_on([refusing], [0], tmp_path / "data2", 1)
        with association(router) as assoc:
            assert store(assoc, study.files[0]) == 0xA700
        assert refusing.received_count() == 0
    assert (
        router.metric("gatewaypool_router_instances_total", gateway="gw-0", outcome="failure") == 1
    )
