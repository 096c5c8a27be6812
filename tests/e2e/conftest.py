"""Fixtures shared by the cluster modules that run one operator for the whole module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support.outcome import did_fail
from support.realpool import ModuleOperator, clear_test_pools


@pytest.fixture
def ns(operated: ModuleOperator, request: pytest.FixtureRequest) -> Iterator[ModuleOperator]:
    """The module's operator (its ``operated`` fixture); the test's pools go afterwards,
    their logs printed if it failed."""
    yield operated
    clear_test_pools(operated, failed=did_fail(request))
