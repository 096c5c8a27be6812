"""``gatewaypool bench``: what the router costs, in figures.

Same data, same run: DCMTK ``storescu`` straight to one ``storescp`` is the
reference on one association; on four, so is the *limit*, every study sent
straight to the gateway its bucket names. The same files through the router
to three ``storescp`` gateways give the ratios. Then the router's CPU per GB
forwarded, the latency it adds per C-STORE (a pynetdicom sender timing each
round trip of small instances, direct and routed) and its peak memory, per
worker and in total, also while it streams one very large multi-frame
instance. The spool paths send the routed path's lanes through routers of
their own with ``--spool-dir`` in the work dir (on disk, where a router's
volume would be, and the report names its file system): ``--spool-when
Always`` against cut-through, and ``GatewayUnavailable`` with every gateway
up. :mod:`gatewaypool_local.bench.cases` holds the cases,
:mod:`gatewaypool_local.bench.measure` the measuring and
:mod:`gatewaypool_local.bench.report` the text.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gatewaypool.bucketmap import BucketMap, Gateway, balanced_map, dump_map
from gatewaypool_local.bench import cases
from gatewaypool_local.bench.measure import (
    Latency,
    ProcessSample,
    file_system,
    load_average,
    sample_tree,
    this_machine,
    tree_cpu_seconds,
)
from gatewaypool_local.bench.report import (
    BenchResult,
    RouterCpu,
    SpoolFigures,
    Throughput,
    render,
)
from gatewaypool_local.peers.dcmtk import StoreSCP, storescu
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import generate_multiframe, generate_study

#: Rows and columns of the latency instances: small, so the transfer time
#: does not hide the per-instance work.
_LATENCY_SIZE = 64


def _say(text: str = "") -> None:
    print(text, flush=True)


def _command(args: argparse.Namespace) -> str:
    words = [
        "gatewaypool bench",
        f"--instances {args.instances}",
        f"--multiframe-mb {args.multiframe_mb}",
        f"--rounds {args.rounds}",
        f"--workers {args.workers}",
    ]
    if args.size != 512:
        words.append(f"--size {args.size}")
    if args.study_size != 50:
        words.append(f"--study-size {args.study_size}")
    if args.latency_instances != 200:
        words.append(f"--latency-instances {args.latency_instances}")
    return " ".join(words)


class _RouterTree:
    """The router under test: its process, and readings of its whole process tree."""

    def __init__(self, router: RouterProcess, workers: int) -> None:
        self.router = router
        self.workers = workers

    def sample(self) -> list[ProcessSample]:
        if self.router.pid is None:
            raise RuntimeError("router not started")
        return sample_tree(self.router.pid, workers=self.workers)

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.sample())


def _gateway_of(scp: StoreSCP, name: str) -> Gateway:
    return Gateway(name=name, host=scp.host, port=scp.port, ae_title=scp.ae_title)


def main(args: argparse.Namespace) -> int:
    """Run every case, print the figures and append them to ``args.markdown`` if given.

    Without ``--work-dir`` the generated data (over half a gigabyte by
    default, plus what the gateways wrote) goes to a temporary folder that is
    removed at the end; with it, everything stays for inspection.

    Returns
    -------
    int
        0; a failed case raises instead, since a figure from a run that lost
        instances would flatter whichever path lost them.
    """
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        return _run(args, args.work_dir)
    work = Path(tempfile.mkdtemp(prefix="gatewaypool-bench-"))
    try:
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path) -> int:
    machine, load_start = this_machine(), load_average()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    study_size = max(1, args.study_size)
    count = (max(study_size, args.instances) + study_size - 1) // study_size
    _say(
        f"generating {count * study_size} CT instances ({args.size}x{args.size}, 16 bit) "
        f"in {work}; load average {load_start[0]:.2f}"
    )
    studies = []
    for index in range(count):
        study = generate_study(
            work / "data",
            study_index=index,
            instances=study_size,
            rows=args.size,
            columns=args.size,
        )
        studies.append(cases.StudyFiles(study.study_uid, tuple(study.files)))
    files = [f for s in studies for f in s.files]
    size = sum(path.stat().st_size for path in files)
    small = generate_study(
        work / "latency",
        study_index=count,
        instances=max(1, args.latency_instances),
        rows=_LATENCY_SIZE,
        columns=_LATENCY_SIZE,
    )
    # --fork: a gateway serves concurrent associations, as a real one does
    # (a single storescp process takes one association at a time).
    direct_gateway = StoreSCP(work / "direct", ae_title="DIRECT", extra_args=["--fork"])
    scps = [StoreSCP(work / f"gw-{i}", ae_title=f"GW{i}", extra_args=["--fork"]) for i in range(3)]
    router: RouterProcess | None = None
    spool_routers: dict[str, RouterProcess] = {}
    try:
        for scp in [direct_gateway, *scps]:
            scp.start()
        bucket_map = balanced_map([_gateway_of(scp, f"gw-{i}") for i, scp in enumerate(scps)])
        map_file = work / "map.json"
        map_file.write_text(dump_map(bucket_map))
        router = RouterProcess(work / "router", map_file=map_file, workers=args.workers)
        router.start()
        for case in cases.SPOOL_CASES:
            spool_routers[case.label] = RouterProcess(
                work / f"router-{case.label}",
                map_file=map_file,
                workers=args.workers,
                extra_args=case.router_args(work),
            )
            spool_routers[case.label].start()
        tree = _RouterTree(router, args.workers)
        results, cpu, limit_spread, spool_cpu = _throughput(
            args,
            studies,
            size=size,
            direct_gateway=direct_gateway,
            router=router,
            bucket_map=bucket_map,
            tree=tree,
            spool_routers=spool_routers,
            work=work,
        )
        spool = tuple(
            _spool_figures(case, spool_routers[case.label], work, spool_cpu[case.label], args)
            for case in cases.SPOOL_CASES
        )
        latency = Latency(
            direct=tuple(
                cases.round_trips(
                    direct_gateway.host, direct_gateway.port, direct_gateway.ae_title, small.files
                )
            ),
            routed=tuple(cases.round_trips(router.host, router.port, router.ae_title, small.files)),
        )
        memory = tuple(tree.sample())
    finally:
        for started in [router, *spool_routers.values()]:
            if started is not None:
                started.stop()
        for scp in [direct_gateway, *scps]:
            scp.stop()

    big = _multiframe(work, args.multiframe_mb, args.workers)
    cpu.append(big.cpu)
    result = BenchResult(
        command=_command(args),
        date=date,
        machine=machine,
        load_start=load_start,
        load_end=load_average(),
        workers=args.workers,
        instances=len(files),
        data_bytes=size,
        rows=args.size,
        study_size=study_size,
        studies=len(studies),
        rounds=args.rounds,
        throughput=tuple(results),
        limit_spread=limit_spread,
        cpu=tuple(cpu),
        latency=latency,
        latency_instance_bytes=small.total_bytes // small.instances,
        memory=memory,
        multiframe_bytes=big.size,
        multiframe_seconds=big.seconds,
        multiframe_memory=big.memory,
        spool=spool,
    )
    text = render(result)
    _say()
    _say(text)
    if args.markdown:
        with args.markdown.open("a") as out:
            out.write("\n" + text)
        _say(f"figures appended to {args.markdown}")
    return 0


def _throughput(
    args: argparse.Namespace,
    studies: list[cases.StudyFiles],
    *,
    size: int,
    direct_gateway: StoreSCP,
    router: RouterProcess,
    bucket_map: BucketMap,
    tree: _RouterTree,
    spool_routers: dict[str, RouterProcess],
    work: Path,
) -> tuple[list[Throughput], list[RouterCpu], str, dict[str, list[RouterCpu]]]:
    """Run the direct, limit, routed and spool cases on 1 and 4 associations.

    Returns
    -------
    tuple
        The best round of each case; the router's CPU over all rounds of
        each routed case (read around those rounds only, so the other cases'
        idle router does not count); how the limit case spread the studies;
        each spool router's CPU over the rounds of its cases, by label.
    """
    instances = sum(len(s.files) for s in studies)
    results: list[Throughput] = []
    cpu: list[RouterCpu] = []
    spool_cpu: dict[str, list[RouterCpu]] = {case.label: [] for case in cases.SPOOL_CASES}
    trees = {"routed": tree} | {
        label: _RouterTree(spooler, args.workers) for label, spooler in spool_routers.items()
    }
    spools = {case.label: case for case in cases.SPOOL_CASES}
    spread = ""
    for associations in (1, 4):
        study_lanes = cases.lanes(studies, associations)
        plans = {
            "direct": cases.through_one_peer(
                study_lanes,
                host=direct_gateway.host,
                port=direct_gateway.port,
                called_ae=direct_gateway.ae_title,
            ),
            "routed": cases.through_one_peer(
                study_lanes, host=router.host, port=router.port, called_ae=router.ae_title
            ),
        }
        if associations > 1:
            plans["limit"] = cases.straight_to_owners(study_lanes, bucket_map)
            spread = cases.studies_per_gateway(plans["limit"], bucket_map.gateways)
        for label, spooler in spool_routers.items():
            plans[label] = cases.through_one_peer(
                study_lanes, host=spooler.host, port=spooler.port, called_ae=spooler.ae_title
            )
        for label, plan in plans.items():
            measured = trees.get(label)
            before = measured.cpu_seconds() if measured is not None else 0.0
            spool = spools.get(label)
            drained = (
                None
                if spool is None
                else functools.partial(cases.spool_is_empty, work / spool.folder)
            )
            timings = [cases.run_lanes(plan, delivered=drained) for _ in range(args.rounds)]
            best = min(t.answered for t in timings)
            # Only a router that answers from its spool delivers after the answers.
            delivered = (
                min(t.delivered for t in timings)
                if spool is not None and spool.when == "Always"
                else None
            )
            if measured is not None:
                used = RouterCpu(
                    f"{associations} association{'s' if associations > 1 else ''}",
                    measured.cpu_seconds() - before,
                    size * args.rounds,
                )
                (cpu if spool is None else spool_cpu[label]).append(used)
            results.append(Throughput(label, associations, instances, size, best, delivered))
            shown = f"  {label} x{associations}: {instances / best:.0f} instances/s"
            if delivered is not None:
                shown += f", delivered {instances / delivered:.0f} instances/s"
            _say(shown)
    return results, cpu, spread, spool_cpu


def _spool_figures(
    case: cases.SpoolCase,
    spooler: RouterProcess,
    work: Path,
    cpu: list[RouterCpu],
    args: argparse.Namespace,
) -> SpoolFigures:
    """What one spool router did over its cases, from its /metrics, and its peak RSS."""
    folder = work / case.folder
    return SpoolFigures(
        label=case.label,
        when=case.when,
        folder=str(folder),
        file_system=file_system(folder),
        spooled=int(spooler.metric("gatewaypool_router_spool_spooled_total")),
        forwarded=int(spooler.metric("gatewaypool_router_spool_forwarded_total")),
        resends=int(spooler.metric("gatewaypool_router_spool_resends_total")),
        refused=int(spooler.metric("gatewaypool_router_spool_refusals_total")),
        cpu=tuple(cpu),
        memory=tuple(_RouterTree(spooler, args.workers).sample()),
    )


@dataclass(frozen=True)
class _Multiframe:
    size: int
    seconds: float
    memory: tuple[ProcessSample, ...]
    cpu: RouterCpu


def _multiframe(work: Path, megabytes: int, workers: int) -> _Multiframe:
    """Peak RSS and CPU of a fresh router while one huge instance streams through it.

    A fresh router, so its VmHWM shows what streaming costs and not what the
    throughput runs left behind.
    """
    path = work / "multiframe.dcm"
    instance = generate_multiframe(path, size_bytes=megabytes * 2**20)
    gateway = StoreSCP(work / "gw-big", ae_title="BIG", extra_args=["--ignore"])
    router: RouterProcess | None = None
    try:
        gateway.start()
        router = RouterProcess(
            work / "router-big",
            gateways=[f"{gateway.ae_title}@{gateway.host}:{gateway.port}"],
            workers=workers,
        )
        router.start()
        tree = _RouterTree(router, workers)
        before = tree.cpu_seconds()
        started = time.perf_counter()
        result = storescu(router.host, router.port, [path], called_ae=router.ae_title)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"multi-frame send failed: {result.stderr[-400:]}")
        samples = tree.sample()
        cpu = RouterCpu("multi-frame", tree_cpu_seconds(samples) - before, instance.total_bytes)
        return _Multiframe(instance.total_bytes, seconds, tuple(samples), cpu)
    finally:
        if router is not None:
            router.stop()
        gateway.stop()
        path.unlink(missing_ok=True)
