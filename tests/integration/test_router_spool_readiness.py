"""A gateway the map source marks not Ready is spooled for without being tried (issue 21).

Real peers on loopback: DCMTK ``storescu`` in front, two DCMTK ``storescp``
as gateways, the router as a process fed from a map file and a readiness
file (``--readiness``). The gateway marked not Ready keeps running: that it
sees no association while marked is the point. Every wait is a condition
with a deadline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from gatewaypool.bucketmap import BucketMap, Readiness, balanced_map, dump_map, dump_readiness
from gatewaypool.hashing import study_bucket
from gatewaypool.studyrecord import parse_entry
from gatewaypool_local.peers.dcmtk import StoreSCP, storescu
from gatewaypool_local.peers.gateway import map_gateways
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_sha256, generate_study, study_uid_for

RouterFactory = Callable[..., RouterProcess]


def associations(gateway: StoreSCP) -> int:
    """Associations the storescp accepted so far, read from its own log (``--verbose``)."""
    return gateway.log_path.read_text(errors="replace").count("Association Received")


def owned_studies(bucket_map: BucketMap, owner: int, out: Path, count: int) -> list[Study]:
    chosen: list[Study] = []
    index = 0
    while len(chosen) < count:
        uid = study_uid_for(study_index=index)
        if bucket_map.owners[study_bucket(uid, bucket_map.buckets)] == owner:
            chosen.append(generate_study(out, study_index=index, instances=12, rows=32, columns=32))
        index += 1
    return chosen


def digests(studies: Sequence[Study]) -> dict[str, str]:
    """SOP instance UID -> SHA-256 of the data set as sent."""
    return {
        uid: dataset_sha256(path)
        for study in studies
        for uid, path in zip(study.sop_instance_uids, study.files, strict=True)
    }


def marked(router: RouterProcess, not_ready: list[str]) -> int:
    """How many of the router's processes logged applying this readiness."""
    return sum(1 for r in router.events("map.readiness") if r.get("not_ready") == not_ready)


def probed(router: RouterProcess, gateway: str) -> int:
    """How many of the router's processes logged probing `gateway` (at their start)."""
    return sum(1 for r in router.events("gateway.probed") if r.get("gateway") == gateway)


def send(router: RouterProcess, studies: Sequence[Study]) -> None:
    files = [f for study in studies for f in study.files]
    done = storescu(router.host, router.port, files, called_ae=router.ae_title, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Failed" not in done.stderr + done.stdout, done.stderr[-2000:]


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_a_gateway_marked_not_ready_is_spooled_for_untried_and_gets_its_studies_whole(
    start_router: RouterFactory, tmp_path: Path, workers: int
) -> None:
    """With two workers the supervisor reads the files and hands readiness to both."""
    gateways = [StoreSCP(tmp_path / f"gw-{i}", ae_title=f"GW{i}") for i in range(2)]
    for gateway in gateways:
        gateway.start()
    try:
        bucket_map = balanced_map(map_gateways(gateways))
        map_file = tmp_path / "map.json"
        map_file.write_text(dump_map(bucket_map))
        readiness = tmp_path / "readiness.json"
        readiness.write_text(dump_readiness(Readiness()))
        spool = tmp_path / "spool"
        router = start_router(
            map_file=map_file,
            extra_args=[
                "--readiness",
                str(readiness),
                "--spool-dir",
                str(spool),
                "--shutdown-grace",
                "2",
            ],
            workers=workers,
        )
        first, *spooled = owned_studies(bucket_map, 0, tmp_path / "gw-0-studies", 3)
        other = owned_studies(bucket_map, 1, tmp_path / "gw-1-studies", 1)
        # Both Ready: gw-0 takes a study straight on.
        send(router, [first])
        wait_until(
            lambda: gateways[0].received_count() == 12, timeout=30, what="the first study on gw-0"
        )

        # Every routing process has probed the gateways (its catalog does at its
        # start): the associations gw-0 sees from here on are the router's only
        # if it tried gw-0 for an instance.
        wait_until(
            lambda: probed(router, "gw-0") >= workers,
            timeout=30,
            what="every routing process's catalog probed gw-0",
        )
        readiness.write_text(dump_readiness(Readiness(frozenset({"gw-0"}))))
        # Applied by every process that routes (and by the supervisor that read it).
        wait_until(
            lambda: marked(router, ["gw-0"]) == (1 if workers == 1 else 1 + workers),
            timeout=15,
            what="every process applied the readiness that marks gw-0 not Ready",
        )
        assert router.metric("gatewaypool_router_gateway_not_ready", gateway="gw-0") == 1
        before = associations(gateways[0])
        assert before >= 1 and gateways[0].is_running()
        # Success for every instance, though gw-0 is never asked: they are in the spool.
        send(router, spooled)
        assert len(list((spool / "queue").rglob("*.inst"))) == 24
        assert associations(gateways[0]) == before
        # The forwarder has the entries in its queue (and has started gw-0's lane).
        wait_until(
            lambda: router.metric("gatewaypool_router_spool_spooled_total") == 24,
            timeout=15,
            what="the forwarder queued the spooled instances",
        )
        # gw-1 is Ready: straight on, as before; meanwhile gw-0's lane does not try it.
        send(router, other)
        wait_until(lambda: gateways[1].received_count() == 12, timeout=30, what="gw-1's study")
        assert router.metric("gatewaypool_router_gateway_failures_total", gateway="gw-0") == 0
        assert associations(gateways[0]) == before
        assert gateways[0].received_count() == 12

        readiness.write_text(dump_readiness(Readiness()))
        wait_until(
            lambda: (
                gateways[0].received_count() == 36 and not list((spool / "queue").rglob("*.inst"))
            ),
            timeout=30,
            what="the spooled studies on gw-0 and the spool empty",
        )
        sent = digests([first, *spooled, *other])
        for index, mine in enumerate(([first, *spooled], other)):
            held = gateways[index].received()
            assert {r.study_uid for r in held} == {s.study_uid for s in mine}  # studies whole
            assert sorted(r.sop_instance_uid for r in held) == sorted(
                uid for s in mine for uid in s.sop_instance_uids
            )
            for item in held:
                assert item.dataset_sha256() == sent[item.sop_instance_uid]
        assert router.metric("gatewaypool_router_spool_forwarded_total") == 24
        assert router.metric("gatewaypool_router_gateway_not_ready", gateway="gw-0") == 0
        # The study record says where the spooled studies went, and that they got there
        # (with two workers: the supervisor's deliveries merged with the workers' answers).
        for study in spooled:
            entry = parse_entry(router.http_text(f"/studies/{study.study_uid}"))
            use = entry.uses["gw-0"]
            assert (use.instances, use.spooled, use.spool_delivered, use.spool_refused) == (
                12,
                12,
                12,
                0,
            ), entry
            assert set(entry.uses) == {"gw-0"}
    finally:
        for gateway in gateways:
            gateway.stop()
