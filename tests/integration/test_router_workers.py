"""One router replica on two cores: ``--workers 2`` as a real process on loopback.

The replica must look like one router from outside (one port, one
``/metrics``, one drain on SIGTERM) while two worker processes serve its
associations, and must survive a worker killed by the OOM killer. Senders
use :mod:`gatewaypool_local.scu` (pynetdicom 3.0.4 drops responses without
it; see test_router_concurrency.py). Which worker served an association is
read from the ``worker`` field of the router's JSON log lines.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian

from gatewaypool_local import scu
from gatewaypool_local.peers.dcmtk import StoreSCP
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study

RouterFactory = Callable[..., RouterProcess]
StudyFactory = Callable[..., list[Study]]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
CONTEXTS = [(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)]
#: Generous for a loaded 2-core machine; every wait ends as soon as its condition holds.
DEADLINE = 60.0
DIMSE_TIMEOUT = 20.0


def _gateways(tmp_path: Path) -> list[StoreSCP]:
    return [StoreSCP(tmp_path / f"gw{i}", ae_title=f"GW{i}", fork=True) for i in range(2)]


def _workers_started(router: RouterProcess) -> dict[int, int]:
    """Worker slot -> pid of the worker running in it (the latest start of each slot)."""
    return {event["worker"]: event["pid"] for event in router.events("worker.started")}


def _wait_for_workers(router: RouterProcess, count: int = 2) -> dict[int, int]:
    wait_until(
        lambda: len(_workers_started(router)) == count,
        timeout=DEADLINE,
        what=f"{count} workers started",
    )
    return _workers_started(router)


def _served_by(router: RouterProcess, event: str = "association.released") -> set[int]:
    return {record["worker"] for record in router.events(event) if "worker" in record}


def _send_study(
    router: RouterProcess, study: Study, calling_ae: str, acked: dict[str, int | None]
) -> None:
    """Send `study` on one association; record each instance's status (None: no answer).

    A success is kept when the same instance is sent again and gets no answer:
    the gateway holds it from the first time.
    """
    try:
        with scu.open_association(
            router.host,
            router.port,
            contexts=CONTEXTS,
            calling_ae=calling_ae,
            called_ae=router.ae_title,
            timeout=DIMSE_TIMEOUT,
        ) as assoc:
            for path, sop in zip(study.files, study.sop_instance_uids, strict=True):
                if not assoc.is_established:
                    acked.setdefault(sop, None)
                    continue
                response = scu.store(assoc, path)
                status = int(response.Status) if "Status" in response else None
                if acked.get(sop) != 0:
                    acked[sop] = status
    except Exception:  # an association a killed worker took: nothing of it was acknowledged
        for sop in study.sop_instance_uids:
            acked.setdefault(sop, None)


def _at_gateways(gateways: list[StoreSCP]) -> set[str]:
    return {item.sop_instance_uid for gateway in gateways for item in gateway.received()}


def _success_total(router: RouterProcess) -> float:
    return sum(
        value
        for (name, labels), value in router.metrics().items()
        if name == "gatewaypool_router_instances_total" and ("outcome", "success") in labels
    )


def test_two_workers_share_the_port_and_metrics_count_each_instance_once(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    gateways = _gateways(tmp_path)
    acked: dict[str, int | None] = {}
    with gateways[0], gateways[1]:
        router = start_router(gateways, workers=2)
        _wait_for_workers(router)
        # Rounds of four concurrent associations, until each worker has served
        # some: the kernel hands connections to whichever worker waits in accept().
        for round_ in range(10):
            studies = ct_studies(4, instances=4, rows=16, columns=16, first_index=10 * round_)
            threads = [
                threading.Thread(target=_send_study, args=(router, study, f"CT{i}", acked))
                for i, study in enumerate(studies)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=DEADLINE)
            if round_ >= 1 and _served_by(router) == {0, 1}:
                break
        assert _served_by(router) == {0, 1}
        sent = len(acked)
        assert all(status == 0 for status in acked.values()), acked
        wait_until(
            lambda: _at_gateways(gateways) >= set(acked),
            timeout=DEADLINE,
            what="every instance at a gateway",
        )
    # Both workers' counts, each instance once, in the replica's one /metrics.
    assert _success_total(router) == sent
    assert router.metric("gatewaypool_router_workers") == 2
    assert router.metric("gatewaypool_router_active_associations") == 0
    assert router.metric("gatewaypool_router_map_version") == 1
    # Studies in flight merged over the workers: each study counted once.
    in_flight = sum(
        value
        for (name, _), value in router.metrics().items()
        if name == "gatewaypool_router_studies_in_flight"
    )
    assert in_flight == sent // 4


def test_a_killed_worker_is_replaced_while_the_other_serves(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    gateways = _gateways(tmp_path)
    acked: dict[str, int | None] = {}
    stop = threading.Event()
    # Sent again and again until the test stops them: however long a new
    # worker takes to start on a busy machine, traffic is there for it.
    studies = itertools.cycle(ct_studies(24, instances=3, rows=16, columns=16))
    taking = threading.Lock()

    def traffic(sender: int) -> None:
        while not stop.is_set():
            with taking:
                study = next(studies)
            _send_study(router, study, f"CT{sender}", acked)

    with gateways[0], gateways[1]:
        router = start_router(gateways, workers=2)
        before = _wait_for_workers(router)
        senders = [threading.Thread(target=traffic, args=(i,)) for i in range(3)]
        for sender in senders:
            sender.start()
        try:
            wait_until(
                lambda: _served_by(router) == {0, 1}, timeout=DEADLINE, what="both workers busy"
            )
            killed_at = datetime.now(UTC)
            os.kill(before[0], signal.SIGKILL)  # as the OOM killer does

            def survivor_served_since_kill() -> bool:
                return any(
                    record.get("worker") == 1 and _when(record) > killed_at
                    for record in router.events("association.released")
                )

            def replacement_served() -> bool:
                now = _workers_started(router)
                return now.get(0) not in (None, before[0]) and any(
                    record.get("worker") == 0 and _when(record) > killed_at
                    for record in router.events("association.released")
                )

            wait_until(survivor_served_since_kill, timeout=DEADLINE, what="worker 1 serving")
            wait_until(replacement_served, timeout=DEADLINE, what="a new worker 0 serving")
        finally:
            stop.set()
            for sender in senders:
                sender.join(timeout=DEADLINE)
        assert _workers_started(router)[1] == before[1]
        died = router.events("worker.died")
        assert [(e["worker"], e["pid"], e["signal"]) for e in died] == [
            (0, before[0], signal.SIGKILL)
        ]
        assert router.metric("gatewaypool_router_worker_restarts_total") == 1
        assert router.metric("gatewaypool_router_workers") == 2
        # Nothing acknowledged is lost: every instance answered with success is at a gateway.
        stored = {sop for sop, status in acked.items() if status == 0}
        assert stored
        wait_until(
            lambda: _at_gateways(gateways) >= stored,
            timeout=DEADLINE,
            what="every acknowledged instance at a gateway",
        )
    # The killed worker's counts stay in /metrics: counters never go back.
    assert _success_total(router) >= len(stored)


def test_sigterm_drains_both_workers(
    start_router: RouterFactory, ct_studies: StudyFactory, tmp_path: Path
) -> None:
    gateways = _gateways(tmp_path)
    studies = ct_studies(12, instances=2, rows=16, columns=16)
    with gateways[0], gateways[1]:
        with contextlib.ExitStack() as held:
            router = start_router(gateways, workers=2, extra_args=["--shutdown-grace", "30"])
            _wait_for_workers(router)
            # Open associations one at a time until each worker holds one.
            open_on: dict[int, list[tuple[Any, Study]]] = {0: [], 1: []}
            for index, study in enumerate(studies):
                if open_on[0] and open_on[1]:
                    break
                calling = f"HOLD{index}"
                assoc = held.enter_context(
                    scu.open_association(
                        router.host,
                        router.port,
                        contexts=CONTEXTS,
                        calling_ae=calling,
                        called_ae=router.ae_title,
                        timeout=DIMSE_TIMEOUT,
                    )
                )
                wait_until(
                    lambda calling=calling: _accepted_by(router, calling) is not None,
                    timeout=DEADLINE,
                    what=f"{calling} accepted",
                )
                open_on[_accepted_by(router, calling)].append((assoc, study))
            assert open_on[0] and open_on[1]
            pairs = [pair for pairs in open_on.values() for pair in pairs]
            for assoc, study in pairs:  # the first instance of each, before SIGTERM
                assert scu.store(assoc, study.files[0]).Status == 0

            assert router.pid is not None
            os.kill(router.pid, signal.SIGTERM)
            wait_until(
                lambda: {r.get("worker") for r in router.events("router.signal")} >= {0, 1},
                timeout=DEADLINE,
                what="both workers told to stop",
            )
            wait_until(
                lambda: not _accepts(router), timeout=DEADLINE, what="no new connections taken"
            )
            # Draining: the associations already open go on, on both workers.
            for assoc, study in pairs:
                assert scu.store(assoc, study.files[1]).Status == 0
            assert router.is_running()
        # Leaving the ExitStack released every association: now the replica ends.
        wait_until(lambda: not router.is_running(), timeout=DEADLINE, what="router exit")
    assert router.stop() == 0
    stopped = {
        r["worker"]: r["unfinished"] for r in router.events("router.stopped") if "worker" in r
    }
    assert stopped == {0: 0, 1: 0}
    released = [
        r for r in router.events("association.released") if r["calling_ae"].startswith("HOLD")
    ]
    assert len(released) == len(pairs)
    assert not router.events("worker.died")
    assert not router.events("worker.killed")


def _accepted_by(router: RouterProcess, calling_ae: str) -> int | None:
    for record in router.events("association.accepted"):
        if record.get("calling_ae") == calling_ae:
            worker: int = record["worker"]
            return worker
    return None


def _accepts(router: RouterProcess) -> bool:
    try:
        with socket.create_connection((router.host, router.port), timeout=2):
            return True
    except OSError:
        return False


def _when(record: dict[str, Any]) -> datetime:
    return datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
