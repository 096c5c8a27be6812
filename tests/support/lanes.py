"""How ``./dev.sh test`` runs the suite on two pytest-xdist workers.

The suite runs in a sandbox of its own (``tests/sandbox.sh``: user, network
and mount namespaces), and a real cluster needs the sandbox's network to
itself: its pod bridge, pod and Service addresses, cluster DNS on the
bridge. Under xdist each worker is a session with a cluster of its own, so
each worker first moves into a network namespace of its own
(:func:`own_network_namespace`), with its own loopback: two workers' clusters
then never meet, and ``--dist loadfile`` may hand any module to any worker.
Pod network namespaces stay named by pod UID in the sandbox's shared
``/run/netns``.
"""

from __future__ import annotations

import ctypes
import os
import subprocess

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
