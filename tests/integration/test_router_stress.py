"""Stress: eight concurrent associations of mixed senders, every PDU size, every instance size.

Senders: DCMTK ``storescu`` with send PDUs of 4 KiB, 16 KiB and 128 KiB,
and pynetdicom processes sending file bytes as they are (chunked) or
decoding and encoding each file (whole), at the router's 256 KiB maximum.
Gateways: DCMTK ``storescp --fork`` taking 4 KiB and 128 KiB PDUs and the
pynetdicom sink taking 256 KiB, so the router refragments every way.
Instances from 1 KB to 50 MB. Every sender runs in its own process, as
modalities do, with a DIMSE timeout, so a stall fails the test instead of
hanging it. Nothing may fail, stall or split, and every data set must
arrive byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gatewaypool.bucketmap import balanced_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.peers.dcmtk import DCMTK_ENV, StoreSCP
from gatewaypool_local.peers.gateway import map_gateways
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_sha256, generate_multiframe

RouterFactory = Callable[..., RouterProcess]
StudyFactory = Callable[..., list[Study]]
ROUTER_MAX_PDU = 262144
#: Per sender process: far above what its share takes, far below pytest's timeout.
SENDER_TIMEOUT = 240


@dataclass
class Sender:
    """One sender process and the files it sends, in order."""

    kind: str  # "storescu", "chunked" or "whole"
    max_send_pdu: int
    files: list[Path]


def _command(sender: Sender, router: RouterProcess, index: int) -> list[str]:
    if sender.kind == "storescu":
        return [
            "storescu",
            "--required",
            "--max-send-pdu",
            str(sender.max_send_pdu),
            "-ta",
            "30",
            "-td",
            "30",
            "-aet",
            f"STRESS{index}",
            "-aec",
            router.ae_title,
            router.host,
            str(router.port),
            *(str(f) for f in sender.files),
        ]
    return [
        sys.executable,
        "-m",
        "gatewaypool_local.scu",
        router.host,
        str(router.port),
        *(str(f) for f in sender.files),
        "--called-ae",
        router.ae_title,
        "--calling-ae",
        f"STRESS{index}",
        "--timeout",
        "30",
        *(["--whole"] if sender.kind == "whole" else []),
    ]


@pytest.mark.slow
def test_mixed_senders_every_pdu_and_instance_size(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    tiny = ct_studies(8, instances=200, rows=8, columns=8)
    slices = ct_studies(8, instances=40, rows=512, columns=512, first_index=50)
    (tmp_path / "big").mkdir()
    big = [
        generate_multiframe(
            tmp_path / "big" / f"mf{i}.dcm", size_bytes=50 * 2**20, study_index=90 + i
        )
        for i in range(2)
    ]
    sizes = [path.stat().st_size for study in tiny + slices for path in study.files]
    sizes += [instance.total_bytes for instance in big]
    assert min(sizes) < 2048 and max(sizes) >= 50 * 2**20
    kinds = [
        ("storescu", 4096),
        ("storescu", 16384),
        ("storescu", 131072),
        ("chunked", ROUTER_MAX_PDU),
        ("chunked", ROUTER_MAX_PDU),
        ("chunked", ROUTER_MAX_PDU),
        ("whole", ROUTER_MAX_PDU),
        ("whole", ROUTER_MAX_PDU),
    ]
    senders = [Sender(kind, pdu, []) for kind, pdu in kinds]
    for index, study in enumerate(tiny + slices):
        senders[index % len(senders)].files += study.files
    # The 50 MB instances go first on two associations, so they overlap the rest.
    senders[2].files.insert(0, big[0].path)
    senders[3].files.insert(0, big[1].path)
    expected: dict[str, tuple[str, str]] = {}  # SOP instance -> (study, dataset sha256)
    for study in tiny + slices:
        for path, sop in zip(study.files, study.sop_instance_uids, strict=True):
            expected[sop] = (study.study_uid, dataset_sha256(path))
    for instance in big:
        expected[instance.sop_instance_uid] = (instance.study_uid, dataset_sha256(instance.path))

    gateways = [
        StoreSCP(tmp_path / "gw0", ae_title="GW4K", max_pdu=4096, fork=True),
        StoreSCP(tmp_path / "gw1", ae_title="GW128K", max_pdu=131072, fork=True),
        PynetdicomSink(tmp_path / "gw2", ae_title="GW256K", max_pdu=ROUTER_MAX_PDU, chunked=True),
    ]
    env = {**os.environ, **DCMTK_ENV}
    with gateways[0], gateways[1], gateways[2]:
        router = start_router(gateways)
        processes = [
            subprocess.Popen(
                _command(sender, router, index),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for index, sender in enumerate(senders)
        ]
        outputs = [process.communicate(timeout=SENDER_TIMEOUT) for process in processes]
        received = [gateway.received() for gateway in gateways]

    failures = [
        f"{sender.kind}/{sender.max_send_pdu}: exit {process.returncode}: {err[-400:]}"
        for sender, process, (_out, err) in zip(senders, processes, outputs, strict=True)
        if process.returncode != 0
    ]
    assert not failures
    for sender, (out, _err) in zip(senders, outputs, strict=True):
        if sender.kind != "storescu":
            statuses = [json.loads(line).get("status") for line in out.splitlines()[:-1]]
            assert statuses == [0] * len(sender.files)
    assert not router.events("instance.failed")
    assert not router.events("association.aborted")
    assert not router.events("instance.overdue")

    bucket_map = balanced_map(map_gateways(gateways))
    where: dict[str, set[int]] = defaultdict(set)
    held: dict[str, str] = {}
    for index, items in enumerate(received):
        for item in items:
            where[item.study_uid].add(index)
            held[item.sop_instance_uid] = item.dataset_sha256()
    assert held.keys() == expected.keys()
    changed = [sop for sop, (_study, digest) in expected.items() if held[sop] != digest]
    assert not changed, f"{len(changed)} data sets changed on the way"
    for study_uid in {study for study, _digest in expected.values()}:
        owner = bucket_map.owners[study_bucket(study_uid, bucket_map.buckets)]
        assert where[study_uid] == {owner}
    assert {i for indexes in where.values() for i in indexes} == {0, 1, 2}
