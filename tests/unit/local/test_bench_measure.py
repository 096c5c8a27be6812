"""The benchmark's arithmetic and its reading of /proc, on fixture text."""

from __future__ import annotations

import pytest

from gatewaypool_local.bench.measure import (
    FileSystem,
    Latency,
    cpu_seconds_per_gb,
    descendants,
    file_system_of,
    parse_cpu_model,
    parse_loadavg,
    parse_mountinfo,
    parse_stat,
    parse_vmhwm,
    percentile,
    process_role,
)

# A stat line whose command name holds spaces and parentheses, as a process
# may set it: the fields must be counted from the last ")".
STAT = (
    "4242 (python3 (worker) 1) S 4200 4242 4242 0 -1 4194304 5120 0 0 0 "
    "250 30 5 7 20 0 3 0 123456 987654321 15000 18446744073709551615"
)

STATUS = """Name:\tpython3
Umask:\t0022
State:\tS (sleeping)
VmPeak:\t  612340 kB
VmSize:\t  600000 kB
VmHWM:\t   65536 kB
VmRSS:\t   61440 kB
Threads:\t3
"""

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13 64-Core Processor
flags\t\t: fpu vme

processor\t: 1
model name\t: AMD EPYC 7B13 64-Core Processor
"""


def test_percentile_is_the_nearest_rank_never_an_interpolation() -> None:
    values = [float(v) for v in range(1, 201)]  # 1..200, shuffled below
    shuffled = values[::2] + values[1::2]
    assert percentile(shuffled, 0.5) == 100.0
    assert percentile(shuffled, 0.99) == 198.0  # the second slowest of 200
    assert percentile(shuffled, 1.0) == 200.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([7.0], 0.99) == 7.0


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.01])
def test_percentile_refuses_a_fraction_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="fraction"):
        percentile([1.0], fraction)


def test_percentile_of_nothing_is_an_error_not_zero() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_added_latency_is_the_difference_of_the_same_percentile() -> None:
    latency = Latency(direct=(0.001, 0.002, 0.003, 0.050), routed=(0.0015, 0.0025, 0.004, 0.040))
    assert latency.added(0.5) == pytest.approx(0.0005)
    # The routed p99 may come out below the direct one: the difference says so.
    assert latency.added(0.99) == pytest.approx(-0.010)


def test_cpu_per_gb_counts_decimal_gigabytes() -> None:
    assert cpu_seconds_per_gb(0.6, 2 * 10**9) == pytest.approx(0.3)
    assert cpu_seconds_per_gb(1.0, 526_000_000) == pytest.approx(1.901, abs=1e-3)
    with pytest.raises(ValueError, match="no bytes"):
        cpu_seconds_per_gb(1.0, 0)


def test_stat_fields_are_counted_from_the_last_parenthesis() -> None:
    stat = parse_stat(STAT)
    assert (stat.pid, stat.ppid) == (4242, 4200)
    assert (stat.utime, stat.stime, stat.cutime, stat.cstime) == (250, 30, 5, 7)
    # Reaped children count: a replaced worker's time stays in the tree's sum.
    assert stat.ticks == 292


@pytest.mark.parametrize("text", ["", "4242 python3 S 1", "4242 (python3) S 1 2 3"])
def test_a_truncated_stat_line_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="stat line"):
        parse_stat(text)


def test_vmhwm_is_read_in_bytes() -> None:
    assert parse_vmhwm(STATUS) == 64 * 2**20
    with pytest.raises(ValueError, match="no VmHWM"):
        parse_vmhwm("Name:\tkthreadd\nState:\tS (sleeping)\n")


def test_descendants_walks_the_whole_tree_below_the_root_only() -> None:
    parents = {
        1: 0,
        100: 1,  # the router (supervisor)
        101: 100,  # resource tracker
        102: 100,  # worker 0
        103: 100,  # worker 1
        104: 103,  # something a worker started
        200: 1,  # an unrelated process
        201: 200,
    }
    assert descendants(100, parents) == [101, 102, 103, 104]
    assert descendants(102, parents) == []
    assert descendants(999, parents) == []


def test_process_roles_of_a_router_tree() -> None:
    spawned = b"python3\0-c\0from multiprocessing.spawn import spawn_main; spawn_main()\0"
    tracker = b"python3\0-c\0from multiprocessing.resource_tracker import main;main(5)\0"
    router = b"python3\0-m\0gatewaypool.cli\0router\0"
    assert process_role(router, is_root=True, workers=1) == "worker"
    assert process_role(router, is_root=True, workers=2) == "supervisor"
    assert process_role(spawned, is_root=False, workers=2) == "worker"
    assert process_role(tracker, is_root=False, workers=2) == "helper"


def test_cpu_model_and_load_average() -> None:
    assert parse_cpu_model(CPUINFO) == "AMD EPYC 7B13 64-Core Processor"
    assert parse_cpu_model("processor\t: 0\n") == "unknown"
    assert parse_loadavg("5.61 5.15 5.15 16/199 23024\n") == (5.61, 5.15, 5.15)


# The mounts of a container: no optional field or several, a mount point with
# a space (escaped as \040), tmpfs stacked twice on /tmp.
MOUNTINFO = r"""27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
25 24 0:23 / /dev/shm rw,relatime shared:4 - tmpfs tmpfs rw,size=24683772k
40 27 0:40 / /tmp rw,nosuid shared:7 master:1 - tmpfs tmpfs rw
41 40 0:41 / /tmp rw,nosuid - tmpfs scratch rw
42 27 8:17 / /mnt/spool\040disk rw,relatime - xfs /dev/sdb1 rw
"""


def test_mountinfo_gives_each_mount_its_point_type_and_source() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert mounts[0] == FileSystem(mount_point="/", type="ext4", source="/dev/vda")
    assert mounts[1] == FileSystem(mount_point="/dev/shm", type="tmpfs", source="tmpfs")
    assert mounts[4] == FileSystem(mount_point="/mnt/spool disk", type="xfs", source="/dev/sdb1")
    assert mounts[4].describe() == "xfs (/dev/sdb1, mounted on /mnt/spool disk)"


@pytest.mark.parametrize(
    ("path", "source", "in_memory"),
    [
        ("/work/bench/spool-always", "/dev/vda", False),
        ("/", "/dev/vda", False),
        ("/tmp/gatewaypool-bench-x/spool-always", "scratch", True),  # the last mount on /tmp
        ("/tmp", "scratch", True),
        ("/tmpfoo/spool", "/dev/vda", False),  # a prefix of the name is not a parent
        ("/mnt/spool disk/spool", "/dev/sdb1", False),
    ],
)
def test_a_path_is_on_the_longest_mount_point_that_holds_it(
    path: str, source: str, in_memory: bool
) -> None:
    found = file_system_of(path, parse_mountinfo(MOUNTINFO))
    assert found.source == source
    assert found.in_memory is in_memory


def test_file_system_of_refuses_a_relative_path_and_a_path_no_mount_holds() -> None:
    with pytest.raises(ValueError, match="not an absolute path"):
        file_system_of("spool", parse_mountinfo(MOUNTINFO))
    only_tmp = [FileSystem(mount_point="/tmp", type="tmpfs", source="tmpfs")]
    with pytest.raises(ValueError, match="no mount holds"):
        file_system_of("/work/spool", only_tmp)


@pytest.mark.parametrize("line", ["27 1 254:0 / / rw,relatime ext4 /dev/vda rw", "27 1 - ext4"])
def test_a_mountinfo_line_without_its_separator_or_fields_is_refused(line: str) -> None:
    with pytest.raises(ValueError, match="mountinfo line"):
        parse_mountinfo(line)
