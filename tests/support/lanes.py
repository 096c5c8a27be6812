"""How ``./dev.sh test`` runs the suite on two pytest-xdist workers.

The real cluster is one per session, and under xdist a session is a worker.
Two clusters at once overload a 2-core machine (measured: no faster than
one, and the scaling scenarios' timing suffers), so every
``test_cluster_*`` module is one scope (:class:`OneClusterScheduling`), sent
whole to one worker that keeps one cluster for all of them, while the other
worker takes the other modules one by one (pytest-xdist's ``loadscope``,
with this split of scopes). A test that uses the ``cluster`` fixture must
therefore live in a ``test_cluster_*`` module; :func:`check_placement`
refuses one that does not.

Each worker also moves into a network namespace of its own when it starts
(:func:`own_network_namespace`), so that a run that does start two clusters
(``--dist loadfile``) cannot mix their pod bridges, addresses and DNS.

pytest-xdist's own ``loadgroup`` would group by a marker, but 3.8.0 names
groups by rewriting ``Item._nodeid``, which pytest 9.2 no longer reads.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Sequence
from pathlib import PurePosixPath

import pytest
from xdist.scheduler import LoadScopeScheduling

CLUSTER_MODULE_PREFIX = "test_cluster_"
#: unshare(2)'s flag for a new network namespace (linux/sched.h).
CLONE_NEWNET = 0x40000000


def xdist_worker() -> str | None:
    """The name of this pytest-xdist worker (``gw0``, …), or None outside one."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def own_network_namespace() -> None:
    """Move this process into a new network namespace, with loopback up.

    Threads started later and every child process (the control plane, the
    kubelet stand-in's pods, DICOM peers) inherit it. Needs the sandbox's
    user namespace, in which the suite is root.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWNET): {os.strerror(errno)}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def is_cluster_module(nodeid: str) -> bool:
    return PurePosixPath(nodeid.split("::", 1)[0]).name.startswith(CLUSTER_MODULE_PREFIX)


class OneClusterScheduling(LoadScopeScheduling):  # type: ignore[misc]  # untyped base
    """``loadscope`` by module, with all cluster modules in one scope."""

    def _split_scope(self, nodeid: str) -> str:
        return "cluster" if is_cluster_module(nodeid) else nodeid.split("::", 1)[0]


def check_placement(items: Sequence[pytest.Item]) -> None:
    """Every test of the cluster is in a cluster module (or it could get a cluster of its own)."""
    misplaced = [
        item.nodeid
        for item in items
        if "cluster" in getattr(item, "fixturenames", ()) and not is_cluster_module(item.nodeid)
    ]
    if misplaced:
        raise pytest.UsageError(
            f"tests that use the cluster must live in {CLUSTER_MODULE_PREFIX}*.py modules "
            f"(support.lanes): {', '.join(misplaced)}"
        )
