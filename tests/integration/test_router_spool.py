"""The spool (``--spool-dir``): a gateway outage never reaches the sender.

Real peers on loopback: DCMTK ``storescu`` or a pynetdicom sender in front,
pynetdicom sinks as gateways (a killed sink holds only whole instances),
the router as a process. Every wait is a condition with a deadline.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from pynetdicom import _config

from gatewaypool.bucketmap import BucketMap, balanced_map, dump_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local import scu
from gatewaypool_local.peers.dcmtk import storescu
from gatewaypool_local.peers.gateway import map_gateways
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_offset, generate_study, study_uid_for

RouterFactory = Callable[..., RouterProcess]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"

#: The outage the issue asks for: long enough for many retries and back-offs.
OUTAGE_SECONDS = 60.0


def gateways_map(gateways: Sequence[PynetdicomSink]) -> BucketMap:
    return balanced_map(map_gateways(gateways))


def write_map(path: Path, bucket_map: BucketMap) -> Path:
    path.write_text(dump_map(bucket_map))
    return path


def owner(bucket_map: BucketMap, study_uid: str) -> int:
    return bucket_map.owners[study_bucket(study_uid, bucket_map.buckets)]


def studies_for(
    bucket_map: BucketMap, wanted: Sequence[int], out: Path, instances: int, size: int = 32
) -> list[Study]:
    """One generated study per entry of `wanted`, owned by that gateway index."""
    chosen: list[Study] = []
    index = 0
    for target in wanted:
        while owner(bucket_map, study_uid_for(study_index=index)) != target:
            index += 1
        chosen.append(
            generate_study(out, study_index=index, instances=instances, rows=size, columns=size)
        )
        index += 1
    return chosen


def sent_digests(studies: Sequence[Study]) -> dict[str, str]:
    """SOP instance UID -> SHA-256 of the data set as sent (file meta stripped)."""
    digests: dict[str, str] = {}
    for study in studies:
        for uid, path in zip(study.sop_instance_uids, study.files, strict=True):
            data = path.read_bytes()
            digests[uid] = hashlib.sha256(data[dataset_offset(data) :]).hexdigest()
    return digests


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted((spool_dir / "queue").rglob("*.inst"))


def spool_args(spool_dir: Path, *more: str) -> list[str]:
    # A router stopped while a gateway is down forwards for the whole grace.
    return ["--spool-dir", str(spool_dir), "--shutdown-grace", "2", *more]


def metric(router: RouterProcess, name: str) -> float:
    return router.metric(name)


def sender_statuses(router: RouterProcess, files: Sequence[Path]) -> list[int | None]:
    results = scu.send_files(router.host, router.port, files, called_ae=router.ae_title)
    return [r.status for r in results]


# -- the outage ---------------------------------------------------------------------


def test_a_gateway_outage_never_reaches_the_sender(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """8 studies over 4 storescu associations through two routers; one gateway down 60 s.

    The routers share the map and each has its own spool; one of them runs
    two workers, which share its spool.
    """
    # Gateways that take 50 ms an instance: the senders last a few seconds, so
    # the outage begins while every association is sending.
    gateways = [
        PynetdicomSink(tmp_path / f"gw-{i}", ae_title=f"GW{i}", delay=0.05) for i in range(3)
    ]
    for gateway in gateways:
        gateway.start()
    try:
        bucket_map = gateways_map(gateways)
        map_file = write_map(tmp_path / "map.json", bucket_map)
        # Gateway 0 owns three studies; the others are served throughout.
        studies = studies_for(bucket_map, [0, 1, 0, 2, 0, 1, 2, 1], tmp_path / "data", 40, 64)
        spools = [tmp_path / "spool-a", tmp_path / "spool-b"]
        # The second router runs two worker processes: one spool for both.
        routers = [
            start_router(map_file=map_file, extra_args=spool_args(spool), workers=workers)
            for spool, workers in zip(spools, (1, 2), strict=True)
        ]
        results: list[tuple[int, str]] = []

        def send(router: RouterProcess, pair: Sequence[Study]) -> None:
            # Two studies interleaved on one association, as a modality's queue sends them.
            files = [f for both in zip(*(s.files for s in pair), strict=True) for f in both]
            done = storescu(router.host, router.port, files, called_ae=router.ae_title)
            results.append((done.returncode, done.stdout + done.stderr))

        senders = [
            threading.Thread(target=send, args=(routers[i % 2], studies[2 * i : 2 * i + 2]))
            for i in range(4)
        ]
        for sender in senders:
            sender.start()
        # Stopped while instances flow: once a few reached it.
        wait_until(lambda: gateways[0].received_count() >= 5, timeout=60, what="first instances")
        gateways[0].kill()
        stopped = time.monotonic()
        for sender in senders:
            sender.join(timeout=120)
        assert all(not s.is_alive() for s in senders)
        assert all(code == 0 for code, _ in results), results
        for _, output in results:
            assert "Failed" not in output and "Error" not in output, output[-2000:]
        # The outage was met, and held by both routers' spools.
        assert all(spool_files(spool) for spool in spools)
        spooled = sum(len(spool_files(spool)) for spool in spools)
        # Nothing of gateway 0's studies reaches another gateway meanwhile.
        # The outage lasts its full time (the scenario, not a synchronisation).
        wait_until(
            lambda: time.monotonic() - stopped >= OUTAGE_SECONDS,
            timeout=OUTAGE_SECONDS + 5,
            what="the outage's end",
            interval=1.0,
        )
        assert sum(len(spool_files(spool)) for spool in spools) == spooled
        gateways[0].start()
        total = sum(study.instances for study in studies)
        wait_until(
            lambda: (
                sum(g.received_count() for g in gateways) == total
                and not any(spool_files(spool) for spool in spools)
            ),
            timeout=60,
            what="every instance delivered and the spools empty",
        )
        digests = sent_digests(studies)
        for index, gateway in enumerate(gateways):
            held = gateway.received()
            mine = [s for s in studies if owner(bucket_map, s.study_uid) == index]
            # Each study whole on its bucket's gateway, and only there.
            assert {r.study_uid for r in held} == {s.study_uid for s in mine}
            assert {r.sop_instance_uid for r in held} == {
                uid for s in mine for uid in s.sop_instance_uids
            }
            for item in held:
                assert item.dataset_sha256() == digests[item.sop_instance_uid]
        forwarded = sum(
            metric(router, "gatewaypool_router_spool_forwarded_total") for router in routers
        )
        assert forwarded >= spooled
    finally:
        for gateway in gateways:
            gateway.stop()


# -- crashes ------------------------------------------------------------------------


def test_a_router_killed_while_spooling_and_while_forwarding_loses_nothing(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    gateway = PynetdicomSink(tmp_path / "gw", ae_title="GW", delay=0.3)
    bucket_map = gateways_map([gateway])
    map_file = write_map(tmp_path / "map.json", bucket_map)
    study = studies_for(bucket_map, [0], tmp_path / "data", 30)[0]
    spool = tmp_path / "spool"
    args = spool_args(spool, "--spool-when", "Always")
    router = start_router(map_file=map_file, extra_args=args)
    statuses: dict[str, int | None] = {}

    def send() -> None:
        """One instance after the other, each status recorded as it comes, until the crash."""
        previous = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True  # the file's bytes, verbatim
        try:
            with scu.open_association(
                router.host,
                router.port,
                contexts=[(CT_IMAGE_STORAGE, EXPLICIT_VR_LE)],
                called_ae=router.ae_title,
                timeout=10,
            ) as assoc:
                for uid, path in zip(study.sop_instance_uids, study.files, strict=True):
                    response = scu.store(assoc, path)
                    if not response or "Status" not in response:
                        return  # the router is gone
                    statuses[uid] = int(response.Status)
        except Exception:  # the association dies with the router
            return
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = previous

    # 1. Killed while it spools (the gateway is down; every instance is spooled).
    sender = threading.Thread(target=send)
    sender.start()
    # Ten answered Success, so spooled and fsynced: the kill lands among later ones.
    wait_until(
        lambda: sum(1 for status in list(statuses.values()) if status == 0) >= 10,
        timeout=30,
        what="10 instances spooled and acknowledged",
    )
    router.kill()
    sender.join(timeout=60)
    acknowledged = {uid for uid, status in statuses.items() if status == 0}
    assert 10 <= len(acknowledged) < study.instances
    unacknowledged = [
        path
        for uid, path in zip(study.sop_instance_uids, study.files, strict=True)
        if uid not in acknowledged
    ]
    # What was acknowledged is in the queue, whole.
    queued = {json_meta(path)["sopInstanceUid"] for path in spool_files(spool)}
    assert acknowledged <= queued
    # 2. Restarted on the same folder: partial files go, the rest is sent on.
    router.start()
    records = router.events("spool.recovered")
    assert records[-1]["instances"] == len(queued)
    assert not list((spool / "tmp").iterdir())
    # The sender sends what was not acknowledged again, as a modality would.
    assert all(status == 0 for status in sender_statuses(router, unacknowledged))
    # 3. Killed while it forwards: the gateway is slow (0.3 s an instance).
    gateway.start()
    try:
        wait_until(
            lambda: gateway.received_count() >= 3 and any((spool / "sending").iterdir()),
            timeout=30,
            what="forwarding under way, an instance in flight",
        )
        router.kill()
        # One lane, one send at a time: the instance in flight at the crash
        # (none if its answer came in the moment before the kill).
        in_flight = len(list((spool / "sending").iterdir()))
        assert in_flight <= 1
        router.start()
        wait_until(
            lambda: not spool_files(spool), timeout=60, what="the spool forwarded after restart"
        )
        held = {r.sop_instance_uid for r in gateway.received()}
        assert set(study.sop_instance_uids) <= held  # none lost
        assert metric(router, "gatewaypool_router_spool_resends_total") >= in_flight
        # At least once: an instance sent again after the crash arrived twice.
        stores = [r["sop_instance_uid"] for r in gateway.index_records()]
        assert len(stores) - len(set(stores)) <= in_flight + 1
    finally:
        gateway.stop()


def json_meta(path: Path) -> dict[str, object]:
    """An entry file's metadata (see gatewaypool_router.spool.store)."""
    data = path.read_bytes()
    length = int.from_bytes(data[-12:-8], "big")
    result: dict[str, object] = json.loads(data[-12 - length : -12])
    return result


