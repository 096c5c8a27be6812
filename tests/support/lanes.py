"""How ``./dev.sh test`` shares the suite between pytest-xdist workers.

The real cluster is one per session, and under xdist a session is a worker:
two workers starting one each would double the load and fight over the
sandbox's pod network. So every ``test_cluster_*`` module is one scope,
sent whole to one worker, which keeps one control plane for all of them;
every other module is a scope of its own, spread over the workers as they
free up (pytest-xdist's ``loadscope``, with this split of scopes).

A test that uses the ``cluster`` fixture must therefore live in a
``test_cluster_*`` module; :func:`check_placement` refuses one that does not.

pytest-xdist's own ``loadgroup`` would do this with a marker, but 3.8.0
names groups by rewriting ``Item._nodeid``, which pytest 9.2 no longer
reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

import pytest
from xdist.scheduler import LoadScopeScheduling

CLUSTER_MODULE_PREFIX = "test_cluster_"


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
