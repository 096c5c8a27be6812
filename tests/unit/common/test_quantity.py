"""Canonical quantities, against examples of apimachinery's ``resource.Quantity``.

Each row is what the API server stores for what a client sent; a wrong row
means the operator would see a change that is not one (or miss one).
"""

from __future__ import annotations

import decimal

import pytest

from gatewaypool.quantity import QuantityError, QuantityFormat, canonical, parse, same


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        # decimal SI: the largest suffix that keeps the number whole
        ("1000m", "1"),
        ("1001m", "1001m"),
        ("1500m", "1500m"),
        ("0.5", "500m"),
        ("1.5", "1500m"),
        ("1000", "1k"),
        ("2000000", "2M"),
        ("100m", "100m"),
        ("0.1m", "100u"),
        ("1n", "1n"),
        ("1E", "1E"),
        ("1k", "1k"),
        ("-1000m", "-1"),
        ("+2", "2"),
        (".5", "500m"),
        ("1.", "1"),
        # anything finer than a nano is rounded up, away from zero
        ("0.0000000001", "1n"),
        ("1.0000000001", "1000000001n"),
        ("-0.0000000001", "-1n"),
        # binary SI: the largest power of 1024 that keeps the number whole
        ("1Ki", "1Ki"),
        ("1024Ki", "1Mi"),
        ("1024Mi", "1Gi"),
        ("1.5Gi", "1536Mi"),
        ("0.5Gi", "512Mi"),
        ("100Mi", "100Mi"),
        ("1025Ki", "1025Ki"),
        # ... but below 1024, or not whole, it is written as decimal SI
        ("0.5Ki", "512"),
        ("0.3Ki", "307200m"),
        ("1.5Ki", "1536"),
        # decimal exponent: the family is kept, exponents are multiples of 3
        ("1e3", "1e3"),
        ("1E3", "1e3"),
        ("1e6", "1e6"),
        ("12e6", "12e6"),
        ("1.5e3", "1500"),
        ("1e-3", "1e-3"),
        # zero is zero in every family
        ("0", "0"),
        ("0m", "0"),
        ("0Mi", "0"),
        ("0Ki", "0"),
        ("0e3", "0"),
        # JSON numbers, as a manifest may carry them
        (2, "2"),
        (0.5, "500m"),
        (1000, "1k"),
    ],
)
def test_canonical_matches_the_api_server(sent: str | int | float, stored: str) -> None:
    assert canonical(sent) == stored
    assert canonical(stored) == stored, "canonical form is a fixed point"
    assert same(sent, stored)


@pytest.mark.parametrize("text", ["", "Mi", "1Qi", "1.2.3", "one", "1 Gi", "--1", "1e", "1ki"])
def test_not_a_quantity(text: str) -> None:
    with pytest.raises(QuantityError, match="quantity"):
        canonical(text)


def test_parse_gives_value_and_family() -> None:
    assert parse("1.5Gi") == (decimal.Decimal(1536 * 2**20), QuantityFormat.BINARY_SI)
    assert parse("500m") == (decimal.Decimal("0.5"), QuantityFormat.DECIMAL_SI)
    assert parse("1e3") == (decimal.Decimal(1000), QuantityFormat.DECIMAL_EXPONENT)
    assert not same("1Gi", "1G")
    with pytest.raises(QuantityError):
        parse(True)