def test_sigterm_forwards_what_the_spool_holds_and_leaves_the_rest_for_the_next_start(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    gateway = PynetdicomSink(tmp_path / "gw", ae_title="GW")
    bucket_map = gateways_map([gateway])
    map_file = write_map(tmp_path / "map.json", bucket_map)
    study = studies_for(bucket_map, [0], tmp_path / "data", 6)[0]
    spool = tmp_path / "spool"
    args = spool_args(spool, "--spool-when", "Always")  # a grace of 2 s
    # 1. The gateway is down at SIGTERM: the router forwards for the grace,
    #    then leaves the spool on disk.
    router = start_router(map_file=map_file, extra_args=args)
    assert sender_statuses(router, study.files[:3]) == [0, 0, 0]
    router.stop()
    assert len(spool_files(spool)) == 3
    assert router.events("spool.stopped")[-1]["left_instances"] == 3
    # 2. Its gateway is up at SIGTERM: the router exits once it forwarded everything.
    router = start_router(map_file=map_file, extra_args=[*args, "--shutdown-grace", "20"])
    gateway.start()
    try:
        assert sender_statuses(router, study.files[3:]) == [0, 0, 0]
        router.stop()
        assert not spool_files(spool)
        assert router.events("spool.stopped")[-1]["left_instances"] == 0
        assert {r.sop_instance_uid for r in gateway.received()} == set(study.sop_instance_uids)
    finally:
        gateway.stop()


# -- a full spool, a refusal ------------------------------------------------------------


def test_a_full_spool_answers_out_of_resources_and_serves_again_once_it_drains(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    gateway = PynetdicomSink(tmp_path / "gw", ae_title="GW")
    bucket_map = gateways_map([gateway])
    map_file = write_map(tmp_path / "map.json", bucket_map)
    study = studies_for(bucket_map, [0], tmp_path / "data", 8, size=64)[0]
    one = study.files[0].stat().st_size
    spool = tmp_path / "spool"
    router = start_router(
        map_file=map_file, extra_args=spool_args(spool, "--spool-max-bytes", str(3 * one + 2048))
    )
    statuses = sender_statuses(router, study.files[:6])
    assert statuses[:3] == [0, 0, 0]
    assert statuses[3:] == [0xA700] * 3
    assert len(spool_files(spool)) == 3
    gateway.start()
    try:
        wait_until(lambda: not spool_files(spool), timeout=30, what="the spool drained")
        # The sender retries what was refused, as a modality does: each is taken now.
        pending = list(study.files[3:])

        def next_taken() -> bool:
            if sender_statuses(router, pending[:1]) == [0]:
                pending.pop(0)
            return not pending

        wait_until(next_taken, timeout=30, what="the refused instances taken on retry")
        wait_until(lambda: gateway.received_count() == 8, timeout=30, what="all delivered")
    finally:
        gateway.stop()


def test_a_permanent_refusal_is_kept_aside_with_its_status(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    gateway = PynetdicomSink(tmp_path / "gw", ae_title="GW", status=0xC001)
    gateway.start()
    try:
        bucket_map = gateways_map([gateway])
        map_file = write_map(tmp_path / "map.json", bucket_map)
        study = studies_for(bucket_map, [0], tmp_path / "data", 2)[0]
        spool = tmp_path / "spool"
        router = start_router(
            map_file=map_file, extra_args=spool_args(spool, "--spool-when", "Always")
        )
        assert sender_statuses(router, study.files) == [0, 0]
        wait_until(
            lambda: metric(router, "gatewaypool_router_spool_refusals_total") == 2,
            timeout=30,
            what="both instances refused",
        )
        assert len(list((spool / "refused").glob("*.inst"))) == 2
        notes = [json.loads(p.read_text()) for p in (spool / "refused").glob("*.json")]
        assert [note["status"] for note in notes] == [0xC001, 0xC001]
        assert not spool_files(spool)
        assert metric(router, "gatewaypool_router_spool_refused_instances") == 2
        assert router.events("spool.refused")
        # A person dealt with them: deleting them frees their room.
        assert metric(router, "gatewaypool_router_spool_held_bytes") > 0
        for path in (spool / "refused").iterdir():
            path.unlink()
        wait_until(
            lambda: metric(router, "gatewaypool_router_spool_held_bytes") == 0,
            timeout=10,
            what="the refused instances' room freed",
        )
    finally:
        gateway.stop()


# -- durability at the system-call level ------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/usr/bin/strace"), reason="strace is not installed")
def test_success_follows_fsync_of_the_file_the_rename_and_fsync_of_the_folder(
    tmp_path: Path,
) -> None:
    gateway = PynetdicomSink(tmp_path / "gw", ae_title="GW")
    bucket_map = gateways_map([gateway])
    map_file = write_map(tmp_path / "map.json", bucket_map)
    study = studies_for(bucket_map, [0], tmp_path / "data", 1)[0]
    spool = tmp_path / "spool"
    trace = tmp_path / "strace.txt"
    router = TracedRouter(
        tmp_path / "router",
        map_file=map_file,
        extra_args=spool_args(spool, "--spool-when", "Always"),
        trace=trace,
    )
    with router:
        assert sender_statuses(router, study.files) == [0]
    lines = trace.read_text().splitlines()
    part = next(i for i, line in enumerate(lines) if "fsync(" in line and ".part>" in line)
    renamed = next(i for i, line in enumerate(lines) if "rename" in line and ".part" in line)
    folder = next(
        i for i, line in enumerate(lines) if "fsync(" in line and "/queue/" in line and i > renamed
    )
    sender_socket = f"127.0.0.1:{router.port}->"
    answered = next(
        i
        for i, line in enumerate(lines)
        if i > part and sender_socket in line and ("sendto(" in line or "sendmsg(" in line)
    )
    assert part < renamed < folder < answered, "\n".join(lines[part : answered + 1])
    assert ".inst" in lines[renamed]


class TracedRouter(RouterProcess):
    """The router under ``strace -f -yy``: every fsync, rename and socket send, with paths."""

    def __init__(
        self, work_dir: Path, *, trace: Path, map_file: Path, extra_args: Sequence[str]
    ) -> None:
        super().__init__(work_dir, map_file=map_file, extra_args=extra_args)
        self._trace = trace

    def _command(self) -> list[str]:
        calls = "fsync,fdatasync,rename,renameat,renameat2,sendto,sendmsg"
        strace = ["strace", "-f", "-yy", "-e", f"trace={calls}", "-o", str(self._trace)]
        return strace + super()._command()

    def stop(self, *, timeout: float | None = None) -> int | None:
        """SIGTERM to the router itself; strace ends with it."""
        pid = self.pid
        if pid is not None and self.is_running():
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            for child in children:
                os.kill(int(child), signal.SIGTERM)
            wait_until(lambda: not self.is_running(), timeout=30, what="the traced router's exit")
        return super().stop(timeout=timeout)
