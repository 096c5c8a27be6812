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
up. The fast-gateway case (issue 23) repeats the direct, limit and routed
paths against ``storescp --ignore`` gateways, which store nothing and so
hide none of the router's cost, beside a bare splice forwarder
(:mod:`gatewaypool_local.bench.bare`) between the same senders and
gateways: the router's CPU per GB is given as a multiple of its.
:mod:`gatewaypool_local.bench.cases` holds the cases,
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
from gatewaypool_local.bench.bare import BareForwarder
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
    FastFigures,
    RouterCpu,
    SpoolFigures,
    Throughput,
    render,
)
from gatewaypool_local.peers.dcmtk import StoreSCP, storescu
from gatewaypool_local.peers.process import ManagedProcess
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import generate_multiframe, generate_study

#: Rows and columns of the latency instances: small, so the transfer time
#: does not hide the per-instance work.
_LATENCY_SIZE = 64
#: The fast gateways' flags: every association in a child, every byte
#: received, none stored.
_FAST_SCP = ["--fork", "--ignore"]


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
    if args.gateways != "both":
        words.append(f"--gateways {args.gateways}")
    return " ".join(words)


class _RouterTree:
    """The router under test: its process, and readings of its whole process tree."""

    def __init__(self, router: ManagedProcess, workers: int) -> None:
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
    disk, fast = args.gateways in ("both", "disk"), args.gateways in ("both", "fast")
    # --fork: a gateway serves concurrent associations, as a real one does
    # (a single storescp process takes one association at a time).
    direct_gateway = StoreSCP(work / "direct", ae_title="DIRECT", extra_args=["--fork"])
    scps = [StoreSCP(work / f"gw-{i}", ae_title=f"GW{i}", extra_args=["--fork"]) for i in range(3)]
    # The fast gateways (issue 23) receive every byte and store none
    # (--ignore): gateways that do not hide the router's own cost.
    fast_direct = StoreSCP(work / "direct-fast", ae_title="DIRECT", extra_args=_FAST_SCP)
    fast_scps = [
        StoreSCP(work / f"gw-fast-{i}", ae_title=f"GW{i}", extra_args=_FAST_SCP) for i in range(3)
    ]
    gateways = ([direct_gateway, *scps] if disk else []) + (
        [fast_direct, *fast_scps] if fast else []
    )
    routers: dict[str, RouterProcess] = {}
    bare: BareForwarder | None = None
    try:
        for scp in gateways:
            scp.start()
        routers, maps = _routers(args, work, scps if disk else None, fast_scps if fast else None)
        if fast:
            bare = BareForwarder(work / "bare", targets=[(scp.host, scp.port) for scp in fast_scps])
            bare.start()
        for started in routers.values():
            started.start()
        measured = _throughput(
            args,
            studies,
            size=size,
            direct={"routed": direct_gateway, "routed-fast": fast_direct},
            routers=routers,
            bare=bare,
            maps=maps,
            work=work,
        )
        spool = tuple(
            _spool_figures(case, routers[case.label], work, measured.spool_cpu[case.label], args)
            for case in cases.SPOOL_CASES
            if disk
        )
        latency = _latency(direct_gateway, routers["routed"], small.files) if disk else None
        fast_latency = _latency(fast_direct, routers["routed-fast"], small.files) if fast else None
        memory = {
            label: tuple(_RouterTree(routers[label], args.workers).sample())
            for label in ("routed", "routed-fast")
            if label in routers
        }
    finally:
        for started in routers.values():
            started.stop()
        if bare is not None:
            bare.stop()
        for scp in gateways:
            scp.stop()

    big = _multiframe(work, args.multiframe_mb, args.workers)
    cpu = [*measured.cpu["routed"], big.cpu]
    fast_figures = (
        FastFigures(
            limit_spread=measured.spread["routed-fast"],
            cpu=tuple(measured.cpu["routed-fast"]),
            bare_cpu=tuple(measured.cpu["bare-fast"]),
            latency=fast_latency,
            memory=memory["routed-fast"],
        )
        if fast_latency is not None
        else None
    )
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
        throughput=tuple(measured.results),
        limit_spread=measured.spread.get("routed", ""),
        cpu=tuple(cpu),
        latency=latency,
        latency_instance_bytes=small.total_bytes // small.instances,
        memory=memory.get("routed", memory.get("routed-fast", ())),
        multiframe_bytes=big.size,
        multiframe_seconds=big.seconds,
        multiframe_memory=big.memory,
        spool=spool,
        fast=fast_figures,
    )
    text = render(result)
    _say()
    _say(text)
    if args.markdown:
        with args.markdown.open("a") as out:
            out.write("\n" + text)
        _say(f"figures appended to {args.markdown}")
    return 0


