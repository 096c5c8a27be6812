"""The benchmark's figures as data, and the one text that states them.

The same Markdown is printed and appended to ``--markdown FILE``: a dated
section with the command, the machine and its load, so that BENCHMARKS.md
keeps every run and a later reader can tell which figures are comparable.
Rendering is a pure function of :class:`BenchResult`, tested on made-up
figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gatewaypool_local.bench.measure import (
    FileSystem,
    Latency,
    Machine,
    ProcessSample,
    cpu_seconds_per_gb,
    percentile,
)

#: A 1-minute load average at the start at or above this marks the run as loaded.
QUIET_LOAD = 0.5

_PATHS = {
    "direct": "storescu → storescp",
    "routed": "storescu → router → 3 storescp",
    "limit": "storescu per study → its gateway (limit)",
    "spool-always": "storescu → router, spool `Always` → 3 storescp",
    "spool-unavailable": "storescu → router, spool `GatewayUnavailable` → 3 storescp",
    "direct-fast": "storescu → storescp `--ignore`",
    "limit-fast": "storescu per study → its gateway `--ignore` (limit)",
    "bare-fast": "storescu → bare splice forwarder → 3 storescp `--ignore`",
    "routed-fast": "storescu → router → 3 storescp `--ignore`",
}

#: Issue 23: the router's CPU per GB against the bare forwarder's, at most.
BARE_MULTIPLE = 1.5


@dataclass(frozen=True)
class Throughput:
    """One throughput case: the best of its rounds."""

    label: str  # "direct", "routed", "limit" or a spool case's ("spool-always")
    associations: int
    instances: int
    size: int
    seconds: float  # until every sender was answered
    #: Until every instance was on its gateway, when that came later than the
    #: answers (a router that acknowledges from its spool); best of the rounds.
    delivered_seconds: float | None = None

    @property
    def per_second(self) -> float:
        return self.instances / self.seconds

    @property
    def delivered_per_second(self) -> float:
        return self.instances / (
            self.seconds if self.delivered_seconds is None else self.delivered_seconds
        )

    @property
    def megabytes_per_second(self) -> float:
        return self.size / 1e6 / self.seconds


@dataclass(frozen=True)
class RouterCpu:
    """Router CPU (its whole process tree) over every round of one routed case."""

    case: str
    cpu_seconds: float
    forwarded_bytes: int

    @property
    def per_gb(self) -> float:
        return cpu_seconds_per_gb(self.cpu_seconds, self.forwarded_bytes)


@dataclass(frozen=True)
class SpoolFigures:
    """One spool case's router: where its spool was, what it did over all rounds, its cost."""

    label: str  # as its Throughput rows
    when: str  # --spool-when
    folder: str
    file_system: FileSystem
    spooled: int
    forwarded: int
    resends: int
    refused: int
    cpu: tuple[RouterCpu, ...]
    memory: tuple[ProcessSample, ...]


@dataclass(frozen=True)
class FastFigures:
    """The fast-gateway case (issue 23): ``storescp --ignore``, and a bare forwarder.

    Its throughput rows are in :attr:`BenchResult.throughput` under the
    ``-fast`` labels; here are what the rows do not hold.
    """

    limit_spread: str
    cpu: tuple[RouterCpu, ...]  # the router's, per association count
    bare_cpu: tuple[RouterCpu, ...]  # the bare forwarder's, the same cases
    latency: Latency
    #: Peak RSS of the fast case's router after its runs (the fast rows' memory figure).
    memory: tuple[ProcessSample, ...] = ()

    def multiples(self) -> list[tuple[RouterCpu, RouterCpu, float | None]]:
        """Each case's router CPU, the bare forwarder's, and the first as a multiple.

        None where the bare forwarder used no measurable CPU (a clock tick
        is 10 ms: a tiny run).
        """
        bare = {c.case: c for c in self.bare_cpu}
        return [
            (c, bare[c.case], c.per_gb / bare[c.case].per_gb if bare[c.case].cpu_seconds else None)
            for c in self.cpu
            if c.case in bare
        ]


@dataclass(frozen=True)
class BenchResult:
    """Everything one ``gatewaypool bench`` run measured, and where."""

    command: str
    date: str
    machine: Machine
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float]
    workers: int
    instances: int
    data_bytes: int
    rows: int
    study_size: int
    studies: int
    rounds: int
    throughput: tuple[Throughput, ...]
    limit_spread: str
    cpu: tuple[RouterCpu, ...]
    #: Against the disk-writing gateways; None when only the fast ones ran.
    latency: Latency | None
    latency_instance_bytes: int
    memory: tuple[ProcessSample, ...]
    multiframe_bytes: int
    multiframe_seconds: float
    multiframe_memory: tuple[ProcessSample, ...]
    spool: tuple[SpoolFigures, ...] = ()
    fast: FastFigures | None = None

    def find(self, label: str, associations: int) -> Throughput:
        return next(
            r for r in self.throughput if r.label == label and r.associations == associations
        )

    @property
    def disk(self) -> bool:
        """Whether the disk-writing gateways' cases ran."""
        return any(r.label == "direct" for r in self.throughput)


