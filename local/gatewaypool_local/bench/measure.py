"""What the benchmark measures, and how it reads it from the machine.

The arithmetic (percentiles, CPU seconds per GB) and the parsing of
``/proc`` text are pure functions, so unit tests can check them on fixture
text; the few functions that read ``/proc`` only hand its text to them.

The router is a process tree with ``--workers`` above 1: a supervisor, its
workers (``multiprocessing`` spawned, so their command line runs
``spawn_main``) and multiprocessing's resource tracker. Every figure of the
router therefore covers the whole tree, not only the process the benchmark
started.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gatewaypool.strict import show

#: Bytes in the "GB" of the CPU-per-GB target (decimal, as throughput is quoted).
GB = 10**9


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the nearest-rank percentile of `values`.

    Nearest rank (the smallest value with at least `fraction` of the values
    at or below it) always answers one of the measured round trips, never an
    interpolation between two, so a p99 of 200 samples is the second slowest
    actually seen.

    Parameters
    ----------
    values
        The samples, in any order; at least one.
    fraction
        ``0 < fraction <= 1``: 0.5 is the median rank, 0.99 the p99.

    Raises
    ------
    ValueError
        If there is no sample or `fraction` is outside ``(0, 1]``.
    """
    if not values:
        raise ValueError("a percentile of no samples")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction {fraction!r} is not in (0, 1]")
    ordered = sorted(values)
    rank = math.ceil(fraction * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True)
class Latency:
    """C-STORE round trips of the same instances, direct and through the router.

    The router's cost per instance is the difference of the same percentile
    on both paths, as the gateway's and the sender's own costs are in both.
    """

    direct: tuple[float, ...]
    routed: tuple[float, ...]

    def added(self, fraction: float) -> float:
        """Seconds the router adds at this percentile (negative when within noise)."""
        return percentile(self.routed, fraction) - percentile(self.direct, fraction)


def cpu_seconds_per_gb(cpu_seconds: float, forwarded_bytes: int) -> float:
    """Return router CPU seconds per GB (10**9 bytes) forwarded.

    Raises
    ------
    ValueError
        If nothing was forwarded: the figure would be meaningless, not zero.
    """
    if forwarded_bytes <= 0:
        raise ValueError("no bytes forwarded")
    return cpu_seconds / (forwarded_bytes / GB)


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the benchmark uses, in clock ticks."""

    pid: int
    ppid: int
    utime: int
    stime: int
    cutime: int
    cstime: int

    @property
    def ticks(self) -> int:
        """CPU of the process and of its children already reaped.

        Counting reaped children (``cutime``/``cstime``) keeps the sum over a
        tree monotonic: a worker that exits and is replaced moves its time
        into its parent's counters instead of taking it away.
        """
        return self.utime + self.stime + self.cutime + self.cstime


def parse_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may itself hold spaces
    and parentheses, so the fields are counted from the *last* ``)``.

    Raises
    ------
    ValueError
        If the text is not a stat line.
    """
    head, close, tail = text.rpartition(")")
    if not close or "(" not in head:
        raise ValueError(f"not a /proc/<pid>/stat line: {show(text)}")
    fields = tail.split()
    if len(fields) < 15:
        raise ValueError(f"short /proc/<pid>/stat line: {show(text)}")
    # After the name: state ppid pgrp session tty tpgid flags minflt cminflt
    # majflt cmajflt utime stime cutime cstime (fields 3..17 of proc(5)).
    return ProcStat(
        pid=int(head.split("(", 1)[0]),
        ppid=int(fields[1]),
        utime=int(fields[11]),
        stime=int(fields[12]),
        cutime=int(fields[13]),
        cstime=int(fields[14]),
    )


def parse_vmhwm(status_text: str) -> int:
    """Return ``VmHWM`` (peak resident set) in bytes from ``/proc/<pid>/status`` text.

    Raises
    ------
    ValueError
        If the line is missing (a kernel thread, or a process already a zombie).
    """
    for line in status_text.splitlines():
        if line.startswith("VmHWM:"):
            value, unit = line.split()[1:3]
            if unit != "kB":
                raise ValueError(f"VmHWM in unexpected unit {unit!r}")
            return int(value) * 1024
    raise ValueError("no VmHWM line")


def descendants(root: int, parents: Mapping[int, int]) -> list[int]:
    """Return every process below `root` in the tree, given each pid's parent.

    Parameters
    ----------
    parents
        pid → ppid for the processes of the machine (from their stat lines).
    """
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found: list[int] = []
    stack = sorted(children.get(root, []), reverse=True)
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(sorted(children.get(pid, []), reverse=True))
    return found


def process_role(cmdline: bytes, *, is_root: bool, workers: int) -> str:
    """Name what one process of the router's tree is.

    With one worker the router is a single process that serves DICOM
    itself, so the root is the worker. Above one, the root only supervises;
    its spawned children run ``multiprocessing.spawn.spawn_main``; anything
    else (the resource tracker) is a helper.
    """
    if is_root:
        return "worker" if workers <= 1 else "supervisor"
    return "worker" if b"spawn_main" in cmdline else "helper"


def parse_cpu_model(cpuinfo_text: str) -> str:
    """Return the first ``model name`` of ``/proc/cpuinfo`` (or ``unknown``)."""
    for line in cpuinfo_text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name":
            return value.strip()
    return "unknown"


