"""The benchmark's text: every figure, its target, the command, machine, date and load."""

from __future__ import annotations

import dataclasses
from typing import Any

from gatewaypool_local.bench.measure import FileSystem, Latency, Machine, ProcessSample
from gatewaypool_local.bench.report import (
    BenchResult,
    FastFigures,
    RouterCpu,
    SpoolFigures,
    Throughput,
    describe_memory,
    render,
    worker_peak,
)

MIB = 2**20


def _result(**changes: Any) -> BenchResult:
    size = 526_000_000
    result = BenchResult(
        command="gatewaypool bench --instances 1000 --multiframe-mb 1024 --rounds 2 --workers 1",
        date="2026-12-10 09:30 UTC",
        machine=Machine(
            cpus=2, cpu_model="AMD EPYC 7B13", kernel="6.1.0", python="3.11.7", arch="x86_64"
        ),
        load_start=(0.05, 0.10, 0.20),
        load_end=(1.90, 0.80, 0.40),
        workers=1,
        instances=1000,
        data_bytes=size,
        rows=512,
        study_size=50,
        studies=20,
        rounds=2,
        throughput=(
            Throughput("direct", 1, 1000, size, 1.0),  # 1000 instances/s, 526 MB/s
            Throughput("routed", 1, 1000, size, 1.25),  # 0.80 of direct
            Throughput("direct", 4, 1000, size, 0.8),
            Throughput("limit", 4, 1000, size, 0.5),  # 2000 instances/s
            Throughput("routed", 4, 1000, size, 0.55),  # 0.91 of the limit
        ),
        limit_spread="gw-0 7, gw-1 6, gw-2 7",
        cpu=(
            RouterCpu("1 association", 0.526, 2 * size),  # 0.50 s/GB
            RouterCpu("4 associations", 0.263, 2 * size),  # 0.25 s/GB
            RouterCpu("multi-frame", 0.1, 2**30),
        ),
        latency=Latency(
            direct=tuple(0.001 + i * 1e-6 for i in range(200)),
            routed=tuple(0.0012 + i * 1e-6 for i in range(200)),
        ),
        latency_instance_bytes=9_000,
        memory=(ProcessSample(pid=10, role="worker", cpu_ticks=500, peak_rss=62 * MIB),),
        multiframe_bytes=2**30,
        multiframe_seconds=1.3,
        multiframe_memory=(ProcessSample(pid=11, role="worker", cpu_ticks=90, peak_rss=58 * MIB),),
    )
    return dataclasses.replace(result, **changes)


def _line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


def test_the_section_is_dated_and_names_command_machine_and_load() -> None:
    text = render(_result())
    assert text.startswith("### 2026-12-10 09:30 UTC, --workers 1\n")
    assert "Command: `gatewaypool bench --instances 1000" in text
    assert "Machine: 2 CPUs (AMD EPYC 7B13), x86_64, Linux 6.1.0, Python 3.11.7." in text
    assert "Load average (1 min) 0.05 at the start, 1.90 at the end." in text
    assert "loaded machine" not in text
    assert "`--workers 1` (1 worker process)" in text


def test_a_run_started_on_a_loaded_machine_says_so() -> None:
    text = render(_result(load_start=(5.61, 5.15, 5.15)))
    assert "5.61 at the start" in text
    assert "**measured on a loaded machine**, not a final figure" in text


def test_throughput_rows_give_each_ratio_against_its_reference() -> None:
    text = render(_result())
    assert "| storescu → storescp | 1 | 1000 | 526 | reference |" in text
    assert "| storescu → router → 3 storescp | 1 | 800 | 421 | 0.80 of direct |" in text
    assert "| storescu per study → its gateway (limit) | 4 | 2000 | 1052 | reference |" in text
    assert (
        "| storescu → router → 3 storescp | 4 | 1818 | 956 | 1.45 of direct, 0.91 of limit |"
        in text
    )
    assert "(gw-0 7, gw-1 6, gw-2 7 studies), the same 4 senders at once" in text


def test_every_issue_11_figure_has_its_target_and_verdict() -> None:
    text = render(_result())
    rows = {
        "one association": "| one association, routed / direct | 0.80 | ≥ 0.85 | no |",
        "four": "| four associations, routed / limit | 0.91 | ≥ 0.85 | yes |",
        "cpu 1": "| router CPU per GB forwarded, 1 association | 0.50 s | ≤ 0.3 s | no |",
        "cpu 4": "| router CPU per GB forwarded, 4 associations | 0.25 s | ≤ 0.3 s | yes |",
        "p50": "| added latency per C-STORE, p50 | 0.20 ms | ≤ 0.3 ms | yes |",
        "p99": "| added latency per C-STORE, p99 | 0.20 ms | none |  |",
        "rss": "| peak RSS per worker | 62 MiB | < 100 MiB | yes |",
        "rss big": "| peak RSS per worker, 1024 MiB multi-frame | 58 MiB | < 100 MiB | yes |",
    }
    for name, row in rows.items():
        assert row in text, name
    cpu = _line(text, "Router CPU")
    assert "1 association: 0.53 s for 1.05 GB, 0.50 s/GB" in cpu
    latency = _line(text, "C-STORE round trip")
    assert "200 instances of 9 kB" in latency
    assert "direct p50 1.10 ms" in latency
    assert "added by the router p50 0.20 ms, p99 0.20 ms" in latency


