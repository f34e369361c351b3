from __future__ import annotations

import random
from decimal import Decimal

import pytest

from shared.errors import InvalidAmount
from shared.money import MAX_AMOUNT_MINOR, format_minor, parse_amount


@pytest.mark.parametrize(("value", "minor"), [
    (1, 100),
    (Decimal("0.01"), 1),
    (Decimal("100.5"), 10050),
    (Decimal("100.50"), 10050),
    (Decimal("1.100"), 110),  # numerically two places, so exact
    (Decimal("1E+2"), 10000),
    ("0.01", 1),
    ("100", 10000),
    ("100.5", 10050),
    ("999999999.99", 99999999999),
    ("1000000000", MAX_AMOUNT_MINOR),
    (1_000_000_000, MAX_AMOUNT_MINOR),
])
def test_valid_amounts_become_exact_minor_units(value: object, minor: int) -> None:
    assert parse_amount(value) == minor


@pytest.mark.parametrize("value", [
    0, -1, Decimal("0"), Decimal("-0.01"), Decimal("0.001"), Decimal("1.005"), Decimal("NaN"),
    Decimal("Infinity"), Decimal("1E+400"), Decimal("1E-400"), 1_000_000_001, Decimal("1000000000.01"),
    "0", "0.00", "-1", "+1", "1.005", "1e2", " 1", "1 ", "01", "1.", ".5", "", "abc", "NaN", "\u0661\u0660",
    "1000000000.01", "9" * 5000, True, False, None, [], {}, 1.5,
])
def test_invalid_amounts_are_refused(value: object) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(value)


@pytest.mark.parametrize(("minor", "text"), [(0, "0.00"), (1, "0.01"), (10050, "100.50"), (-250, "-2.50"),
                                             (123456789012, "1234567890.12")])
def test_format_minor(minor: int, text: str) -> None:
    assert format_minor(minor) == text


def test_decimal_strings_agree_with_decimal_arithmetic() -> None:
    """Strings take an integer-only path; it must give what exact decimal arithmetic gives, at every length."""
    draw = random.Random(11)
    for _ in range(5_000):
        major = str(draw.randrange(10 ** draw.randrange(1, 13)))
        text = major + draw.choice(("", f".{draw.randrange(10)}", f".{draw.randrange(100):02d}"))
        expected = int(Decimal(text) * 100)
        if 0 < expected <= MAX_AMOUNT_MINOR:
            assert parse_amount(text) == expected, text
        else:
            with pytest.raises(InvalidAmount):
                parse_amount(text)
