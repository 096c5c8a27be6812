"""The local demo: a router in front of three real gateways, real traffic.

Three gateways of three kinds (DCMTK storescp, Orthanc, a pynetdicom SCP)
stand where a cluster's gateway pods would; head-CT studies go through the
router over several concurrent associations, one study split over two of
them and one association carrying several studies, as modalities do. The
report says where each study landed and proves nothing was split or lost.
"""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from gatewaypool.bucketmap import Gateway as MapGateway
from gatewaypool.bucketmap import balanced_map
from gatewaypool.hashing import study_bucket
from gatewaypool_local.peers.dcmtk import StoreSCP, storescu
from gatewaypool_local.peers.gateway import GatewayPeer
from gatewaypool_local.peers.orthanc import Orthanc
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_bytes, generate_study

KINDS = ("DCMTK storescp", "Orthanc", "pynetdicom SCP")


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
        elif done == self._total or done - self._last_printed >= max(1, self._total // 4):
            self._out.write(line + "\n")
            self._last_printed = done

    def close(self) -> None:
        if self._tty:
            self._out.write("\n")


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
    out: TextIO = sys.stdout,
) -> DemoReport:
    """Run the whole demo in ``work_dir`` and print the report to ``out``."""
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
        started = time.monotonic()
        watcher.start()
        senders = [
            threading.Thread(target=_send, args=(router, files, f"MODALITY{i}", failures))
            for i, files in enumerate(plan)
        ]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
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
        for failure in failures:
            say(f"  sender problem: {failure}")
        _print_report(report, out)
        return report
    finally:
        if router is not None:
            router.stop()
        for gateway in gateways:
            gateway.stop()


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
    bucket_map = balanced_map(
        [
            MapGateway(name=n, host=g.host, port=g.port, ae_title=g.ae_title)
            for n, g in zip(names, gateways, strict=True)
        ]
    )
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


def _print_report(report: DemoReport, out: TextIO) -> None:
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
    say(f"  result            {'OK' if report.ok else 'FAILED'}")
