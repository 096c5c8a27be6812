"""Kubernetes resource quantities, parsed and written the way the API server does.

The API server stores a ``resource.Quantity`` (``resources.requests.cpu``,
a PVC's ``storage`` request, an ``emptyDir``'s ``sizeLimit``) in canonical
form, whatever was sent: ``1000m`` comes back as ``1``, ``1024Mi`` as
``1Gi``. A client that compares what it wants with what it reads must compare
canonical forms, or it sees a change that is not one and writes forever.
This module is that canonical form, following apimachinery's
``resource.Quantity`` rules:

- a quantity is ``<sign><digits>[.<digits>]<suffix>``; the suffix is binary
  SI (``Ki`` .. ``Ei``), decimal SI (``n``, ``u``, ``m``, none, ``k``,
  ``M``, ``G``, ``T``, ``P``, ``E``) or a decimal exponent (``e3``, ``E-6``);
- the value is rounded up (away from zero) to a multiple of ``1n``;
- the canonical form keeps the input's family: a decimal SI input is written
  with the largest decimal SI suffix that keeps the number an integer
  (``0.5`` -> ``500m``, ``2000000`` -> ``2M``), a decimal exponent input
  likewise with an exponent that is a multiple of 3 (``1500e3`` -> ``1500e3``,
  ``1e6`` -> ``1e6``); a binary SI input with the largest power of 1024 that
  keeps an integer (``1.5Gi`` -> ``1536Mi``), unless its value is below 1024
  in magnitude or not a whole number, which is written as decimal SI
  (``0.5Ki`` -> ``512``).

Pure: no Kubernetes import.
"""

from __future__ import annotations

import decimal
import enum
import re
from typing import Final

__all__ = ["QuantityError", "QuantityFormat", "canonical", "parse", "same"]


class QuantityError(ValueError):
    """The text is not a Kubernetes quantity."""


class QuantityFormat(enum.Enum):
    """The suffix family a quantity was written in, which its canonical form keeps."""

    BINARY_SI = "BinarySI"
    DECIMAL_SI = "DecimalSI"
    DECIMAL_EXPONENT = "DecimalExponent"


_CONTEXT: Final = decimal.Context(prec=200, rounding=decimal.ROUND_UP)
_NANO: Final = decimal.Decimal("1e-9")
_BINARY: Final = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL: Final = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15}
_DECIMAL_SUFFIX_BY_EXPONENT: Final = {exponent: suffix for suffix, exponent in _DECIMAL.items()}
_DECIMAL_SUFFIX_BY_EXPONENT[18] = "E"
_BINARY_SUFFIX_BY_EXPONENT: Final = {
    0: "",
    **{bits // 10: suffix for suffix, bits in _BINARY.items()},
}
_SYNTAX: Final = re.compile(r"(?P<sign>[+-]?)(?P<number>\d+\.?\d*|\.\d+)(?P<suffix>.*)")
_EXPONENT: Final = re.compile(r"[eE](?P<exponent>[+-]?\d+)")


def parse(text: str | int | float) -> tuple[decimal.Decimal, QuantityFormat]:
    """The value of a quantity (rounded up to ``1n``) and its suffix family.

    Parameters
    ----------
    text
        ``"500m"``, ``"1.5Gi"``, ``"1e3"``; an ``int`` or ``float`` is read
        as its decimal text, as a JSON number in a manifest is.

    Raises
    ------
    QuantityError
        If ``text`` is not a quantity (names the text).
    """
    if isinstance(text, bool):
        raise QuantityError(f"quantity {text!r}: a boolean is not a quantity")
    source = str(text).strip() if not isinstance(text, float) else format(text, "f")
    match = _SYNTAX.fullmatch(source)
    if match is None:
        raise QuantityError(f"quantity {text!r}: expected <number><suffix>, e.g. 500m or 1Gi")
    number = decimal.Decimal(match["number"])
    suffix = match["suffix"]
    if suffix in _BINARY:
        value = number * (2 ** _BINARY[suffix])
        family = QuantityFormat.BINARY_SI
    elif suffix in _DECIMAL or suffix == "E":
        value = number.scaleb(_DECIMAL.get(suffix, 18), _CONTEXT)
        family = QuantityFormat.DECIMAL_SI
    elif (exponent := _EXPONENT.fullmatch(suffix)) is not None:
        value = number.scaleb(int(exponent["exponent"]), _CONTEXT)
        family = QuantityFormat.DECIMAL_EXPONENT
    else:
        raise QuantityError(f"quantity {text!r}: unknown suffix {suffix!r}")
    # Round up to whole nanos: asking for a sliver of a resource gets 1n of it.
    value = value.quantize(_NANO, context=_CONTEXT)
    if match["sign"] == "-":
        value = -value
    if family is QuantityFormat.BINARY_SI and 0 < abs(value) < 1:
        family = QuantityFormat.DECIMAL_SI
    return value, family


def _decimal_form(value: decimal.Decimal) -> tuple[int, int]:
    """``value`` as ``mantissa * 10**exponent``, exponent a multiple of 3, as large as exact."""
    exponent = -9
    mantissa = int(value.scaleb(9, _CONTEXT))
    while mantissa != 0 and mantissa % 1000 == 0 and exponent < 18:
        mantissa //= 1000
        exponent += 3
    if mantissa == 0:
        exponent = 0
    return mantissa, exponent


def canonical(text: str | int | float) -> str:
    """The quantity as the API server stores it: ``"1000m"`` -> ``"1"``.

    Raises
    ------
    QuantityError
        If ``text`` is not a quantity.
    """
    value, family = parse(text)
    if family is QuantityFormat.BINARY_SI and (abs(value) < 1024 or value != value.to_integral()):
        family = QuantityFormat.DECIMAL_SI  # no rounding into a binary suffix
    if family is QuantityFormat.BINARY_SI:
        mantissa, power = int(value), 0
        while mantissa % 1024 == 0 and power < 6:
            mantissa //= 1024
            power += 1
        return f"{mantissa}{_BINARY_SUFFIX_BY_EXPONENT[power]}"
    mantissa, exponent = _decimal_form(value)
    if family is QuantityFormat.DECIMAL_EXPONENT:
        return f"{mantissa}e{exponent}" if exponent else str(mantissa)
    return f"{mantissa}{_DECIMAL_SUFFIX_BY_EXPONENT[exponent]}"


def same(left: str | int | float, right: str | int | float) -> bool:
    """Whether two quantities have the same value (``"1"`` and ``"1000m"`` do).

    Raises
    ------
    QuantityError
        If either is not a quantity.
    """
    return parse(left)[0] == parse(right)[0]
