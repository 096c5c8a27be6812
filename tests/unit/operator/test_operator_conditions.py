"""The pool's condition reasons: each named once, documented once.

Users wait and alert on condition reasons, so a reason the README does not
list, or lists under a condition type the operator does not set, is a
contract broken without a word.
"""

from __future__ import annotations

import re
from pathlib import Path

from gatewaypool_operator.conditions import ConditionReason, ConditionType

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_conditions() -> dict[str, set[str]]:
    """The README's table of conditions: reason → the condition types its row names."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### Conditions\n", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \|", section, flags=re.MULTILINE)
    assert rows, "the README's Conditions section has no table"
    table = {reason: set(re.findall(r"`(\w+)`", types)) for reason, types in rows}
    assert len(table) == len(rows), "a reason is listed twice"
    return table


def test_the_readme_lists_every_reason() -> None:
    assert set(readme_conditions()) == {reason.value for reason in ConditionReason}


def test_the_readme_names_only_the_conditions_the_operator_sets() -> None:
    for reason, types in readme_conditions().items():
        assert types, f"{reason}: its row names no condition"
        assert types <= {kind.value for kind in ConditionType}, reason


def test_the_readme_check_can_fail() -> None:
    """The table is read for real: a reason missing from it is noticed."""
    table = readme_conditions()
    del table["ApplyRefused"]
    assert set(table) != {reason.value for reason in ConditionReason}


def test_reasons_are_camel_case_as_kubernetes_own() -> None:
    for value in [*ConditionReason, *ConditionType]:
        assert re.fullmatch(r"[A-Z][A-Za-z]+", value)
