"""The local demo: a router in front of three real gateways, real traffic.

Three gateways of three kinds (DCMTK storescp, Orthanc, a pynetdicom SCP)
stand where a cluster's gateway pods would; head-CT studies go through the
router over several concurrent associations, one study split over two of
them and one association carrying several studies, as modalities do. The
report says where each study landed and proves nothing was split or lost.

With ``--spool`` the router has a spool, and one gateway (the pynetdicom
SCP) is killed while the studies flow and started again some seconds
later: every instance is still answered Success, and reaches its gateway
once that is back.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gatewaypool.bucketmap import BucketMap, balanced_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.peers.dcmtk import StoreSCP, storescu
from gatewaypool_local.peers.gateway import GatewayPeer, map_gateways
from gatewaypool_local.peers.orthanc import Orthanc
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_bytes, generate_study

KINDS = ("DCMTK storescp", "Orthanc", "pynetdicom SCP")
#: With ``--spool``, the gateway stopped mid-run: the pynetdicom SCP, which
#: holds only whole instances when stopped (storescp would keep a partial file).
OUTAGE_GATEWAY = 2
#: How long the demo waits for the spool to deliver once the gateway is back.
_DELIVERY_TIMEOUT = 300.0


@dataclass
class OutageReport:
    """The gateway stopped mid-run, and what the router's spool did meanwhile."""

    gateway: str
    held_before: int
    share: int
    seconds_down: float
    spooled: int = 0
    forwarded: int = 0
    resends: int = 0
    left: int = 0


@dataclass
class StudyResult:
    """Where one study went."""

    study: Study
    expected_gateway: str
    found_on: dict[str, int] = field(default_factory=dict)

    @property
    def received(self) -> int:
        return sum(self.found_on.values())

    @property
    def split(self) -> bool:
        return len(self.found_on) > 1


@dataclass
class DemoReport:
    """Everything the demo measured; ``ok`` is what its exit code says."""

    studies: list[StudyResult]
    instances_sent: int
    bytes_sent: int
    seconds: float
    lost: int
    misrouted: int
    identical: int
    compared: int
    sender_failures: int
    outage: OutageReport | None = None

    @property
    def split_studies(self) -> int:
        return sum(1 for result in self.studies if result.split)

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.split_studies == 0
            and self.misrouted == 0
            and self.identical == self.compared
            and self.sender_failures == 0
            and (self.outage is None or self.outage.left == 0)
        )


def plan_associations(studies: Sequence[Study], associations: int) -> list[list[Path]]:
    """Spread the studies' files over ``associations`` senders.

    The first study is split over the first two associations (a modality
    that reconnects mid-study); the others are dealt round robin, so an
    association usually carries several studies.
    """
    associations = max(2, associations)
    plan: list[list[Path]] = [[] for _ in range(associations)]
    first = studies[0].files
    half = len(first) // 2
    plan[0].extend(first[:half])
    plan[1].extend(first[half:])
    for index, study in enumerate(studies[1:]):
        plan[index % associations].extend(study.files)
    return [files for files in plan if files]


