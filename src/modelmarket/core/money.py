"""Money: exact Decimal and Fraction amounts with an explicit currency. Never floats; rounding mode explicit."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from decimal import (
    ROUND_HALF_EVEN,
    Clamped,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
    Rounded,
)
from fractions import Fraction

import babel.numbers
from babel.core import get_global

from modelmarket.core.errors import InvalidInput

# Currencies come from the CLDR data that ships with babel; nothing is guessed for an unknown code.
#
# Which codes: a price must be in a current ISO 4217 currency. CLDR lists every code it has ever known (307,
# historic ones included); a code is current when some territory still uses it (no end date), as legal tender
# (USD, EUR, JPY, ...) or as an ISO 4217 fund code (CLF, BOV, CHE, CHW, COU, MXV, USN, UYI, UYW, VED).
# Refused: CNH (CLDR's offshore renminbi, which ISO 4217 does not define), and the non-tender X codes
# (XAU, XAG, XPD, XPT, XDR, XBA-XBD, XSU, XUA, XTS, XXX, ...): metals, units of account and test codes, which
# ISO 4217 gives no minor unit ("N.A."), so no invoice line can be rounded in them.
#
# How many places: invoices round to the ISO 4217 minor unit. babel's ``get_currency_precision`` returns CLDR's
# *display* digits, which follow everyday cash usage and differ from ISO 4217 for the codes in
# ``_ISO_MINOR_UNITS_WHERE_CLDR_DIFFERS`` (CLDR shows HUF, IDR, COP, ... without decimals; ISO 4217 gives them
# 2, and IQD 3). Where the two agree (USD 2, EUR 2, JPY 0, KRW 0, CLP 0, ISK 0, UYI 0, KWD 3, BHD 3, OMR 3,
# CLF 4, UYW 4, ...) the value is babel's.
_ISO_MINOR_UNITS_WHERE_CLDR_DIFFERS: dict[str, int] = {
    "AFN": 2, "ALL": 2, "COP": 2, "HUF": 2, "IDR": 2, "IQD": 3, "IRR": 2, "KPW": 2,
    "LAK": 2, "LBP": 2, "MGA": 2, "MMK": 2, "SLL": 2, "SOS": 2, "SYP": 2, "YER": 2,
}  # fmt: skip
_NOT_ISO_4217 = frozenset({"CNH"})
_CURRENCY_RE = re.compile(r"^[A-Z]{3}$")


@functools.cache
def _current_currencies() -> frozenset[str]:
    """Codes of the currencies some territory uses today, per the CLDR data in the installed babel."""
    current: set[str] = set()
    for entries in get_global("territory_currencies").values():
        for code, _start, end, tender in entries:
            if end is None and (tender or not code.startswith("X")) and code not in _NOT_ISO_4217:
                current.add(code)
    return frozenset(current)


@functools.cache
def _known_currencies() -> frozenset[str]:
    """Every code CLDR knows, historic ones included."""
    return frozenset(babel.numbers.list_currencies()) - _NOT_ISO_4217


def _refusal(code: object, field: str) -> InvalidInput | None:
    """Why ``code`` cannot price (``None`` if it can), as the error to raise."""
    if not isinstance(code, str) or not _CURRENCY_RE.match(code):
        hint = ""
        if isinstance(code, str) and _CURRENCY_RE.match(code.strip().upper()):
            hint = f" (write {code.strip().upper()!r})"
        return InvalidInput(f"{field}: {code!r} is not a currency code: use three capital letters, e.g. 'USD'{hint}")
    if code in _current_currencies():
        return None
    if code not in _known_currencies():
        reason = "is not an ISO 4217 currency code"
    elif code.startswith("X") and not code.startswith("XE"):
        reason = "has no minor unit in ISO 4217 (a metal, unit of account or test code), so it cannot price"
    else:
        reason = "is no longer in use (a historic code)"
    return InvalidInput(f"{field}: {code!r} {reason}; use a current ISO 4217 code such as 'USD', 'EUR' or 'JPY'")


def check_currency(code: str, field: str = "currency") -> str:
    """Return ``code`` if it is a current ISO 4217 currency that prices can be set in; else raise ``InvalidInput``.

    The message starts with ``field`` (e.g. ``pricing.currency: ...``) and says what to write instead.
    """
    refusal = _refusal(code, field)
    if refusal is not None:
        raise refusal
    return code


def minor_units(currency: str) -> int:
    """ISO 4217 minor units (decimal places of the smallest unit an invoice uses): USD 2, JPY 0, KWD 3, CLF 4.

    Unknown codes and codes with no minor unit raise ``InvalidInput`` rather than defaulting to 2. A historic
    code babel still knows (a price published before its currency was retired) gets CLDR's digits.
    """
    refusal = _refusal(currency, "currency")
    if refusal is not None and "no longer in use" not in refusal.message:
        raise refusal
    if currency in _ISO_MINOR_UNITS_WHERE_CLDR_DIFFERS:
        return _ISO_MINOR_UNITS_WHERE_CLDR_DIFFERS[currency]
    return int(babel.numbers.get_currency_precision(currency))


def quantize_minor(amount: Decimal, currency: str) -> Decimal:
    """Round once, to the currency's minor unit, half-to-even."""
    exponent = Decimal(1).scaleb(-minor_units(currency))
    return amount.quantize(exponent, rounding=ROUND_HALF_EVEN)