def _mib(value: int) -> str:
    return f"{value / 2**20:.0f} MiB"


def _figure(value: float) -> str:
    """Whole numbers where they are large, two decimals where a smoke run makes them small."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _added_ms(seconds: float) -> str:
    """A latency the router adds: a difference of two runs' percentiles, so below
    zero when the routed run happened to be the faster (noise, not a gain)."""
    if seconds < 0:
        return f"0 ms (within noise: routed {_ms(-seconds)} below direct)"
    return _ms(seconds)


def worker_peak(samples: Sequence[ProcessSample]) -> int:
    """The largest VmHWM among the worker processes (the figure the target bounds)."""
    return max((s.peak_rss for s in samples if s.role == "worker"), default=0)


def describe_memory(samples: Sequence[ProcessSample]) -> str:
    """Each process's peak RSS by role, and their sum.

    The total is a sum of peaks, which may have come at different moments:
    an upper bound of what the replica held at once, the figure a memory
    limit must allow for.
    """
    parts = []
    for role in ("supervisor", "worker", "helper"):
        peaks = [s.peak_rss for s in samples if s.role == role]
        if peaks:
            name = role if len(peaks) == 1 else f"{role}s"
            parts.append(f"{name} {' / '.join(_mib(p) for p in peaks)}")
    total = sum(s.peak_rss for s in samples)
    return f"{', '.join(parts)}; total {_mib(total)}"


def _target_row(figure: str, measured: str, target: str, met: bool | None) -> str:
    verdict = "" if met is None else ("yes" if met else "no")
    return f"| {figure} | {measured} | {target} | {verdict} |"


def render(result: BenchResult) -> str:
    """Return the run as a dated Markdown section (a level-3 heading and its figures)."""
    lines: list[str] = []
    say: Callable[[str], None] = lines.append
    _describe_run(result, say)
    if result.disk:
        _throughput(result, say)
        _costs(result, say)
        _spool(result, say)
        _targets(result, say)
    if result.fast is not None:
        if result.disk:
            say("")
        _fast(result, result.fast, say)
    return "\n".join(lines) + "\n"


def _describe_run(result: BenchResult, say: Callable[[str], None]) -> None:
    """The heading, the command, the machine and the data."""
    machine = result.machine
    loaded = result.load_start[0] >= QUIET_LOAD
    say(f"### {result.date}, --workers {result.workers}")
    say("")
    say(f"Command: `{result.command}`")
    say("")
    say(f"Machine: {machine.describe()}.")
    load = (
        f"Load average (1 min) {result.load_start[0]:.2f} at the start, "
        f"{result.load_end[0]:.2f} at the end"
    )
    if loaded:
        say(f"{load}: **measured on a loaded machine**, not a final figure.")
    else:
        say(f"{load}.")
    worker_word = "process" if result.workers == 1 else "processes and a supervisor"
    say(
        f"Case: the router runs with `--workers {result.workers}` ({result.workers} worker "
        f"{worker_word})."
    )
    say(
        f"Data: {result.instances} CT instances, {result.rows}x{result.rows}x16 bit, "
        f"{_figure(result.data_bytes / 1e6)} MB, {result.studies} studies of "
        f"{result.study_size}; best of {result.rounds} round{'s' if result.rounds > 1 else ''}."
    )
    say("")


def _throughput(result: BenchResult, say: Callable[[str], None]) -> None:
    """Instances and megabytes per second, routed against the references."""
    say("| path | associations | instances/s | MB/s | routed vs reference |")
    say("|---|---|---|---|---|")
    for associations in (1, 4):
        direct = result.find("direct", associations)
        routed = result.find("routed", associations)
        references = [direct]
        if associations > 1:
            references.append(result.find("limit", associations))
        spooled = [result.find(s.label, associations) for s in result.spool]
        for case in [*references, routed, *spooled]:
            if case is routed:
                ratio = ", ".join(
                    f"{routed.per_second / ref.per_second:.2f} of {ref.label}" for ref in references
                )
            elif case in spooled:
                ratio = _spool_ratio(case, routed)
            else:
                ratio = "reference"
            say(
                f"| {_PATHS[case.label]} | {associations} | {case.per_second:.0f} "
                f"| {_figure(case.megabytes_per_second)} | {ratio} |"
            )
    say("")


def _latency_line(lat: Latency, instance_bytes: int) -> str:
    return (
        f"C-STORE round trip (pynetdicom sender, one association, {len(lat.direct)} instances "
        f"of {instance_bytes / 1e3:.0f} kB): "
        f"direct p50 {_ms(percentile(lat.direct, 0.5))}, p99 {_ms(percentile(lat.direct, 0.99))}; "
        f"routed p50 {_ms(percentile(lat.routed, 0.5))}, "
        f"p99 {_ms(percentile(lat.routed, 0.99))}; "
        f"added by the router p50 {_added_ms(lat.added(0.5))}, "
        f"p99 {_added_ms(lat.added(0.99))}."
    )


def _fast(result: BenchResult, fast: FastFigures, say: Callable[[str], None]) -> None:
    """The fast-gateway case: its rows, the bare forwarder, and the issue-23 targets."""
    say(
        "Fast gateways (issue 23): the same senders and data to `storescp --fork --ignore`, "
        "which receives every byte and stores none, through a router of its own (same "
        "`--workers`), and through a bare forwarder: one process, plain TCP `splice(2)` "
        "between each sender and a gateway (round robin by connection), no DICOM at all."
    )
    say("")
    say("| path | associations | instances/s | MB/s | vs reference |")
    say("|---|---|---|---|---|")
    for associations in (1, 4):
        references = [result.find("direct-fast", associations)]
        if associations > 1:
            references.append(result.find("limit-fast", associations))
        rows = [*references, result.find("bare-fast", associations)]
        rows.append(result.find("routed-fast", associations))
        for case in rows:
            if case in references:
                ratio = "reference"
            else:
                ratio = ", ".join(
                    f"{case.per_second / ref.per_second:.2f} of {ref.label}" for ref in references
                )
            say(
                f"| {_PATHS[case.label]} | {associations} | {case.per_second:.0f} "
                f"| {_figure(case.megabytes_per_second)} | {ratio} |"
            )
    say("")
    say(
        f"Limit: each study by its own `storescu` straight to its gateway "
        f"({fast.limit_spread} studies)."
    )
    say("")
    say(_latency_line(fast.latency, result.latency_instance_bytes))
    say("")
    say(
        "CPU per GB, router against bare forwarder (user + system of each process tree): "
        + "; ".join(
            f"{router.case}: router {router.per_gb:.2f} s/GB, bare {bare.per_gb:.2f} s/GB, "
            + ("not measurable" if multiple is None else f"{multiple:.2f}x")
            for router, bare, multiple in fast.multiples()
        )
        + "."
    )
    say("")
    say("| figure (issue 23, fast gateways) | measured | target | met |")
    say("|---|---|---|---|")
    one = result.find("routed-fast", 1).per_second / result.find("direct-fast", 1).per_second
    four = result.find("routed-fast", 4).per_second / result.find("limit-fast", 4).per_second
    say(_target_row("one association, routed / direct", f"{one:.2f}", "≥ 0.85", one >= 0.85))
    say(_target_row("four associations, routed / limit", f"{four:.2f}", "≥ 0.85", four >= 0.85))
    for router, _, multiple in fast.multiples():
        say(
            _target_row(
                f"router CPU per GB, {router.case}, as a multiple of the bare forwarder's",
                "-" if multiple is None else f"{multiple:.2f}x ({router.per_gb:.2f} s)",
                f"≤ {BARE_MULTIPLE}x",
                None if multiple is None else multiple <= BARE_MULTIPLE,
            )
        )
    added99 = fast.latency.added(0.99)
    shown = _added_ms(added99)
    say(_target_row("added latency per C-STORE, p99", shown, "≤ 1 ms", added99 <= 0.001))
    _memory_rows(result, say, fast.memory or None)


def _memory_rows(
    result: BenchResult, say: Callable[[str], None], memory: Sequence[ProcessSample] | None = None
) -> None:
    """Peak RSS per worker against its target, after the runs and while streaming.

    `memory`: the router read after the runs (by default the disk case's).
    """
    for what, samples in (
        ("peak RSS per worker", result.memory if memory is None else memory),
        (
            f"peak RSS per worker, {_mib(result.multiframe_bytes)} multi-frame",
            result.multiframe_memory,
        ),
    ):
        peak = worker_peak(samples)
        say(_target_row(what, _mib(peak), "< 100 MiB", peak < 100 * 2**20))


def _costs(result: BenchResult, say: Callable[[str], None]) -> None:
    """The limit's method, latency, CPU and memory."""
    say(
        f"Limit: each of the {result.studies} studies sent by its own `storescu` straight to "
        f"the gateway its bucket names in the router's map ({result.limit_spread} studies), "
        f"the same {min(4, result.studies)} senders at once."
    )
    say("")
    if result.latency is not None:
        say(_latency_line(result.latency, result.latency_instance_bytes))
        say("")
    say(
        "Router CPU (user + system time of every process of the router, /proc/<pid>/stat): "
        + "; ".join(
            f"{c.case}: {c.cpu_seconds:.2f} s for {c.forwarded_bytes / 1e9:.2f} GB, "
            f"{c.per_gb:.2f} s/GB"
            for c in result.cpu
        )
        + "."
    )
    say("")
    say(
        f"Peak RSS (VmHWM of each process) after the throughput and latency runs: "
        f"{describe_memory(result.memory)}. While streaming one "
        f"{_mib(result.multiframe_bytes)} multi-frame instance "
        f"(took {result.multiframe_seconds:.1f} s): {describe_memory(result.multiframe_memory)}."
    )
    say("")


def _spool_ratio(case: Throughput, routed: Throughput) -> str:
    """A spool row against cut-through: answered, and delivered when that came later."""
    ratio = f"{case.per_second / routed.per_second:.2f} of routed"
    if case.delivered_seconds is not None:
        ratio += f" (delivered: {case.delivered_per_second / routed.per_second:.2f})"
    return ratio


def _spool(result: BenchResult, say: Callable[[str], None]) -> None:
    """Where the spool cases' spools were, what they did, and what they cost."""
    if not result.spool:
        return
    file_systems = sorted({s.file_system.describe() for s in result.spool})
    say(
        "Spool: each spool path is a router of its own beside the cut-through one (the same "
        "map, gateways, senders and `--workers`), with `--spool-dir` in the bench's work dir, "
        f"on {' and '.join(file_systems)}: "
        + ", ".join(f"`{s.folder}`" for s in result.spool)
        + ". A spool row's instances/s is what its senders saw; `delivered` counts until "
        "every instance was on its gateway."
    )
    if any(s.file_system.in_memory for s in result.spool):
        say(
            "**The spool was on a file system in memory: an fsync costs nothing there, so "
            "these are no deployment figures.**"
        )
    say("")
    for spool in result.spool:
        say(f"- {_spool_line(result, spool)}")
    say("")


def _spool_line(result: BenchResult, spool: SpoolFigures) -> str:
    """One spool router: what it does to an instance, its tallies, CPU and memory."""
    rows = [r for r in result.throughput if r.label == spool.label]
    if any(r.delivered_seconds is not None for r in rows):
        what = (
            "each instance answered once fsynced in the spool, forwarded afterwards; "
            "delivered (until the spool was empty again): "
            + ", ".join(
                f"{r.associations} association{'s' if r.associations > 1 else ''} "
                f"{r.delivered_per_second:.0f} instances/s"
                for r in rows
            )
        )
    else:
        what = (
            "every gateway up, each instance copied through the router's memory (no "
            "splice) and written, unsynced, to the spool folder on its way"
        )
    cpu = ", ".join(f"{c.case} {c.per_gb:.2f} s/GB" for c in spool.cpu)
    return (
        f"`{spool.when}`: {what}. {spool.spooled} spooled, {spool.forwarded} forwarded "
        f"from the spool, {spool.resends} resent, {spool.refused} refused. Router CPU: {cpu}; "
        f"peak RSS per worker {_mib(worker_peak(spool.memory))}."
    )


def _targets(result: BenchResult, say: Callable[[str], None]) -> None:
    """The figures against their targets (issue 11)."""
    lat = result.latency
    assert lat is not None  # measured whenever the disk-writing cases ran
    say("| figure (issue 11) | measured | target | met |")
    say("|---|---|---|---|")
    one = result.find("routed", 1).per_second / result.find("direct", 1).per_second
    four = result.find("routed", 4).per_second / result.find("limit", 4).per_second
    say(_target_row("one association, routed / direct", f"{one:.2f}", "≥ 0.85", one >= 0.85))
    say(_target_row("four associations, routed / limit", f"{four:.2f}", "≥ 0.85", four >= 0.85))
    for c in result.cpu:
        say(
            _target_row(
                f"router CPU per GB forwarded, {c.case}",
                f"{c.per_gb:.2f} s",
                "≤ 0.3 s",
                c.per_gb <= 0.3,
            )
        )
    added50, added99 = lat.added(0.5), lat.added(0.99)
    say(
        _target_row(
            "added latency per C-STORE, p50", _added_ms(added50), "≤ 0.3 ms", added50 <= 0.0003
        )
    )
    say(_target_row("added latency per C-STORE, p99", _added_ms(added99), "none", None))
    _memory_rows(result, say)
