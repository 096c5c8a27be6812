"""The operator's Event reasons: each named once, documented once, with one type.

Users alert on Event reasons, so a reason the README does not list, or lists
with another type, is a contract broken without a word.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gatewaypool_operator.events import Event, EventType, Reason

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_events() -> dict[str, str]:
    """The README's table of Events: reason → type."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### Events\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|", section, flags=re.MULTILINE)
    assert rows, "the README's Events section has no table"
    table = dict(rows)
    assert len(table) == len(rows), "a reason is listed twice"
    return table


def test_the_readme_lists_every_reason_with_its_type() -> None:
    assert readme_events() == {reason.value: reason.type.value for reason in Reason}


def test_the_readme_check_can_fail() -> None:
    """The table is read for real: a reason missing from it is noticed."""
    table = readme_events()
    del table["HandoverForced"]
    assert table != {reason.value: reason.type.value for reason in Reason}


@pytest.mark.parametrize("reason", list(Reason))
def test_an_event_takes_its_type_from_its_reason(reason: Reason) -> None:
    event = Event(reason, "message")
    assert event.type is reason.type
    assert event.type in (EventType.NORMAL, EventType.WARNING)
    assert re.fullmatch(r"[A-Z][A-Za-z]+", reason.value)  # CamelCase, as Kubernetes' own


def test_a_possible_split_is_a_warning() -> None:
    assert Reason.HANDOVER_FORCED.type is EventType.WARNING
    assert Reason.HANDOVER_COMPLETED.type is EventType.NORMAL