def parse_loadavg(text: str) -> tuple[float, float, float]:
    """Return the 1, 5 and 15 minute load averages of ``/proc/loadavg`` text."""
    one, five, fifteen = (float(field) for field in text.split()[:3])
    return one, five, fifteen


#: File system types that keep their data in memory: an fsync there costs
#: nothing, so a spool on one measures no deployment.
MEMORY_FILE_SYSTEMS = frozenset({"tmpfs", "ramfs"})


@dataclass(frozen=True)
class FileSystem:
    """The mount a path lives on, as ``/proc/self/mountinfo`` names it."""

    mount_point: str
    type: str
    source: str

    @property
    def in_memory(self) -> bool:
        return self.type in MEMORY_FILE_SYSTEMS

    def describe(self) -> str:
        return f"{self.type} ({self.source}, mounted on {self.mount_point})"


def _unescape_mount_field(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space, and tab, newline, backslash)."""
    out, i = [], 0
    while i < len(field):
        octal = field[i + 1 : i + 4]
        if field[i] == "\\" and len(octal) == 3 and all(c in "01234567" for c in octal):
            out.append(chr(int(octal, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[FileSystem]:
    """Return every mount of ``/proc/<pid>/mountinfo`` text, in its order.

    Each line is ``id parent major:minor root mount-point options
    [optional fields...] - type source super-options`` (proc(5)); the
    optional fields end at the lone ``-``.

    Raises
    ------
    ValueError
        If a line lacks the separator or the fields around it.
    """
    mounts = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            dash = fields.index("-", 6)
        except ValueError:
            raise ValueError(f"not a mountinfo line: {show(line)}") from None
        if len(fields) < dash + 3:
            raise ValueError(f"short mountinfo line: {show(line)}")
        mounts.append(
            FileSystem(
                mount_point=_unescape_mount_field(fields[4]),
                type=fields[dash + 1],
                source=_unescape_mount_field(fields[dash + 2]),
            )
        )
    return mounts


def file_system_of(path: str, mounts: Sequence[FileSystem]) -> FileSystem:
    """Return the mount that holds the absolute, resolved `path`.

    The longest mount point that contains it; of several mounts on that same
    point, the last (it hides the ones below it).

    Raises
    ------
    ValueError
        If `path` is not absolute or no mount holds it.
    """
    if not path.startswith("/"):
        raise ValueError(f"not an absolute path: {show(path)}")
    best: FileSystem | None = None
    for mount in mounts:
        point = mount.mount_point
        holds = point in ("/", path) or path.startswith(point.rstrip("/") + "/")
        if holds and (best is None or len(point) >= len(best.mount_point)):
            best = mount
    if best is None:
        raise ValueError(f"no mount holds {show(path)}")
    return best


# --- reading the live machine -------------------------------------------------


@dataclass(frozen=True)
class ProcessSample:
    """One process of the router's tree at one moment."""

    pid: int
    role: str
    cpu_ticks: int
    peak_rss: int


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:  # the process ended between listing and reading
        return None


def _all_parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            text = _read(f"/proc/{entry}/stat")
            if text is not None:
                parents[int(entry)] = parse_stat(text).ppid
    return parents


def sample_tree(root: int, *, workers: int) -> list[ProcessSample]:
    """Read CPU ticks and peak RSS of `root` and every process below it."""
    samples = []
    for pid in [root, *descendants(root, _all_parents())]:
        stat, status = _read(f"/proc/{pid}/stat"), _read(f"/proc/{pid}/status")
        if stat is None or status is None:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        samples.append(
            ProcessSample(
                pid=pid,
                role=process_role(cmdline, is_root=pid == root, workers=workers),
                cpu_ticks=parse_stat(stat).ticks,
                peak_rss=parse_vmhwm(status),
            )
        )
    return samples


def tree_cpu_seconds(samples: Iterable[ProcessSample]) -> float:
    """CPU seconds of a sampled tree (user and system, reaped children included)."""
    return sum(sample.cpu_ticks for sample in samples) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Machine:
    """Where a run was measured, for the history in BENCHMARKS.md."""

    cpus: int
    cpu_model: str
    kernel: str
    python: str
    arch: str

    def describe(self) -> str:
        return (
            f"{self.cpus} CPUs ({self.cpu_model}), {self.arch}, Linux {self.kernel}, "
            f"Python {self.python}"
        )


def this_machine() -> Machine:
    """Describe the machine: the CPUs this process may use, as ``nproc`` counts them."""
    return Machine(
        cpus=len(os.sched_getaffinity(0)),
        cpu_model=parse_cpu_model(_read("/proc/cpuinfo") or ""),
        kernel=platform.release(),
        python=platform.python_version(),
        arch=platform.machine(),
    )


def load_average() -> tuple[float, float, float]:
    """The machine's load now: a figure measured under load is not a final figure."""
    return parse_loadavg(_read("/proc/loadavg") or "0 0 0")


def file_system(path: Path) -> FileSystem:
    """The file system `path` is on, for the report: a spool on tmpfs is no deployment."""
    return file_system_of(str(path.resolve()), parse_mountinfo(_read("/proc/self/mountinfo") or ""))
