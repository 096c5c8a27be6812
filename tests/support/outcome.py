"""Whether the running test failed, for fixtures that print logs only then."""

from __future__ import annotations

import pytest


def did_fail(request: pytest.FixtureRequest) -> bool:
    """Whether the test of `request` failed, or never ran its call.

    Reads ``report_call``, which tests/conftest.py's report hook sets on the item.
    """
    report = getattr(request.node, "report_call", None)
    return report is None or bool(report.failed)
