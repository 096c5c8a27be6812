"""The shared checks of every strict parser, each tested once, as tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewaypool.strict import (
    SHOW_LIMIT,
    DuplicateKeyError,
    format_time,
    is_decimal_key,
    is_int,
    kind_of,
    parse_time,
    refuse_duplicate_keys,
    show,
)

NOON = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (NOON, "2026-03-01T12:00:00.000000Z"),
        (NOON + timedelta(microseconds=250_000), "2026-03-01T12:00:00.250000Z"),
        (
            datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=2))),
            "2026-03-01T12:00:00.000000Z",
        ),
    ],
)
def test_format_time(moment: datetime, text: str) -> None:
    assert format_time(moment) == text


def test_format_time_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        format_time(datetime(2026, 3, 1, 12, 0, 0))


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-03-01T12:00:00Z", NOON),  # as Kubernetes writes
        ("2026-03-01T12:00:00.000000Z", NOON),  # as we write
        ("2026-03-01T12:00:00.25Z", NOON + timedelta(microseconds=250_000)),
        ("2026-03-01T14:00:00+02:00", NOON),  # as kopf writes, with an offset
        ("2026-03-01T12:00:00", NOON),  # no time zone: UTC, as kopf reads its peers
        ("2026-03-01T12:00:00.000000", NOON),
    ],
)
def test_parse_time(text: str, moment: datetime) -> None:
    parsed = parse_time(text)
    assert parsed == moment
    assert parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize("value", ["", "yesterday", "2026-13-01T12:00:00Z", "12:00", None, 5, b"x"])
def test_parse_time_gives_none_for_what_is_not_a_time(value: object) -> None:
    assert parse_time(value) is None


@given(st.datetimes(min_value=datetime(1970, 1, 1), timezones=st.just(UTC)))
def test_a_written_time_reads_back_exactly(moment: datetime) -> None:
    assert parse_time(format_time(moment)) == moment


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, True),
        (-3, True),
        (2**70, True),
        (True, False),
        (False, False),
        (1.0, False),
        ("1", False),
        (None, False),
    ],
)
def test_is_int(value: object, expected: bool) -> None:
    assert is_int(value) is expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("0", True),
        ("17", True),
        ("4095", True),
        ("", False),
        ("017", False),
        ("+1", False),
        ("-1", False),
        (" 1", False),
        ("1.0", False),
        ("\u0661", False),
        ("\u00b2", False),
        (17, False),
        (None, False),
    ],
)
def test_is_decimal_key(key: object, expected: bool) -> None:
    assert is_decimal_key(key) is expected


def test_refuse_duplicate_keys_refuses_the_first_repeat_at_any_depth() -> None:
    assert json.loads('{"a": {"b": 1}, "c": 2}', object_pairs_hook=refuse_duplicate_keys) == {
        "a": {"b": 1},
        "c": 2,
    }
    for text, key in [('{"a": 1, "a": 1}', "a"), ('{"x": {"b": 1, "b": 2}}', "b")]:
        with pytest.raises(DuplicateKeyError) as caught:
            json.loads(text, object_pairs_hook=refuse_duplicate_keys)
        assert caught.value.key == key
        assert str(caught.value) == f"duplicate key {key!r}"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("gw-0", "'gw-0'"),
        (None, "None"),
        (MappingProxyType({"a": (1, 2)}), "{'a': [1, 2]}"),  # a frozen spec, as written
        ("x" * 200, "'" + "x" * (SHOW_LIMIT - 4) + "..."),
    ],
)
def test_show(value: object, text: str) -> None:
    assert show(value) == text
    assert len(show(value)) <= SHOW_LIMIT


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "null"),
        (True, "a boolean"),
        (3, "an integer"),
        (0.5, "a number"),
        ("", "a string"),
        ([], "a list"),
        ((), "a list"),
        ({}, "an object"),
        (MappingProxyType({}), "an object"),
        (b"", "bytes"),
    ],
)
def test_kind_of(value: object, kind: str) -> None:
    assert kind_of(value) == kind
