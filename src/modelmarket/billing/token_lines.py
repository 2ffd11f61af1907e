"""The input and output tokens of an invoice line, for a model that prices them apart. Pure: no I/O.

A ``tokens_1k`` version whose manifest gives ``input_price_per_iu`` and ``output_price_per_iu`` is rated at its
list prices as ``factor x (input IU x input price + output IU x output price)`` (``rating.Rater._list``). Of an
event's billable tokens the output ones are the last part of the call (an included allowance covers the first
ones), so ``output = min(billable, quantity_out)`` and ``input = billable - output``. Rating records one exact
amount per event; the invoice splits it back, exactly, in the ratio of its two list amounts (the factor cancels):

    output amount = amount x output x output price / (input x input price + output x output price)
    input amount  = amount - output amount

An invoice line whose every event was billed that way (none at a plan's overage or enterprise rate, none of it
covered by an allowance on an adjustment line) carries *token lines*: one per direction and list price (two
versions of a model may price tokens differently), input first. Their quantities and exact amounts add up to the
line's. The line keeps its amount, rounded once as every line is, so the invoice total does not change; its token
lines share that amount exactly: each gets its exact amount rounded down to the minor unit, and the minor units
left over go one each to those with the largest remainders (ties: the first), so each is within one minor unit
of its exact amount and together they are the line's amount.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from modelmarket.billing.charges import ChargeModel
from modelmarket.billing.ports import RatedEvent
from modelmarket.core.errors import ensure
from modelmarket.core.money import EXACT, decimal_text, exact_text, minor_units
from modelmarket.metering.units import UnitKind

INPUT, OUTPUT = "input", "output"
DIRECTIONS = (INPUT, OUTPUT)

TokenPrices = tuple[Decimal, Decimal]
"""(input price per IU, output price per IU) of a version that prices input and output tokens apart."""


def token_prices(charge: ChargeModel) -> TokenPrices | None:
    """The input and output prices of a charge model that prices them apart, else None."""
    if charge.output_price_per_iu is None or charge.input_price_per_iu is None:
        return None
    return charge.input_price_per_iu, charge.output_price_per_iu


@dataclass(frozen=True, slots=True)
class TokenLine:
    """The input or the output tokens of one invoice line at one list price."""

    direction: str
    """'input' or 'output'."""
    price_per_iu: Decimal
    """The version's list price per IU (1,000 tokens), before any dynamic price factor."""
    events: int
    """The line's events that billed tokens of this direction at this price."""
    quantity_iu: Fraction
    amount_exact: Fraction
    amount: Decimal
    """This direction's share of the line's rounded amount (see the module's docstring)."""

    def __post_init__(self) -> None:
        ensure(self.direction in DIRECTIONS, f"a token line is input or output, not {self.direction!r}")

    @property
    def factored(self) -> bool:
        """Whether a dynamic price factor other than 1 applied to some of its tokens (the exact amount is then
        not ``quantity x price``)."""
        return self.amount_exact != self.quantity_iu * Fraction(self.price_per_iu)

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "events": self.events,
            "quantity_iu": exact_text(self.quantity_iu),
            "price_per_iu": decimal_text(self.price_per_iu),
            "amount_exact": exact_text(self.amount_exact),
            "amount": decimal_text(self.amount),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TokenLine:
        return cls(
            doc["direction"],
            Decimal(doc["price_per_iu"]),
            int(doc["events"]),
            Fraction(doc["quantity_iu"]),
            Fraction(doc["amount_exact"]),
            Decimal(doc["amount"]),
        )


def split_row(row: RatedEvent, prices: TokenPrices) -> tuple[int, Fraction, int, Fraction]:
    """(input base units, input amount, output base units, output amount) of the billable part of a row rated at
    its version's input and output list prices; the amounts are exact and add up to the row's."""
    billable = row.quantity_base - row.granted_base
    out = min(billable, row.quantity_out)
    inp = billable - out
    in_list = inp * Fraction(prices[0])
    out_list = out * Fraction(prices[1])
    weight = in_list + out_list
    ensure(weight != 0 or row.amount == 0, f"event {row.event_id}: an amount for tokens that cost nothing")
    out_amount = row.amount * out_list / weight if weight else Fraction(0)
    return inp, row.amount - out_amount, out, out_amount


class TokenSplit:
    """The token lines of one invoice line, summed exactly over its events."""

    __slots__ = ("parts",)

    def __init__(self) -> None:
        self.parts: dict[tuple[int, Decimal], list[Any]] = {}
        """(0 input | 1 output, price) -> [events, base units, exact amount, the price as first seen]."""

    def add(self, row: RatedEvent, prices: TokenPrices) -> None:
        inp, in_amount, out, out_amount = split_row(row, prices)
        for side, units, amount in ((0, inp, in_amount), (1, out, out_amount)):
            if units == 0:
                continue
            acc = self.parts.setdefault((side, prices[side]), [0, 0, Fraction(0), prices[side]])
            acc[0] += 1
            acc[1] += units
            acc[2] += amount

    def lines(self, unit: UnitKind, line_amount: Decimal, currency: str) -> tuple[TokenLine, ...]:
        """The token lines, input first then by price, sharing ``line_amount`` (the line's rounded amount)."""
        keys = sorted(self.parts)
        shares = apportion([self.parts[k][2] for k in keys], line_amount, currency)
        return tuple(
            TokenLine(
                DIRECTIONS[side],
                self.parts[(side, price)][3],
                self.parts[(side, price)][0],
                Fraction(self.parts[(side, price)][1], unit.divisor),
                self.parts[(side, price)][2],
                share,
            )
            for (side, price), share in zip(keys, shares, strict=True)
        )


def apportion(exacts: Sequence[Fraction], total: Decimal, currency: str) -> list[Decimal]:
    """Share ``total`` (the once-rounded sum of ``exacts``, non-negative amounts) among the parts: each its exact
    amount rounded down to the minor unit, and the minor units left over one each to the parts with the largest
    remainders (ties: the first). Each part is within one minor unit of its exact amount; they add up to
    ``total``."""
    places = minor_units(currency)
    scale = 10**places
    scaled = [x * scale for x in exacts]
    ensure(all(x >= 0 for x in scaled), "token amounts are not negative")
    units = [math.floor(x) for x in scaled]
    total_units = Fraction(total) * scale
    ensure(total_units.denominator == 1, f"{total} is not in whole minor units of {currency}")
    left = int(total_units) - sum(units)
    ensure(0 <= left <= len(units), f"{total} is not the rounded sum of the parts {[str(x) for x in exacts]}")
    for i in sorted(range(len(units)), key=lambda i: (units[i] - scaled[i], i))[:left]:
        units[i] += 1
    return [Decimal(n).scaleb(-places, context=EXACT) for n in units]