EXACT_DIGITS = 200
"""Significant digits of the one exact decimal context. A result that would need more raises instead of rounding."""

EXACT = Context(prec=EXACT_DIGITS, traps=[Inexact, Rounded, InvalidOperation, Overflow, DivisionByZero, Clamped])
"""The one decimal context for money arithmetic: sums and products are exact or fail loudly, never rounded."""


def round_minor(value: Fraction | Decimal, currency: str) -> Decimal:
    """Round an exact rational amount once, to the currency's minor unit, half-to-even, with no error."""
    places = minor_units(currency)
    return Decimal(round(Fraction(value) * 10**places)).scaleb(-places, context=EXACT)


def sum_exact(values: Iterable[Decimal]) -> Decimal:
    """The exact sum of decimal amounts (in ``EXACT``: a sum that would need rounding raises instead)."""
    total = Decimal(0)
    for value in values:
        total = EXACT.add(total, value)
    return total


def decimal_text(value: Decimal) -> str:
    """A decimal as plain positional text (never exponent notation), for JSON and display."""
    return format(value, "f")


DISPLAY_DIGITS = 50
"""Significant digits shown for an amount with no finite decimal expansion (e.g. 1/60 of a price)."""


def is_terminating(value: Fraction) -> bool:
    """Whether ``value`` has a finite decimal expansion (its denominator has only the factors 2 and 5)."""
    den = value.denominator
    for factor in (2, 5):
        while den % factor == 0:
            den //= factor
    return den == 1


def exact_text(value: Fraction) -> str:
    """An exact quantity as text: plain decimal when it has one (``0.05``), else the fraction (``7/60``)."""
    if is_terminating(value):
        return format(fraction_to_decimal(value), "f")
    return f"{value.numerator}/{value.denominator}"


def fraction_to_decimal(value: Fraction) -> Decimal:
    """Exact when the denominator has only the factors 2 and 5; otherwise rounded to 50 significant digits."""
    ctx = EXACT if is_terminating(value) else Context(prec=DISPLAY_DIGITS)
    return ctx.divide(Decimal(value.numerator), Decimal(value.denominator))


def parse_decimal(value: object, field: str) -> Decimal:
    """Parse a user-supplied decimal (string or int). Floats are refused: they are not exact."""
    if isinstance(value, float):
        raise InvalidInput(f"{field}: write the amount as a quoted decimal string, not a float ({value!r})")
    try:
        result = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise InvalidInput(f"{field}: {value!r} is not a decimal number") from None
    if not result.is_finite():
        raise InvalidInput(f"{field}: {value!r} is not a finite number")
    return result
