"""Run a test module against each StudyInstanceUID scanner: Python and native.

A test module makes its scanners with :func:`make` and takes the
:func:`implementation` fixture (module-scoped, so that hypothesis tests may
use it): each of its tests then runs once per implementation. The native one
must be built (``./dev.sh`` builds it with the virtualenv): a missing
extension fails its runs instead of skipping them unnoticed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from gatewaypool_router.scanner import IMPLEMENTATIONS, Scanner

#: Every implementation, whether or not this checkout built it.
NAMES = ("python", "native")

_chosen: list[Callable[[str], Scanner]] = [IMPLEMENTATIONS["python"]]


def make(transfer_syntax: str) -> Scanner:
    """A scanner of the implementation under test."""
    return _chosen[0](transfer_syntax)


@pytest.fixture(scope="module", params=NAMES)
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """The implementation the module's tests run against, by name."""
    name: str = request.param
    if name not in IMPLEMENTATIONS:
        pytest.fail("gatewaypool_router._native is not built: run ./dev.sh to build it")
    _chosen[0] = IMPLEMENTATIONS[name]
    try:
        yield name
    finally:
        _chosen[0] = IMPLEMENTATIONS["python"]
