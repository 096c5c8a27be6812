"""``gatewaypool locate`` against a real router replica on loopback (issue 22).

A router of two worker processes in front of two DCMTK ``storescp``
gateways, fed a map file that the test changes mid-study. ``locate`` runs
as the command a person types (``gatewaypool locate UID --router URL``), and
what it prints is compared with what the gateways actually stored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian

from gatewaypool.bucketmap import BucketMap, dump_map
from gatewaypool_local import scu
from gatewaypool_local.peers.dcmtk import StoreSCP
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study
from support.mapfiles import all_to, write_atomically

RouterFactory = Callable[..., RouterProcess]
StudyFactory = Callable[..., list[Study]]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CONTEXTS = [(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)]
DEADLINE = 60.0
#: No study of these tests starts with this root: a UID no router saw.
UNSEEN_UID = "1.2.826.0.1.3680043.8.498.999999999"


def _write(path: Path, bucket_map: BucketMap) -> None:
    write_atomically(path, dump_map(bucket_map))


def _send(router: RouterProcess, files: Sequence[Path], calling_ae: str) -> list[int]:
    with scu.open_association(
        router.host,
        router.port,
        contexts=CONTEXTS,
        calling_ae=calling_ae,
        called_ae=router.ae_title,
        timeout=20.0,
    ) as assoc:
        return [int(scu.store(assoc, path).Status) for path in files]


def _stored(gateways: Sequence[StoreSCP]) -> dict[str, Counter[str]]:
    """Study UID -> gateway name -> instances that gateway stored."""
    result: dict[str, Counter[str]] = {}
    for index, gateway in enumerate(gateways):
        for item in gateway.received():
            result.setdefault(item.study_uid, Counter())[f"gw-{index}"] += 1
    return result


def _locate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewaypool.cli", "locate", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _locate_json(uid: str, router: RouterProcess) -> dict[str, Any]:
    done = _locate(uid, "--router", f"http://{router.host}:{router.http_port}", "-o", "json")
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def test_locate_agrees_with_the_gateways_across_a_map_change(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    gateways = [StoreSCP(tmp_path / f"gw{i}", ae_title=f"GW{i}", fork=True) for i in range(2)]
    moved, steady = ct_studies(2, instances=6, rows=16, columns=16)
    map_file = tmp_path / "map.json"
    with gateways[0], gateways[1]:
        _write(map_file, all_to(gateways, 0, version=1))
        router = start_router(map_file=map_file, workers=2)
        # `steady` on three concurrent associations (both workers likely serve
        # some), `moved` half before the map change and half after it.
        halves = [steady.files[0::3], steady.files[1::3], steady.files[2::3]]
        statuses: list[list[int]] = []
        threads = [
            threading.Thread(target=lambda f=files, i=i: statuses.append(_send(router, f, f"S{i}")))
            for i, files in enumerate(halves)
        ]
        for thread in threads:
            thread.start()
        assert _send(router, moved.files[:3], "MOVED") == [0, 0, 0]
        for thread in threads:
            thread.join(timeout=DEADLINE)
        _write(map_file, all_to(gateways, 1, version=2))
        wait_until(
            lambda: "map version 2" in router.http_text("/readyz"),
            timeout=DEADLINE,
            what="map version 2 applied",
        )
        assert _send(router, moved.files[3:], "MOVED") == [0, 0, 0]
        assert sorted(s for batch in statuses for s in batch) == [0] * len(steady.files)
        wait_until(
            lambda: sum(g.received_count() for g in gateways) == 12,
            timeout=DEADLINE,
            what="12 instances at the gateways",
        )
        stored = _stored(gateways)

    for study in (moved, steady):
        answer = _locate_json(study.study_uid, router)
        assert answer["seen"] is True
        assert answer["wentTo"] == dict(stored[study.study_uid]), study.study_uid
        assert answer["owner"]["gateway"] == "gw-1"  # map version 2 sends everything to gw-1
        assert answer["moving"] is None
        (record,) = [r["record"] for r in answer["routers"]]
        assert record["studyInstanceUID"] == study.study_uid
        for use in record["gateways"]:
            assert use["acknowledged"] == use["instances"]
            assert use["failed"] == 0
    moved_uses = {
        u["gateway"]: u
        for u in _locate_json(moved.study_uid, router)["routers"][0]["record"]["gateways"]
    }
    assert {name: use["mapVersions"] for name, use in moved_uses.items()} == {
        "gw-0": [1],
        "gw-1": [2],
    }
    assert moved_uses["gw-0"]["lastAt"] <= moved_uses["gw-1"]["firstAt"]

    text = _locate(moved.study_uid, "--router", f"http://{router.host}:{router.http_port}")
    assert text.returncode == 0, text.stderr
    assert "went to   gw-0 (3), gw-1 (3), by 1 of 1 routers" in text.stdout
    assert "PatientName" not in text.stdout and "Patient" not in router.http_text(
        f"/studies/{moved.study_uid}"
    )


def test_unknown_and_malformed_uids(start_router: RouterFactory, tmp_path: Path) -> None:
    gateways = [StoreSCP(tmp_path / f"gw{i}", ae_title=f"GW{i}", fork=True) for i in range(2)]
    map_file = tmp_path / "map.json"
    with gateways[0], gateways[1]:
        _write(map_file, all_to(gateways, 1, version=4))
        router = start_router(map_file=map_file)
        url = f"http://{router.host}:{router.http_port}"

        unseen = _locate(UNSEEN_UID, "--router", url)
        assert unseen.returncode == 0, unseen.stderr
        assert "not seen by any router (1 asked)" in unseen.stdout
        assert "owner     gw-1 (" in unseen.stdout
        assert "of 64 (map version 4)" in unseen.stdout
        as_json = _locate(UNSEEN_UID, "--map", str(map_file), "--router", url, "-o", "json")
        answer = json.loads(as_json.stdout)
        assert answer["seen"] is False and answer["wentTo"] == {}
        assert answer["owner"]["gateway"] == "gw-1"
        assert 0 <= answer["bucket"] < 64

        for bad in ("1.2.abc", "1..2", "x" * 70):
            refused = _locate(bad, "--router", url)
            assert refused.returncode == 2
            assert "is not a StudyInstanceUID" in refused.stderr
            assert refused.stdout == ""
        # The router refuses it as clearly, with 400 rather than "not seen".
        assert router.http_status("/studies/1.2.abc") == 400
        assert router.http_status(f"/studies/{UNSEEN_UID}") == 200


def test_one_record_over_the_workers_of_a_replica(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    """A study whose associations two workers served is one record, counted once."""
    gateways = [StoreSCP(tmp_path / f"gw{i}", ae_title=f"GW{i}", fork=True) for i in range(2)]
    map_file = tmp_path / "map.json"
    with gateways[0], gateways[1]:
        _write(map_file, all_to(gateways, 0, version=1))
        router = start_router(map_file=map_file, workers=2)
        shared: Study | None = None
        # Rounds of one new study over four concurrent associations, until one
        # round's associations were served by both workers (the kernel hands
        # each connection to whichever worker waits in accept()).
        for round_ in range(12):
            [study] = ct_studies(1, instances=4, rows=16, columns=16, first_index=100 + round_)
            threads = [
                threading.Thread(target=_send, args=(router, [path], f"R{round_}A{i}"))
                for i, path in enumerate(study.files)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=DEADLINE)
            served = {
                event["worker"]
                for event in router.events("association.released")
                if str(event.get("calling_ae", "")).startswith(f"R{round_}A")
            }
            if served == {0, 1}:
                shared = study
                break
        assert shared is not None, "no study's associations reached both workers"
        wait_until(
            lambda: _stored(gateways).get(shared.study_uid) == Counter({"gw-0": 4}),
            timeout=DEADLINE,
            what="the shared study stored",
        )
    answer = _locate_json(shared.study_uid, router)
    assert answer["wentTo"] == {"gw-0": 4}
    [use] = answer["routers"][0]["record"]["gateways"]
    assert (use["instances"], use["acknowledged"]) == (4, 4)


def test_failed_and_spooled_instances_are_recorded_by_status(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    """A gateway that is down: failed with 0xA701 without a spool, spooled with one."""
    alive = StoreSCP(tmp_path / "alive", ae_title="ALIVE", fork=True)
    down = StoreSCP(tmp_path / "down", ae_title="DOWN", fork=True)  # never started
    failed, spooled = ct_studies(2, instances=2, rows=16, columns=16)
    map_file = tmp_path / "map.json"
    with alive:
        _write(map_file, all_to([alive, down], 1, version=3))
        plain = start_router(map_file=map_file)
        spooling = start_router(
            map_file=map_file,
            # Its spool cannot drain to a gateway that is down: do not wait for it at stop.
            extra_args=["--spool-dir", str(tmp_path / "spool"), "--shutdown-grace", "1"],
        )
        assert _send(plain, failed.files, "PLAIN") == [0xA701, 0xA701]
        assert _send(spooling, spooled.files, "SPOOL") == [0, 0]
    no_spool = _locate(failed.study_uid, "--router", f"http://{plain.host}:{plain.http_port}")
    assert no_spool.returncode == 0, no_spool.stderr
    assert "gw-1: 2 instances " in no_spool.stdout
    assert "map version 3, 2 failed (2 x 0xA701)" in no_spool.stdout
    [use] = _locate_json(spooled.study_uid, spooling)["routers"][0]["record"]["gateways"]
    assert (use["gateway"], use["spooled"], use["acknowledged"], use["failed"]) == ("gw-1", 2, 0, 0)