def test_memory_with_several_workers_names_each_process_and_the_total() -> None:
    samples = [
        ProcessSample(pid=1, role="supervisor", cpu_ticks=0, peak_rss=29 * MIB),
        ProcessSample(pid=2, role="helper", cpu_ticks=0, peak_rss=13 * MIB),
        ProcessSample(pid=3, role="worker", cpu_ticks=0, peak_rss=65 * MIB),
        ProcessSample(pid=4, role="worker", cpu_ticks=0, peak_rss=101 * MIB),
    ]
    assert describe_memory(samples) == (
        "supervisor 29 MiB, workers 65 MiB / 101 MiB, helper 13 MiB; total 208 MiB"
    )
    assert worker_peak(samples) == 101 * MIB
    text = render(_result(workers=2, memory=tuple(samples)))
    assert "| peak RSS per worker | 101 MiB | < 100 MiB | no |" in text
    assert "`--workers 2` (2 worker processes and a supervisor)" in text


def test_small_smoke_figures_keep_two_decimals() -> None:
    size = 400_000
    text = render(
        _result(
            data_bytes=size,
            rounds=1,
            throughput=(
                Throughput("direct", 1, 20, size, 0.1),
                Throughput("routed", 1, 20, size, 0.2),
                Throughput("direct", 4, 20, size, 0.3),
                Throughput("limit", 4, 20, size, 0.2),
                Throughput("routed", 4, 20, size, 0.2),
            ),
        )
    )
    assert "0.40 MB, 20 studies of 50; best of 1 round." in text
    assert "| storescu → storescp | 1 | 200 | 4.00 | reference |" in text


DISK = FileSystem(mount_point="/", type="ext4", source="/dev/vda")


def _spool(label: str, when: str, *, spooled: int, on: FileSystem = DISK) -> SpoolFigures:
    size = 526_000_000
    return SpoolFigures(
        label=label,
        when=when,
        folder=f"/tmp/gatewaypool-bench-x/{label}",
        file_system=on,
        spooled=spooled,
        forwarded=spooled,
        resends=0,
        refused=0,
        cpu=(
            RouterCpu("1 association", 2.104, 2 * size),  # 2.00 s/GB
            RouterCpu("4 associations", 1.578, 2 * size),  # 1.50 s/GB
        ),
        memory=(ProcessSample(pid=20, role="worker", cpu_ticks=700, peak_rss=64 * MIB),),
    )


def _with_spool(on: FileSystem = DISK) -> BenchResult:
    size = 526_000_000
    plain = _result()
    return dataclasses.replace(
        plain,
        throughput=(
            *plain.throughput,
            # routed x1 took 1.25 s, routed x4 0.55 s.
            Throughput("spool-always", 1, 1000, size, 2.5, delivered_seconds=3.125),
            Throughput("spool-unavailable", 1, 1000, size, 1.5625),
            Throughput("spool-always", 4, 1000, size, 1.1, delivered_seconds=1.375),
            Throughput("spool-unavailable", 4, 1000, size, 0.6875),
        ),
        spool=(
            _spool("spool-always", "Always", spooled=4000, on=on),
            _spool("spool-unavailable", "GatewayUnavailable", spooled=0, on=on),
        ),
    )


def test_spool_rows_follow_the_routed_row_with_their_ratio_to_cut_through() -> None:
    lines = render(_with_spool()).splitlines()
    routed_one = lines.index("| storescu → router → 3 storescp | 1 | 800 | 421 | 0.80 of direct |")
    assert lines[routed_one + 1 : routed_one + 3] == [
        "| storescu → router, spool `Always` → 3 storescp | 1 | 400 | 210 "
        "| 0.50 of routed (delivered: 0.40) |",
        "| storescu → router, spool `GatewayUnavailable` → 3 storescp | 1 | 640 | 337 "
        "| 0.80 of routed |",
    ]
    routed_four = next(
        i
        for i, line in enumerate(lines)
        if line.startswith("| storescu → router → 3 storescp | 4 ")
    )
    assert lines[routed_four + 1 : routed_four + 3] == [
        "| storescu → router, spool `Always` → 3 storescp | 4 | 909 | 478 "
        "| 0.50 of routed (delivered: 0.40) |",
        "| storescu → router, spool `GatewayUnavailable` → 3 storescp | 4 | 1455 | 765 "
        "| 0.80 of routed |",
    ]


