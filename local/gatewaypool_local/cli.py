"""``gatewaypool local`` (the demo) and ``gatewaypool bench`` (the benchmark)."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``local`` subcommand (entry point ``gatewaypool.commands``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "local",
        help="demo: a router in front of three local gateways, real DICOM traffic, a report",
        description=(
            "Start a router and three local gateways (DCMTK storescp, Orthanc, pynetdicom), "
            "send generated head-CT studies through the router over several associations and "
            "report where each study landed, throughput, split studies and lost instances."
        ),
    )
    parser.add_argument(
        "--studies", type=int, default=8, help="studies to send (default %(default)s)"
    )
    parser.add_argument(
        "--instances", type=int, default=48, help="slices per study (default %(default)s)"
    )
    parser.add_argument(
        "--size", type=int, default=512, help="rows and columns (default %(default)s)"
    )
    parser.add_argument(
        "--associations", type=int, default=4, help="concurrent senders (default %(default)s)"
    )
    parser.add_argument("--work-dir", type=Path, help="keep everything in this folder")
    parser.add_argument(
        "--spool",
        action="store_true",
        help="give the router a spool and stop one gateway while the studies flow: every "
        "instance is still answered Success and reaches its gateway once it is back",
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="with --spool, how long the gateway stays stopped (default %(default)s)",
    )
    parser.set_defaults(func=run_local)


def _missing_extra(command: str) -> str | None:
    """Why `command` cannot run here, if the ``local`` extra is not installed."""
    try:
        import numpy  # noqa: F401 - only checked for
    except ModuleNotFoundError:
        return (
            f"gatewaypool {command}: needs the 'local' extra (numpy, for synthetic studies): "
            "pip install 'gatewaypool[local]'"
        )
    return None


def run_local(args: argparse.Namespace) -> int:
    missing = _missing_extra("local")
    if missing is not None:
        print(missing)
        return 2
    from gatewaypool_local.demo import run_demo

    if args.studies < 2 or args.instances < 2:
        print("gatewaypool local: --studies and --instances must be at least 2")
        return 2
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="gatewaypool-demo-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    try:
        report = run_demo(
            work_dir,
            studies=args.studies,
            instances=args.instances,
            size=args.size,
            associations=args.associations,
            spool=args.spool,
            outage_seconds=args.outage,
        )
    finally:
        if args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0 if report.ok else 1


def register_bench(subparsers: Any) -> None:
    """Add the ``bench`` subcommand (entry point ``gatewaypool.commands``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmark: storescu straight to storescp vs through the router, with and without "
        "a spool; CPU, latency, memory",
        description=(
            "Throughput of DCMTK storescu straight to storescp, straight to the gateway each "
            "study's bucket names (the limit), through the router, and through routers with a "
            "spool (--spool-when Always, and GatewayUnavailable with every gateway up) in the "
            "work dir; the router's CPU per GB forwarded, the latency it adds per C-STORE, and "
            "its peak RSS per worker and in total, also while streaming one large multi-frame "
            "instance."
        ),
    )
    parser.add_argument(
        "--instances", type=int, default=1000, help="CT instances to send (default %(default)s)"
    )
    parser.add_argument(
        "--multiframe-mb",
        type=int,
        default=1024,
        help="size of the multi-frame instance streamed for the memory figure (default "
        "%(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="runs per case; the best counts")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="the router's --workers (default %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=512,
        help="rows and columns of the CT instances (default "
        "%(default)s; small sizes are for smoke tests)",
    )
    parser.add_argument(
        "--study-size", type=int, default=50, help="instances per study (default %(default)s)"
    )
    parser.add_argument(
        "--latency-instances",
        type=int,
        default=1000,
        help="small instances timed one by one for the added latency (default %(default)s)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="keep the data, the gateways' files and the spools here (default: a temporary "
        "folder, removed at the end); the spools' file system is named in the figures",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        help="append the figures to this file as a dated section (how BENCHMARKS.md keeps "
        "its history)",
    )
    parser.add_argument(
        "--gateways",
        choices=("both", "disk", "fast"),
        default="both",
        help="which gateways' cases run: disk-writing storescp (with the spool cases), "
        "storescp --ignore with a bare forwarder beside the router (issue 23), or both "
        "(default %(default)s)",
    )
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    missing = _missing_extra("bench")
    if missing is not None:
        print(missing)
        return 2
    if min(args.instances, args.rounds, args.workers, args.study_size) < 1:
        print("gatewaypool bench: --instances, --rounds, --workers and --study-size must be >= 1")
        return 2
    if args.latency_instances < 1 or args.multiframe_mb < 1:
        print("gatewaypool bench: --latency-instances and --multiframe-mb must be >= 1")
        return 2
    from gatewaypool_local.bench.run import main as bench_main

    result: int = bench_main(args)
    return result
