"""Summing rated usage events into groups (currency, model, unit kind), exactly."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Clamped, Context, Decimal, DivisionByZero, Inexact, InvalidOperation, Overflow, Rounded
from fractions import Fraction
from typing import NamedTuple

from modelmarket.core.money import fraction_to_decimal

EXACT_DIGITS = 200
"""Significant digits kept while summing. A sum that would need more raises instead of rounding."""


def exact_context() -> Context:
    """A decimal context in which any rounding raises: sums and products are exact or fail loudly."""
    traps = [Inexact, Rounded, InvalidOperation, Overflow, DivisionByZero, Clamped]
    return Context(prec=EXACT_DIGITS, traps=traps)


class UsageRow(NamedTuple):
    """The fields of one rated usage event that billing reads."""

    currency: str
    model_name: str
    unit_kind: str
    quantity_iu: Decimal
    unit_price: Decimal
    amount: Decimal
    """The event's exact amount is ``amount / amount_divisor`` (see the usage_events table)."""
    amount_divisor: int = 1
    quantity_base: int | None = None
    """Base units (images, tokens, seconds, requests); IU = quantity_base / amount_divisor, exactly."""


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """The exact totals of the usage events of one currency, model and unit kind."""

    currency: str
    model_name: str
    unit_kind: str
    events: int
    quantity_iu: Decimal
    amount_exact: Fraction
    """The exact sum of the events' amounts."""
    unit_price: Decimal | None
    """The unit price when every event had the same one, else None."""

    @property
    def amount_precise(self) -> Decimal:
        """``amount_exact`` as a decimal: exact when it has a finite decimal expansion, else 50 digits."""
        return fraction_to_decimal(self.amount_exact)


@dataclass(slots=True)
class _Totals:
    events: int
    quantity_iu: Fraction
    amounts: dict[int, Decimal]  # divisor -> exact sum of numerators
    unit_price: Decimal | None


def _row_iu(row: UsageRow) -> Fraction:
    if row.quantity_base is None:
        return Fraction(row.quantity_iu)
    return Fraction(row.quantity_base, row.amount_divisor)


def _exact_sum(amounts: dict[int, Decimal]) -> Fraction:
    return sum((Fraction(numerator) / divisor for divisor, numerator in amounts.items()), Fraction(0))


def aggregate_usage(rows: Iterable[UsageRow]) -> list[UsageGroup]:
    """Group and sum usage rows; groups ordered by (currency, model name, unit kind)."""
    ctx = exact_context()
    totals: dict[tuple[str, str, str], _Totals] = {}
    for row in rows:
        key = (row.currency, row.model_name, row.unit_kind)
        acc = totals.get(key)
        iu = _row_iu(row)
        if acc is None:
            totals[key] = _Totals(1, iu, {row.amount_divisor: row.amount}, row.unit_price)
            continue
        acc.events += 1
        acc.quantity_iu += iu
        acc.amounts[row.amount_divisor] = ctx.add(acc.amounts.get(row.amount_divisor, Decimal(0)), row.amount)
        if acc.unit_price is not None and acc.unit_price != row.unit_price:
            acc.unit_price = None
    return [
        UsageGroup(
            *key,
            events=acc.events,
            quantity_iu=fraction_to_decimal(acc.quantity_iu),
            amount_exact=_exact_sum(acc.amounts),
            unit_price=acc.unit_price,
        )
        for key, acc in sorted(totals.items())
    ]