def test_the_spool_paragraph_names_the_file_system_and_what_each_spool_did() -> None:
    text = render(_with_spool())
    spool = _line(text, "Spool:")
    assert "on ext4 (/dev/vda, mounted on /)" in spool
    assert "`/tmp/gatewaypool-bench-x/spool-always`" in spool
    assert "in memory" not in text
    always = _line(text, "- `Always`:")
    assert "answered once fsynced in the spool" in always
    assert "1 association 320 instances/s, 4 associations 727 instances/s" in always
    assert "4000 spooled, 4000 forwarded from the spool, 0 resent, 0 refused" in always
    assert "Router CPU: 1 association 2.00 s/GB, 4 associations 1.50 s/GB" in always
    assert "peak RSS per worker 64 MiB" in always
    unavailable = _line(text, "- `GatewayUnavailable`:")
    assert "every gateway up" in unavailable
    assert "0 spooled" in unavailable
    # The spool's CPU is not among issue 11's targets: those are the cut-through router's.
    targets = text[text.index("| figure (issue 11)") :]
    assert "2.00 s" not in targets


def test_a_spool_in_memory_is_marked_as_no_deployment_figure() -> None:
    text = render(_with_spool(on=FileSystem(mount_point="/tmp", type="tmpfs", source="tmpfs")))
    assert "on tmpfs (tmpfs, mounted on /tmp)" in text
    assert "**The spool was on a file system in memory" in text


def test_a_run_without_spool_cases_renders_as_before() -> None:
    text = render(_result())
    assert "spool" not in text.lower()


def _fast_result() -> BenchResult:
    size = 526_000_000
    fast = FastFigures(
        limit_spread="gw-0 7, gw-1 6, gw-2 7",
        cpu=(
            RouterCpu("1 association", 1.052, 2 * size),  # 1.00 s/GB
            RouterCpu("4 associations", 0.631, 2 * size),  # 0.60 s/GB
        ),
        bare_cpu=(
            RouterCpu("1 association", 0.526, 2 * size),  # 0.50 s/GB: 2.00x
            RouterCpu("4 associations", 0.526, 2 * size),  # 0.50 s/GB: 1.20x
        ),
        latency=Latency(
            direct=tuple(0.001 + i * 1e-6 for i in range(200)),
            routed=(*(0.0012 + i * 1e-6 for i in range(199)), 0.01),
        ),
        memory=(ProcessSample(pid=12, role="worker", cpu_ticks=400, peak_rss=70 * MIB),),
    )
    base = _result()
    rows = (
        Throughput("direct-fast", 1, 1000, size, 0.5),  # 2000 instances/s
        Throughput("bare-fast", 1, 1000, size, 0.5),
        Throughput("routed-fast", 1, 1000, size, 0.625),  # 0.80 of direct
        Throughput("direct-fast", 4, 1000, size, 0.4),
        Throughput("limit-fast", 4, 1000, size, 0.25),  # 4000 instances/s
        Throughput("bare-fast", 4, 1000, size, 0.25),
        Throughput("routed-fast", 4, 1000, size, 0.278),  # 0.90 of the limit
    )
    return dataclasses.replace(base, throughput=base.throughput + rows, fast=fast)


def test_the_fast_gateway_case_has_its_own_rows_and_issue_23_targets() -> None:
    text = render(_fast_result())
    assert "| storescu → storescp `--ignore` | 1 | 2000 | 1052 | reference |" in text
    assert (
        "| storescu → router → 3 storescp `--ignore` | 1 | 1600 | 842 | 0.80 of direct-fast |"
        in text
    )
    assert "| storescu → bare splice forwarder → 3 storescp `--ignore` | 4 | 4000 |" in text
    rows = {
        "one": "| one association, routed / direct | 0.80 | ≥ 0.85 | no |",
        "four": "| four associations, routed / limit | 0.90 | ≥ 0.85 | yes |",
        "cpu 1": "| router CPU per GB, 1 association, as a multiple of the bare forwarder's "
        "| 2.00x (1.00 s) | ≤ 1.5x | no |",
        "cpu 4": "| router CPU per GB, 4 associations, as a multiple of the bare forwarder's "
        "| 1.20x (0.60 s) | ≤ 1.5x | yes |",
        "p99": "| added latency per C-STORE, p99 | 0.20 ms | ≤ 1 ms | yes |",
    }
    for name, row in rows.items():
        assert row in text, name
    # The fast case's own router's memory, not the disk case's (62 MiB).
    assert (
        "| peak RSS per worker | 70 MiB | < 100 MiB | yes |" in text.split("| figure (issue 23")[1]
    )
    # The disk-writing case's section is still there, before the fast one.
    assert text.index("| figure (issue 11)") < text.index("| figure (issue 23")


def test_a_fast_only_run_leaves_the_disk_sections_out() -> None:
    full = _fast_result()
    text = render(
        dataclasses.replace(
            full,
            throughput=tuple(r for r in full.throughput if r.label.endswith("-fast")),
            latency=None,
        )
    )
    assert "issue 11" not in text
    assert "| figure (issue 23, fast gateways) |" in text
