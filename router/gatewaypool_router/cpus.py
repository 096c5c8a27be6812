"""How many CPUs this router may use: the default of ``--workers``.

A container's CPU limit is a CFS quota, not a smaller CPU set:
``os.cpu_count()`` and even ``os.sched_getaffinity()`` see every core of the
node, so a router limited to 2 CPUs on a 64-core node would start 64 worker
processes that the quota then throttles. The quota is read where the kernel
publishes it for the container's cgroup (the container sees its own cgroup
at the root of ``/sys/fs/cgroup``):

- cgroup v2: ``cpu.max``, ``"<quota> <period>"`` or ``"max <period>"``;
- cgroup v1: ``cpu/cpu.cfs_quota_us`` (``-1`` when unlimited) and
  ``cpu/cpu.cfs_period_us`` (also found under ``cpu,cpuacct/``).

A fractional quota is rounded up (1.5 CPUs: two workers, each busy part of
the time, rather than one that leaves half a CPU unused).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

#: Where a container sees its own cgroup.
CGROUP_ROOT = Path("/sys/fs/cgroup")

_V1_FOLDERS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


def quota_cpus(quota: int, period: int) -> int | None:
    """Return the CPUs a CFS quota of `quota` µs per `period` µs allows (rounded up).

    None when there is no limit (a quota or period that is not positive).
    """
    if quota <= 0 or period <= 0:
        return None
    return max(1, math.ceil(quota / period))


def cgroup_cpus(root: Path = CGROUP_ROOT) -> int | None:
    """Return the CPUs the cgroup quota under `root` allows, or None without a quota.

    Parameters
    ----------
    root
        The cgroup file system's mount point; tests point it at fixture
        folders holding ``cpu.max`` (v2) or ``cpu/cpu.cfs_quota_us`` (v1).

    Notes
    -----
    Unreadable or malformed files count as no quota: the caller then falls
    back to the CPUs the process may run on, which is never wrong, only
    possibly more workers than the quota keeps busy.
    """
    try:
        fields = (root / "cpu.max").read_text().split()
    except OSError:
        pass
    else:
        if len(fields) == 2 and fields[0] != "max":
            try:
                return quota_cpus(int(fields[0]), int(fields[1]))
            except ValueError:
                return None
        return None
    for folder in _V1_FOLDERS:
        try:
            quota = int((root / folder / "cpu.cfs_quota_us").read_text().strip())
            period = int((root / folder / "cpu.cfs_period_us").read_text().strip())
        except (OSError, ValueError):
            continue
        return quota_cpus(quota, period)
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """Return how many CPUs this process may use: the cgroup quota, else its affinity.

    Never more than the CPUs the process may run on, and at least 1.
    """
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        allowed = os.cpu_count() or 1
    quota = cgroup_cpus(root)
    return max(1, min(allowed, quota) if quota is not None else allowed)