def _routers(
    args: argparse.Namespace,
    work: Path,
    disk: list[StoreSCP] | None,
    fast: list[StoreSCP] | None,
) -> tuple[dict[str, RouterProcess], dict[str, BucketMap]]:
    """The routers (not started), by case label, and each cut-through router's map.

    ``routed`` and the spool routers route to the `disk` gateways,
    ``routed-fast`` to the `fast` ones; a group that is None has none.
    """
    routers: dict[str, RouterProcess] = {}
    maps: dict[str, BucketMap] = {}
    for label, group in (("routed", disk), ("routed-fast", fast)):
        if group is None:
            continue
        maps[label] = balanced_map([_gateway_of(scp, f"gw-{i}") for i, scp in enumerate(group)])
        map_file = work / f"map-{label}.json"
        map_file.write_text(dump_map(maps[label]))
        routers[label] = RouterProcess(
            work / f"router-{label}", map_file=map_file, workers=args.workers
        )
        if label == "routed":
            for case in cases.SPOOL_CASES:
                routers[case.label] = RouterProcess(
                    work / f"router-{case.label}",
                    map_file=map_file,
                    workers=args.workers,
                    extra_args=case.router_args(work),
                )
    return routers, maps


def _latency(direct: StoreSCP, router: RouterProcess, files: list[Path]) -> Latency:
    """C-STORE round trips of the small instances, straight to `direct` and through `router`."""
    return Latency(
        direct=tuple(cases.round_trips(direct.host, direct.port, direct.ae_title, files)),
        routed=tuple(cases.round_trips(router.host, router.port, router.ae_title, files)),
    )


@dataclass
class _Measured:
    """What the throughput cases gave: best rounds, CPU by case label, limit spreads."""

    results: list[Throughput]
    cpu: dict[str, list[RouterCpu]]
    spread: dict[str, str]
    spool_cpu: dict[str, list[RouterCpu]]


def _throughput(
    args: argparse.Namespace,
    studies: list[cases.StudyFiles],
    *,
    size: int,
    direct: dict[str, StoreSCP],
    routers: dict[str, RouterProcess],
    bare: BareForwarder | None,
    maps: dict[str, BucketMap],
    work: Path,
) -> _Measured:
    """Run the direct, limit, routed, bare and spool cases on 1 and 4 associations.

    `routers` holds the cut-through routers (``routed`` to the disk-writing
    gateways, ``routed-fast`` to the fast ones) and the spool routers, by
    case label; `direct` and `maps` the direct gateway and the map of each
    cut-through router. The CPU of every router and of the bare forwarder
    is read around the rounds of its own case only, so an idle process in
    the other cases does not count.
    """
    instances = sum(len(s.files) for s in studies)
    measured = _Measured([], {"routed": [], "routed-fast": [], "bare-fast": []}, {}, {})
    measured.spool_cpu = {case.label: [] for case in cases.SPOOL_CASES}
    trees: dict[str, _RouterTree] = {
        label: _RouterTree(router, args.workers) for label, router in routers.items()
    }
    if bare is not None:
        trees["bare-fast"] = _RouterTree(bare, 1)
    spools = {case.label: case for case in cases.SPOOL_CASES}
    for associations in (1, 4):
        study_lanes = cases.lanes(studies, associations)
        plans: dict[str, list[list[cases.Send]]] = {}
        for routed, suffix in (("routed", ""), ("routed-fast", "-fast")):
            if routed not in routers:
                continue
            gateway, router = direct[routed], routers[routed]
            plans[f"direct{suffix}"] = cases.through_one_peer(
                study_lanes, host=gateway.host, port=gateway.port, called_ae=gateway.ae_title
            )
            if associations > 1:
                plans[f"limit{suffix}"] = cases.straight_to_owners(study_lanes, maps[routed])
                measured.spread[routed] = cases.studies_per_gateway(
                    plans[f"limit{suffix}"], maps[routed].gateways
                )
            plans[routed] = cases.through_one_peer(
                study_lanes, host=router.host, port=router.port, called_ae=router.ae_title
            )
            if suffix and bare is not None:
                plans["bare-fast"] = cases.through_one_peer(
                    study_lanes, host=bare.host, port=bare.port, called_ae="BARE"
                )
            if not suffix:
                for label in spools:
                    spooler = routers[label]
                    plans[label] = cases.through_one_peer(
                        study_lanes,
                        host=spooler.host,
                        port=spooler.port,
                        called_ae=spooler.ae_title,
                    )
        for label, plan in plans.items():
            tree = trees.get(label)
            before = tree.cpu_seconds() if tree is not None else 0.0
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
            if tree is not None:
                used = RouterCpu(
                    f"{associations} association{'s' if associations > 1 else ''}",
                    tree.cpu_seconds() - before,
                    size * args.rounds,
                )
                (measured.cpu if spool is None else measured.spool_cpu)[label].append(used)
            measured.results.append(
                Throughput(label, associations, instances, size, best, delivered)
            )
            shown = f"  {label} x{associations}: {instances / best:.0f} instances/s"
            if delivered is not None:
                shown += f", delivered {instances / delivered:.0f} instances/s"
            if tree is not None:
                shown += f", {used.per_gb:.2f} s CPU/GB"
            _say(shown)
    return measured


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
