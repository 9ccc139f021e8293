"""Kubernetes quantities (500Mi, 100m, 1.5, 1e3) as exact decimal numbers for numeric comparisons.

The grammar is the one of resource.Quantity in k8s.io/apimachinery: a signed decimal number followed
by a binary SI suffix (Ki Mi Gi Ti Pi Ei), a decimal SI suffix (n u m k M G T P E), a decimal
exponent (e3, E-2) or nothing. Values are Decimals, so 1.5Gi equals 1536Mi and 100m equals 0.1
exactly.
"""

from __future__ import annotations

import math
import re
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?:(?P<binary>Ki|Mi|Gi|Ti|Pi|Ei)|(?P<decimal>[numkMGTPE])|[eE](?P<exponent>[+-]?[0-9]+))?"
)

_BINARY_FACTORS = {suffix: Decimal(1024**power) for power, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), start=1)}
_DECIMAL_EXPONENTS = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

# Longer texts are not treated as quantities, which bounds the work of one parse. The API server's
# own quantities are far shorter.
MAX_QUANTITY_LENGTH = 100

# 200 digits hold the product of a 100-character mantissa and 1024**6 exactly.
_EXACT = Context(prec=200)

Number = int | float | Decimal


@lru_cache(maxsize=4096)
def parse_quantity(text: str) -> Decimal | None:
    """Return the value of a Kubernetes quantity such as "500Mi", "100m" or "1e3", or None.

    None means the text is not a quantity: empty, too long, with spaces, or with an unknown suffix.
    The result is cached because objects repeat the same few quantities.
    """
    if len(text) > MAX_QUANTITY_LENGTH:
        return None
    parsed = _QUANTITY.fullmatch(text)
    if parsed is None:
        return None
    number = Decimal(parsed["number"])
    if parsed["binary"]:
        return _EXACT.multiply(number, _BINARY_FACTORS[parsed["binary"]])
    if parsed["decimal"]:
        return number.scaleb(_DECIMAL_EXPONENTS[parsed["decimal"]], _EXACT)
    if parsed["exponent"] is not None:
        try:
            return Decimal(f"{parsed['number']}e{parsed['exponent']}")
        except (InvalidOperation, ValueError):
            return None
    return number


def number_of(value: Any) -> Number | None:
    """Return the number a JSON value stands for in a numeric comparison, or None.

    A JSON integer is returned as it is and a float as the Decimal of its shortest text, so 0.1 in an
    object equals 0.1 in a rule. A string counts when it is a quantity. Booleans, NaN, infinities and
    every other value are not numbers.
    """
    value_type = type(value)
    if value_type is int:
        return value
    if value_type is str:
        return parse_quantity(value)
    if value_type is float:
        return Decimal(repr(value)) if math.isfinite(value) else None
    if value_type is bool or value is None:
        return None
    if isinstance(value, str):
        return parse_quantity(str(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return Decimal(repr(float(value))) if math.isfinite(value) else None
    return None


def threshold_of(value: Any) -> Decimal | None:
    """Return the Decimal of a rule's comparison operand (a YAML number or a quantity string), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, str):
        return parse_quantity(value)
    return None
