"""Money is integer minor units (cents) inside the service; this is the one place that converts.

Amounts arrive as JSON numbers (parsed to ``Decimal``, never ``float``) or decimal strings, and leave as
strings with two decimal places, so no binary float ever touches a balance.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from shared.errors import InvalidAmount, InvalidQuery

MINOR_PER_MAJOR = 100
#: Largest amount of one deposit or withdrawal: 1,000,000,000.00.
MAX_AMOUNT_MINOR = 1_000_000_000 * MINOR_PER_MAJOR
#: Largest balance an account may hold: 1,000,000,000,000.00 (well inside int64 minor units).
MAX_BALANCE_MINOR = 1_000_000_000_000 * MINOR_PER_MAJOR

_DECIMAL_STRING = re.compile(r"(?:0|[1-9][0-9]{0,11})(?:\.[0-9]{1,2})?")
_FUNDS_STRING = re.compile(r"(?:0|[1-9][0-9]{0,12})(?:\.[0-9]{1,2})?")
_HUNDRED = Decimal(MINOR_PER_MAJOR)


def parse_amount(value: object) -> int:
    """Validate a request amount and return it in minor units."""
    if isinstance(value, bool):  # bool is an int subclass; true is not 1.00
        raise InvalidAmount("amount must be a number or a decimal string, not a boolean")
    if isinstance(value, int):
        minor = value * MINOR_PER_MAJOR
    elif isinstance(value, Decimal):
        minor = _decimal_to_minor(value)
    elif isinstance(value, str):
        if not _DECIMAL_STRING.fullmatch(value):
            raise InvalidAmount(
                f"amount string must look like 12.34 (at most 2 decimal places, no sign or exponent), "
                f"got {value[:40]!r}"
            )
        # The pattern admits only digits and at most two decimals: integer arithmetic is exact here and
        # several times cheaper than Decimal.
        major, _, cents = value.partition(".")
        minor = int(major) * MINOR_PER_MAJOR + int(cents.ljust(2, "0"))
    else:
        raise InvalidAmount("amount must be a JSON number or a decimal string")
    if minor <= 0:
        raise InvalidAmount("amount must be greater than 0")
    if minor > MAX_AMOUNT_MINOR:
        raise InvalidAmount(f"amount must not exceed {format_minor(MAX_AMOUNT_MINOR)}")
    return minor


def parse_funds(value: str, name: str) -> int:
    """A balance bound of a query (``min_funds=12.34``), in minor units: a decimal string, 0 or more."""
    if not _FUNDS_STRING.fullmatch(value):
        raise InvalidQuery(f"{name} must look like 12.34 (0 or more, at most 2 decimal places), got {value[:40]!r}")
    major, _, cents = value.partition(".")
    return int(major) * MINOR_PER_MAJOR + int(cents.ljust(2, "0"))


def _decimal_to_minor(value: Decimal) -> int:
    if not value.is_finite():
        raise InvalidAmount("amount must be a finite number")
    # Compare magnitudes before scaling so an exponent like 1e999999 cannot make us build a huge integer.
    if value.copy_abs() > MAX_AMOUNT_MINOR:
        raise InvalidAmount(f"amount must not exceed {format_minor(MAX_AMOUNT_MINOR)}")
    try:
        scaled = value * _HUNDRED
        if scaled != scaled.to_integral_value():
            raise InvalidAmount("amount must have at most 2 decimal places")
        return int(scaled)
    except InvalidOperation:
        raise InvalidAmount("amount is not a valid number") from None


def format_minor(minor: int) -> str:
    """Render minor units as a decimal string with two places: 12345 -> "123.45"."""
    sign = "-" if minor < 0 else ""
    major, cents = divmod(abs(minor), MINOR_PER_MAJOR)
    return f"{sign}{major}.{cents:02d}"
