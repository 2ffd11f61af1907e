"""Currencies: ISO 4217 codes only, and invoices round to ISO 4217 minor units (not CLDR's display digits)."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import babel.numbers
import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import check_currency, minor_units, quantize_minor, round_minor

pytestmark = pytest.mark.timeout(60)

# ISO 4217 list one, minor unit column.
ISO_MINOR_UNITS = {
    "USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "CNY": 2, "INR": 2, "BRL": 2, "TWD": 2, "RSD": 2,
    "JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "VND": 0, "UYI": 0, "XAF": 0, "XOF": 0, "XPF": 0, "PYG": 0,
    "KWD": 3, "BHD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3,
    "CLF": 4, "UYW": 4,
    # CLDR shows these without decimals; ISO 4217 (and so an invoice) keeps them.
    "HUF": 2, "IDR": 2, "COP": 2, "IRR": 2, "LAK": 2, "LBP": 2, "MMK": 2, "SYP": 2, "YER": 2, "AFN": 2,
}  # fmt: skip


@pytest.mark.parametrize(("code", "places"), sorted(ISO_MINOR_UNITS.items()))
def test_minor_units_are_iso_4217(code: str, places: int) -> None:
    assert minor_units(code) == places
    assert check_currency(code) == code


@pytest.mark.parametrize("code", ["HUF", "IDR", "COP", "IQD"])
def test_where_cldr_display_digits_differ_iso_wins(code: str) -> None:
    # The reason minor_units is not simply babel's get_currency_precision: if CLDR ever agrees, this tells us.
    assert babel.numbers.get_currency_precision(code) != ISO_MINOR_UNITS[code]
    assert minor_units(code) == ISO_MINOR_UNITS[code]


@pytest.mark.parametrize(
    ("code", "words"),
    [
        ("ABC", "'ABC' is not an ISO 4217 currency code"),
        ("ZZZ", "not an ISO 4217 currency code"),
        ("CNH", "not an ISO 4217 currency code"),  # CLDR's offshore renminbi; ISO 4217 has only CNY
        ("XXX", "has no minor unit in ISO 4217"),
        ("XTS", "has no minor unit in ISO 4217"),
        ("XAU", "has no minor unit in ISO 4217"),
        ("XDR", "has no minor unit in ISO 4217"),
        ("DEM", "no longer in use"),
        ("HRK", "no longer in use"),
        ("usd", r"three capital letters.*\(write 'USD'\)"),
        ("US", "three capital letters"),
        ("USDT", "three capital letters"),
        ("", "three capital letters"),
    ],
)
def test_check_currency_refuses_what_is_not_a_current_iso_code(code: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=rf"^pricing\.currency: .*{words}") as info:
        check_currency(code, "pricing.currency")
    if code.isupper() and len(code) == 3:
        assert "such as 'USD'" in info.value.message


def test_check_currency_names_its_default_field() -> None:
    with pytest.raises(InvalidInput, match=r"^currency: 'ABC'"):
        check_currency("ABC")


@pytest.mark.parametrize("code", ["ABC", "XXX", "XAU", "usd", "CNH"])
def test_minor_units_refuses_unknown_codes_instead_of_guessing_two(code: str) -> None:
    with pytest.raises(InvalidInput, match="currency"):
        minor_units(code)
    with pytest.raises(InvalidInput):
        quantize_minor(Decimal("1.005"), code)


def test_a_retired_code_still_rounds_for_prices_published_before() -> None:
    assert minor_units("HRK") == 2  # babel knows it; check_currency refuses new prices in it


def test_rounding_uses_the_iso_minor_unit() -> None:
    assert round_minor(Fraction(1, 3), "KWD") == Decimal("0.333")
    assert round_minor(Fraction(1, 3), "CLF") == Decimal("0.3333")
    assert round_minor(Fraction(5, 2), "JPY") == Decimal("2")  # half to even
    assert quantize_minor(Decimal("12.345"), "HUF") == Decimal("12.34")  # CLDR would drop the fillér
    assert quantize_minor(Decimal("1000.5"), "IDR") == Decimal("1000.50")
    assert quantize_minor(Decimal("0.0015"), "IQD") == Decimal("0.002")