class _Progress:
    """One status line, redrawn in place on a terminal, printed sparsely elsewhere."""

    def __init__(self, out: TextIO, total: int) -> None:
        self._out = out
        self._total = total
        self._tty = out.isatty()
        self._last_printed = -1

    def show(self, done: int) -> None:
        width = 30
        filled = int(width * done / self._total) if self._total else width
        bar = "#" * filled + "." * (width - filled)
        line = f"  [{bar}] {done}/{self._total} instances at the gateways"
        if self._tty:
            self._out.write("\r" + line)
            self._out.flush()
        elif done != self._last_printed and (
            done == self._total or done - self._last_printed >= max(1, self._total // 4)
        ):
            self._out.write(line + "\n")
            self._last_printed = done

    def close(self) -> None:
        if self._tty:
            self._out.write("\n")


class _Outage(threading.Thread):
    """Stop a gateway once it holds its first instance, start it again later.

    The outage lasts `seconds` from the stop: a timed event of the scenario,
    not a synchronisation. If the senders finish first, it begins then.
    """

    def __init__(
        self, gateway: GatewayPeer, *, name: str, share: int, seconds: float, done: threading.Event
    ) -> None:
        super().__init__(name="outage", daemon=True)
        self._gateway = gateway
        self._share = share
        self._seconds = seconds
        self._senders_done = done
        self.report = OutageReport(gateway=name, held_before=0, share=share, seconds_down=0.0)

    def run(self) -> None:
        while self._gateway.received_count() < 1 and not self._senders_done.is_set():
            self._senders_done.wait(0.05)
        self.report.held_before = self._gateway.received_count()
        self._gateway.kill()  # as a crash: its associations end at once
        stopped = time.monotonic()
        time.sleep(self._seconds)  # the outage itself, not a wait for something
        self._gateway.start()
        self.report.seconds_down = time.monotonic() - stopped


def _watch(
    gateways: Sequence[GatewayPeer], total: int, progress: _Progress, stop: threading.Event
) -> None:
    while not stop.wait(0.25):
        progress.show(min(total, sum(g.received_count() for g in gateways)))


def run_demo(
    work_dir: Path,
    *,
    studies: int = 8,
    instances: int = 48,
    size: int = 512,
    associations: int = 4,
    spool: bool = False,
    outage_seconds: float = 10.0,
    out: TextIO = sys.stdout,
) -> DemoReport:
    """Run the whole demo in ``work_dir`` and print the report to ``out``.

    With `spool`, the router spools in ``work_dir/spool`` and one gateway is
    stopped mid-run for `outage_seconds`.
    """
    say: Callable[[str], None] = lambda text: print(text, file=out, flush=True)  # noqa: E731
    say("GatewayPool local demo")
    say(f"  work folder  {work_dir}")
    say(f"  generating {studies} head-CT studies of {instances} slices ({size}x{size}, 16 bit)")
    data_dir = work_dir / "studies"
    generated = [
        generate_study(data_dir, study_index=i, instances=instances, rows=size, columns=size)
        for i in range(studies)
    ]
    gateways: list[GatewayPeer] = [
        StoreSCP(work_dir / "gw-0-storescp", ae_title="STORESCP"),
        Orthanc(work_dir / "gw-1-orthanc", ae_title="ORTHANC"),
        PynetdicomSink(work_dir / "gw-2-pynetdicom", ae_title="PYNETDICOM"),
    ]
    router: RouterProcess | None = None
    try:
        for gateway in gateways:
            gateway.start()
        router = RouterProcess(
            work_dir / "router",
            gateways=[f"{g.ae_title}@{g.host}:{g.port}" for g in gateways],
            extra_args=["--spool-dir", str(work_dir / "spool")] if spool else [],
        )
        router.start()
        say(f"  router       GATEWAYPOOL at {router.host}:{router.port}")
        say(f"               metrics at http://{router.host}:{router.http_port}/metrics")
        for index, (gateway, kind) in enumerate(zip(gateways, KINDS, strict=True)):
            address = f"{gateway.host}:{gateway.port}"
            say(f"  gateway gw-{index} {gateway.ae_title:<10} {kind:<15} {address}")
        plan = plan_associations(generated, associations)
        total = sum(len(s.files) for s in generated)
        total_bytes = sum(s.total_bytes for s in generated)
        say(
            f"  sending {total} instances ({total_bytes / 1e6:.1f} MB) over "
            f"{len(plan)} concurrent associations (DCMTK storescu)"
        )
        progress = _Progress(out, total)
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(gateways, total, progress, stop))
        failures: list[str] = []
        done = threading.Event()
        outage = (
            _Outage(
                gateways[OUTAGE_GATEWAY],
                name=f"gw-{OUTAGE_GATEWAY}",
                share=_share(generated, gateways, OUTAGE_GATEWAY),
                seconds=outage_seconds,
                done=done,
            )
            if spool
            else None
        )
        started = time.monotonic()
        watcher.start()
        senders = [
            threading.Thread(target=_send, args=(router, files, f"MODALITY{i}", failures))
            for i, files in enumerate(plan)
        ]
        for thread in [*senders, *([outage] if outage is not None else [])]:
            thread.start()
        for sender in senders:
            sender.join()
        done.set()
        if outage is not None:
            _await_delivery(outage, gateways, total, router)
        seconds = time.monotonic() - started
        stop.set()
        watcher.join()
        progress.show(min(total, sum(g.received_count() for g in gateways)))
        progress.close()
        report = _collect(
            generated,
            gateways=gateways,
            total=total,
            total_bytes=total_bytes,
            seconds=seconds,
            sender_failures=len(failures),
        )
        if outage is not None:
            report.outage = _spool_figures(outage.report, router)
        for failure in failures:
            say(f"  sender problem: {failure}")
        _print_report(report, out, router_url=f"http://{router.host}:{router.http_port}")
        return report
    finally:
        if router is not None:
            router.stop()
        for gateway in gateways:
            gateway.stop()


