"""The default of ``--workers``: the CPUs a container may use, read from cgroup files.

Each case is a folder laid out like ``/sys/fs/cgroup`` as a container sees
it, so the reader runs on real files, exactly as in a pod.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gatewaypool_router.cpus import available_cpus, cgroup_cpus, quota_cpus


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "200000 100000\n"}, 2),  # v2: limits.cpu: 2
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs round up
        ({"cpu.max": "50000 100000\n"}, 1),  # 500m: still one worker
        ({"cpu.max": "max 100000\n"}, None),  # v2 without a limit
        ({"cpu.max": "garbage\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        (
            {
                "cpu,cpuacct/cpu.cfs_quota_us": "400000\n",
                "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            },
            4,
        ),
        ({"cpu/cpu.cfs_quota_us": "x\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),  # no cgroup file system at all
    ],
)
def test_cgroup_quota(tmp_path: Path, files: dict[str, str], expected: int | None) -> None:
    assert cgroup_cpus(_write(tmp_path, files)) == expected


def test_v2_wins_over_leftover_v1_files(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "cpu.max": "100000 100000\n",
            "cpu/cpu.cfs_quota_us": "800000\n",
            "cpu/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpus(root) == 1


def test_quota_below_affinity_bounds_the_workers(tmp_path: Path) -> None:
    root = _write(tmp_path, {"cpu.max": "100000 100000\n"})
    assert available_cpus(root) == 1


def test_quota_above_affinity_is_bounded_by_it(tmp_path: Path) -> None:
    # A quota of 1000 CPUs cannot give more cores than the process may run on.
    root = _write(tmp_path, {"cpu.max": "100000000 100000\n"})
    assert available_cpus(root) == len(os.sched_getaffinity(0))


def test_no_quota_means_the_cpus_the_process_may_run_on(tmp_path: Path) -> None:
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("quota", "period", "expected"),
    [(1, 100000, 1), (100000, 100000, 1), (100001, 100000, 2), (0, 100000, None), (-1, 1, None)],
)
def test_quota_cpus(quota: int, period: int, expected: int | None) -> None:
    assert quota_cpus(quota, period) == expected
