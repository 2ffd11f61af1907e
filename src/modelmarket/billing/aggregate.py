"""Summing rated usage events into groups (currency, model, unit kind), exactly. No I/O."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import NamedTuple

from modelmarket.core.money import EXACT
from modelmarket.metering.units import UnitKind


class UsageRow(NamedTuple):
    """The fields of one rated usage event that billing reads."""

    currency: str
    model_name: str
    unit_kind: UnitKind
    unit_price: Decimal
    quantity_base: int
    """Base units (images, tokens, seconds, requests); IU = quantity_base / unit_kind.divisor, exactly."""
    amount_numerator: Decimal
    """The event's exact amount is ``amount_numerator / unit_kind.divisor`` (= quantity_base x unit_price / divisor)."""


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """The exact totals of the usage events of one currency, model and unit kind."""

    currency: str
    model_name: str
    unit_kind: UnitKind
    events: int
    quantity_base: int
    amount_exact: Fraction
    unit_price: Decimal | None
    """The unit price when every event had the same one, else None."""


@dataclass(slots=True)
class _Totals:
    events: int
    quantity_base: int
    amount_numerator: Decimal
    unit_price: Decimal | None


def aggregate_usage(rows: Iterable[UsageRow]) -> list[UsageGroup]:
    """Group and sum usage rows; groups ordered by (currency, model name, unit kind)."""
    totals: dict[tuple[str, str, UnitKind], _Totals] = {}
    for row in rows:
        key = (row.currency, row.model_name, row.unit_kind)
        acc = totals.get(key)
        if acc is None:
            totals[key] = _Totals(1, row.quantity_base, row.amount_numerator, row.unit_price)
            continue
        acc.events += 1
        acc.quantity_base += row.quantity_base
        acc.amount_numerator = EXACT.add(acc.amount_numerator, row.amount_numerator)
        if acc.unit_price is not None and acc.unit_price != row.unit_price:
            acc.unit_price = None
    return [
        UsageGroup(
            *key,
            events=acc.events,
            quantity_base=acc.quantity_base,
            amount_exact=Fraction(acc.amount_numerator) / key[2].divisor,
            unit_price=acc.unit_price,
        )
        for key, acc in sorted(totals.items())
    ]