def _show_locate(url: str, study_uid: str, say: Callable[[str], None]) -> None:
    """Print `gatewaypool locate` for one study, and what it answers while the router runs."""
    say("")
    say('  Where is my study? Ask the routers (see the README\'s "Where is my study?"):')
    say(f"  $ gatewaypool locate {study_uid} --router {url}")
    done = subprocess.run(
        [sys.executable, "-m", "gatewaypool.cli", "locate", study_uid, "--router", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for line in (done.stdout or done.stderr).splitlines():
        say(f"  {line}")


def _share(generated: Sequence[Study], gateways: Sequence[GatewayPeer], index: int) -> int:
    """How many instances the map sends to gateway `index`."""
    bucket_map = _demo_map(gateways)
    return sum(
        len(s.files)
        for s in generated
        if bucket_map.owners[study_bucket(s.study_uid, bucket_map.buckets)] == index
    )


def _demo_map(gateways: Sequence[GatewayPeer]) -> BucketMap:
    """The map the router builds from the gateways, in order (``--gateway``)."""
    return balanced_map(map_gateways(gateways))


def _await_delivery(
    outage: _Outage, gateways: Sequence[GatewayPeer], total: int, router: RouterProcess
) -> None:
    """Wait for the gateway's return, then for every instance at the gateways, spool empty."""
    outage.join()
    with contextlib.suppress(TimeoutError):  # the report then counts what is missing
        wait_until(
            lambda: (
                sum(g.received_count() for g in gateways) >= total and not _spool_backlog(router)
            ),
            timeout=_DELIVERY_TIMEOUT,
            what="every instance delivered from the spool",
        )


def _spool_backlog(router: RouterProcess) -> int:
    metrics = router.metrics()
    return int(sum(v for (name, _), v in metrics.items() if name == SPOOL_INSTANCES))


SPOOL_INSTANCES = "gatewaypool_router_spool_instances"


def _spool_figures(report: OutageReport, router: RouterProcess) -> OutageReport:
    report.spooled = int(router.metric("gatewaypool_router_spool_spooled_total"))
    report.forwarded = int(router.metric("gatewaypool_router_spool_forwarded_total"))
    report.resends = int(router.metric("gatewaypool_router_spool_resends_total"))
    report.left = _spool_backlog(router)
    return report


def _outage_line(report: OutageReport) -> str:
    return (
        f"outage: {report.gateway} stopped holding {report.held_before} of its "
        f"{report.share} instances, back after {report.seconds_down:.1f} s"
    )


def _send(router: RouterProcess, files: list[Path], calling_ae: str, failures: list[str]) -> None:
    result = storescu(
        router.host, router.port, files, calling_ae=calling_ae, called_ae=router.ae_title
    )
    if result.returncode != 0:
        failures.append(
            f"{calling_ae}: storescu exited {result.returncode}: {result.stderr[-300:]}"
        )


def _collect(
    generated: list[Study],
    *,
    gateways: list[GatewayPeer],
    total: int,
    total_bytes: int,
    seconds: float,
    sender_failures: int,
) -> DemoReport:
    names = [f"gw-{i}" for i in range(len(gateways))]
    bucket_map = _demo_map(gateways)
    digests: dict[str, str] = {}
    study_of: dict[str, Study] = {}
    for study in generated:
        for path, sop in zip(study.files, study.sop_instance_uids, strict=True):
            digests[sop] = hashlib.sha256(dataset_bytes(path)).hexdigest()
            study_of[sop] = study
    results = {
        s.study_uid: StudyResult(
            study=s,
            expected_gateway=bucket_map.gateway_for(
                study_bucket(s.study_uid, bucket_map.buckets)
            ).name,
        )
        for s in generated
    }
    seen: set[str] = set()
    identical = compared = 0
    holders: dict[str, set[str]] = defaultdict(set)
    for name, gateway in zip(names, gateways, strict=True):
        for received in gateway.received():
            result = results.get(received.study_uid)
            if result is None:
                continue
            result.found_on[name] = result.found_on.get(name, 0) + 1
            holders[received.sop_instance_uid].add(name)
            seen.add(received.sop_instance_uid)
            compared += 1
            if received.dataset_sha256() == digests.get(received.sop_instance_uid):
                identical += 1
    misrouted = sum(
        1 for r in results.values() if any(name != r.expected_gateway for name in r.found_on)
    )
    return DemoReport(
        studies=list(results.values()),
        instances_sent=total,
        bytes_sent=total_bytes,
        seconds=seconds,
        lost=len(set(digests) - seen),
        misrouted=misrouted,
        identical=identical,
        compared=compared,
        sender_failures=sender_failures,
    )


def _print_report(report: DemoReport, out: TextIO, *, router_url: str) -> None:
    def say(text: str = "") -> None:
        print(text, file=out)

    say()
    say(f"  {'study (StudyInstanceUID)':<64} {'sent':>5} {'received':>9}  gateway")
    for result in report.studies:
        where = ", ".join(f"{name} ({count})" for name, count in sorted(result.found_on.items()))
        say(
            f"  {result.study.study_uid:<64} {len(result.study.files):>5} "
            f"{result.received:>9}  {where or 'nowhere'}"
        )
    rate = report.instances_sent / report.seconds if report.seconds else 0.0
    megabytes = report.bytes_sent / 1e6
    say()
    say(
        f"  throughput        {report.instances_sent} instances in {report.seconds:.2f} s: "
        f"{rate:.0f} instances/s, {megabytes / report.seconds if report.seconds else 0:.1f} MB/s"
    )
    say(f"  split studies     {report.split_studies}")
    say(f"  lost instances    {report.lost}")
    say(f"  misrouted studies {report.misrouted} (each study on the gateway its bucket names)")
    say(f"  byte-identical    {report.identical}/{report.compared} data sets as sent")
    outage = report.outage
    if outage is not None:
        say(f"  {_outage_line(outage)}")
        say(
            f"  spool             {outage.spooled} instances spooled, {outage.forwarded} "
            f"forwarded, {outage.resends} resent, {outage.left} left"
        )
        say(f"  sender failures   {report.sender_failures}")
    say(f"  result            {'OK' if report.ok else 'FAILED'}")
    if report.studies:
        _show_locate(router_url, report.studies[0].study.study_uid, say)
