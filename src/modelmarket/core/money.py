"""Money: Decimal amounts with an explicit currency. Never floats; rounding mode passed explicitly."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, Inexact, InvalidOperation, Rounded
from fractions import Fraction

from modelmarket.core.errors import InvalidInput, ensure

# ISO 4217 minor units for the currencies we price in; unknown codes default to 2.
_MINOR_UNITS = {"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "JPY": 0, "KRW": 0, "BHD": 3, "KWD": 3}


def minor_units(currency: str) -> int:
    return _MINOR_UNITS.get(currency.upper(), 2)


def quantize_minor(amount: Decimal, currency: str) -> Decimal:
    """Round once, to the currency's minor unit, half-to-even."""
    exponent = Decimal(1).scaleb(-minor_units(currency))
    return amount.quantize(exponent, rounding=ROUND_HALF_EVEN)


_EXACT = Context(prec=1000, traps=[Inexact, Rounded])


def round_minor(value: Fraction | Decimal, currency: str) -> Decimal:
    """Round an exact rational amount once, to the currency's minor unit, half-to-even, with no error."""
    places = minor_units(currency)
    return Decimal(round(Fraction(value) * 10**places)).scaleb(-places, context=_EXACT)


def fraction_to_decimal(value: Fraction) -> Decimal:
    """Exact when the denominator has only the factors 2 and 5; otherwise rounded to 50 significant digits."""
    den = value.denominator
    for factor in (2, 5):
        while den % factor == 0:
            den //= factor
    ctx = _EXACT if den == 1 else Context(prec=50)
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


@dataclass(frozen=True, slots=True)
class Money:
    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        ensure(isinstance(self.amount, Decimal), "Money.amount must be a Decimal")
        ensure(len(self.currency) == 3 and self.currency.isupper(), f"bad currency {self.currency!r}")

    def __add__(self, other: Money) -> Money:
        ensure(other.currency == self.currency, f"cannot add {other.currency} to {self.currency}")
        return Money(self.amount + other.amount, self.currency)

    def __mul__(self, factor: Decimal) -> Money:
        return Money(self.amount * factor, self.currency)

    def rounded(self) -> Money:
        return Money(quantize_minor(self.amount, self.currency), self.currency)

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"
