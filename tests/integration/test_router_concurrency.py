"""Concurrent pynetdicom senders through the router with its default 256 KiB PDUs.

Issue 7: one of four pynetdicom associations stopped mid-study in a third of
the runs: the sender waited for a C-STORE-RSP, the router for the sender's
next request. The router had sent that response; pynetdicom's association
thread took it off the queue as an "unexpected C-STORE service message" and
dropped it (see :mod:`gatewaypool_local.scu`). The same happens straight to
DCMTK ``storescp --ignore``, without the router. The traffic here is shaped
to hit that race: eight associations in one sender process and many small
instances answered within a millisecond, with instances of two full PDUs
among them. With plain ``send_c_store`` every run lost responses (3 of 3
runs, 1 to 7 associations each); with :func:`gatewaypool_local.scu.store`
none did.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import _config

from gatewaypool.bucketmap import balanced_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local import scu
from gatewaypool_local.peers.dcmtk import StoreSCP
from gatewaypool_local.peers.gateway import map_gateways
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_sha256

RouterFactory = Callable[..., RouterProcess]
StudyFactory = Callable[..., list[Study]]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
ASSOCIATIONS = 8
#: Short enough that a lost response fails the test in seconds, long enough
#: for any real answer on a loaded 2-core machine.
DIMSE_TIMEOUT = 20.0


def test_eight_pynetdicom_associations_never_stall(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    gateways = [
        StoreSCP(tmp_path / f"gw{i}", ae_title=f"GW{i}", max_pdu=16382, fork=True) for i in range(3)
    ]
    small = ct_studies(12, instances=120, rows=16, columns=16)
    large = ct_studies(4, instances=12, rows=512, columns=512, first_index=100)
    studies = small + large
    plan: list[list[Path]] = [[] for _ in range(ASSOCIATIONS)]
    for index, study in enumerate(studies):
        plan[index % ASSOCIATIONS] += study.files
    statuses: dict[Path, int | None] = {}
    problems: list[str] = []

    def send(files: list[Path], index: int) -> None:
        try:
            with scu.open_association(
                router.host,
                router.port,
                contexts=[(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)],
                calling_ae=f"CT{index}",
                called_ae=router.ae_title,
                max_pdu=262144,
                timeout=DIMSE_TIMEOUT,
            ) as assoc:
                for path in files:
                    if not assoc.is_established:
                        statuses[path] = None
                        continue
                    response = scu.store(assoc, path)
                    statuses[path] = int(response.Status) if "Status" in response else None
        except Exception as exc:  # reported below, with the other failures
            problems.append(f"association {index}: {exc!r}")

    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # each file's bytes as they are, as in the issue
    try:
        with gateways[0], gateways[1], gateways[2]:
            router = start_router(gateways)
            threads = [
                threading.Thread(target=send, args=(files, i)) for i, files in enumerate(plan)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=300)
            received = [gateway.received() for gateway in gateways]
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous

    assert not problems
    sent = [path for files in plan for path in files]
    failed = {path.name: status for path, status in statuses.items() if status != 0}
    assert len(statuses) == len(sent)
    assert not failed, f"{len(failed)} instances not stored: {sorted(failed.items())[:5]}"
    assert len(router.wait_events("association.released", ASSOCIATIONS)) == ASSOCIATIONS
    assert not router.events("association.aborted")

    # Every study whole on the gateway its bucket names, every data set as sent.
    bucket_map = balanced_map(map_gateways(gateways))
    where: dict[str, set[int]] = defaultdict(set)
    held: dict[str, str] = {}
    for index, items in enumerate(received):
        for item in items:
            where[item.study_uid].add(index)
            held[item.sop_instance_uid] = item.dataset_sha256()
    for study in studies:
        owner = bucket_map.owners[study_bucket(study.study_uid, bucket_map.buckets)]
        assert where[study.study_uid] == {owner}
        for path, sop in zip(study.files, study.sop_instance_uids, strict=True):
            assert held[sop] == dataset_sha256(path), path.name
