"""Charge models: what one billing period's usage of a model costs under its manifest pricing, exactly. No I/O.

A charge model prices the *cumulative* IU ``q`` of one period (one consumer, one model):

- ``per_unit``: ``q x price``.
- ``graduated``: the first ``up_to`` IU at the first tier's price, the IU above it up to the second tier's
  ``up_to`` at the second tier's price, and so on (as Stripe's and Lago's graduated tiers).
- ``volume``: all ``q`` IU at the price of the tier ``q`` falls in: the first tier with ``q <= up_to``
  (boundaries inclusive), or the open last tier.
- ``package``: ``ceil(q / package_iu) x price_per_package``: a started block costs a whole one; ``q = 0`` costs 0.

Quantities are exact fractions of IU (1,500 tokens = 3/2 ``tokens_1k``; 90 seconds = 3/2 ``audio_minute``) and
amounts exact fractions of the currency: nothing is rounded here (an invoice line rounds once). One event's amount
is the ``marginal`` from the period's quantity before it to the quantity after it, so a period's event amounts sum
to ``total`` of its final quantity whatever order the events came in.

Input and output tokens priced apart (``tokens_1k`` with ``input_price_per_iu``/``output_price_per_iu``, always
``per_unit``): quantities are input IU, priced at the input price; ``output_total`` prices output IU, and
``token_amount`` prices one call from its two token counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from itertools import pairwise
from typing import NamedTuple

from modelmarket.core.errors import InvariantViolated, ensure
from modelmarket.metering.units import UnitKind
from modelmarket.registry.manifest import CHARGE_KINDS, MAX_PRICE_TIERS, ChargeKind, Pricing


class Tier(NamedTuple):
    up_to: int | None
    """The cumulative IU in the period where the tier ends, inclusive; None on the open last tier."""
    price_per_iu: Decimal


def _quantity(value: Fraction) -> Fraction:
    """An IU quantity: an exact, non-negative rational (an int is accepted). Anything else is a programmer error."""
    ensure(
        isinstance(value, Fraction | int) and not isinstance(value, bool),
        f"an IU quantity is a Fraction, not {type(value).__name__}",
    )
    quantity = Fraction(value)
    ensure(quantity >= 0, f"an IU quantity cannot be negative ({quantity})")
    return quantity


def _check_price(price: Decimal | None, what: str) -> None:
    ensure(price is not None and price.is_finite() and price >= 0, f"{what} must be a finite price >= 0: {price}")


@dataclass(frozen=True, slots=True)
class ChargeModel:
    """The arithmetic of one pricing. Build it with ``charge_model(pricing)``."""

    kind: ChargeKind
    tiers: tuple[Tier, ...] = ()
    """``per_unit``: one open tier holding the price (the input price with split token prices);
    ``graduated``/``volume``: the tiers, ``up_to`` strictly increasing, the last open; ``package``: empty."""
    package_iu: int | None = None
    price_per_package: Decimal | None = None
    output_price_per_iu: Decimal | None = None
    """Set when input and output tokens are priced apart (``per_unit`` only)."""

    def __post_init__(self) -> None:
        ensure(self.kind in CHARGE_KINDS, f"unknown charge kind {self.kind!r}")
        for tier in self.tiers:
            _check_price(tier.price_per_iu, "a tier's price_per_iu")
        if self.kind == "package":
            ensure(self.tiers == (), "a package charge has no tiers")
            ensure(isinstance(self.package_iu, int) and self.package_iu >= 1, "package_iu must be an int >= 1")
            _check_price(self.price_per_package, "price_per_package")
        else:
            ensure(self.package_iu is None and self.price_per_package is None, f"{self.kind} has no package")
            ensure(1 <= len(self.tiers) <= MAX_PRICE_TIERS, f"{self.kind} needs 1 to {MAX_PRICE_TIERS} tiers")
            ensure(self.kind != "per_unit" or len(self.tiers) == 1, "per_unit has exactly one tier")
            ensure(self.tiers[-1].up_to is None, "the last tier is open (up_to None)")
            bounds = [t.up_to for t in self.tiers[:-1]]
            ints = [b for b in bounds if isinstance(b, int) and not isinstance(b, bool) and b >= 1]
            ensure(
                len(ints) == len(bounds) and all(a < b for a, b in pairwise(ints)),
                f"tier up_to must be ints >= 1, strictly increasing, the last open: {bounds}",
            )
        if self.output_price_per_iu is not None:
            ensure(self.kind == "per_unit", "input and output prices apart only with charge per_unit")
            _check_price(self.output_price_per_iu, "output_price_per_iu")

    @property
    def input_price_per_iu(self) -> Decimal | None:
        """The input price when input and output tokens are priced apart, else None."""
        return self.tiers[0].price_per_iu if self.output_price_per_iu is not None else None

    def total(self, quantity_iu: Fraction) -> Fraction:
        """The exact amount for a cumulative quantity of IU in one period."""
        q = _quantity(quantity_iu)
        if self.kind == "package":
            package_iu, price_per_package = self._package()
            return math.ceil(q / package_iu) * price_per_package
        if self.kind == "graduated":
            return self._graduated(q)
        return q * Fraction(self._tier_of(q).price_per_iu)  # per_unit (one open tier) and volume

    def _tier_of(self, q: Fraction) -> Tier:
        """The tier ``q`` falls in: the first whose ``up_to`` is at least ``q``, else the open last one."""
        for tier in self.tiers:
            if tier.up_to is None or q <= tier.up_to:
                return tier
        raise InvariantViolated("the last tier is open")  # pragma: no cover (__post_init__)

    def _package(self) -> tuple[int, Fraction]:
        if self.package_iu is None or self.price_per_package is None:  # pragma: no cover (__post_init__)
            raise InvariantViolated("a package charge has package_iu and price_per_package")
        return self.package_iu, Fraction(self.price_per_package)

    def _graduated(self, q: Fraction) -> Fraction:
        amount, lower = Fraction(0), Fraction(0)
        for up_to, price in self.tiers:
            top = q if up_to is None else min(q, Fraction(up_to))
            if top > lower:
                amount += (top - lower) * Fraction(price)
            if up_to is None or q <= up_to:
                break
            lower = Fraction(up_to)
        return amount

    def marginal(self, before_iu: Fraction, after_iu: Fraction) -> Fraction:
        """What taking the period from ``before_iu`` to ``after_iu`` adds: ``total(after) - total(before)``.

        This is one event's amount, so a period's event amounts always sum to ``total`` of its final quantity.
        It can be *negative* with a ``volume`` charge whose tiers get cheaper: crossing into a cheaper tier
        reprices every IU of the period, lowering the period's amount (1,000 IU at 0.002 cost 2; 1,001 IU at
        0.001 cost 1.001). Graduated, package and per-unit marginals are never negative.
        """
        before, after = _quantity(before_iu), _quantity(after_iu)
        ensure(before <= after, f"usage in a period only grows: {before} -> {after}")
        return self.total(after) - self.total(before)

    def output_total(self, output_iu: Fraction) -> Fraction:
        """The amount for output IU when input and output tokens are priced apart (``output_price_per_iu``)."""
        if self.output_price_per_iu is None:
            raise InvariantViolated("output IU are priced only with output_price_per_iu")
        return _quantity(output_iu) * Fraction(self.output_price_per_iu)

    def max_marginal(self, quantity_iu: Fraction) -> Fraction:
        """An upper bound of ``marginal(b, b + quantity_iu)`` over every quantity ``b`` already used in the
        period: what ``quantity_iu`` more IU can cost at most, without knowing the period's usage so far.
        Safe for budget checks (never below the real amount):

        - ``per_unit``/``graduated``: ``quantity x the highest price`` (with split token prices, the higher of
          the input and output prices, so it bounds IU of either kind);
        - ``package``: ``ceil(quantity / package_iu) x price_per_package`` (however the blocks fall, ``quantity``
          IU start at most that many new ones);
        - ``volume``: ``quantity x the highest price``, plus, when a later tier costs more than an earlier one,
          the most crossing such a boundary can reprice the IU already used: ``up_to`` of the tier crossed
          times the price difference. Tiers that only get cheaper add nothing.
        """
        q = _quantity(quantity_iu)
        if q == 0:
            return Fraction(0)
        if self.kind == "package":
            return self.total(q)  # ceil(x + d) - ceil(x) <= ceil(d): the first blocks are the dearest
        prices = [Fraction(t.price_per_iu) for t in self.tiers]
        if self.output_price_per_iu is not None:
            prices.append(Fraction(self.output_price_per_iu))
        bound = q * max(prices)
        if self.kind == "volume":
            bound += self._volume_step_up()
        return bound

    def _volume_step_up(self) -> Fraction:
        """The most a volume charge can reprice the IU already used when the period enters a dearer tier."""
        step = Fraction(0)
        for i, tier in enumerate(self.tiers[:-1]):
            dearest_later = max(Fraction(t.price_per_iu) for t in self.tiers[i + 1 :])
            step = max(step, (tier.up_to or 0) * (dearest_later - Fraction(tier.price_per_iu)))  # only the last is open
        return step

    def estimate_per_iu(self) -> Fraction:
        """An upper bound of what one more IU can cost, whatever the period's usage so far: ``max_marginal(1)``.

        The highest tier price for ``per_unit`` and ``graduated`` (the higher of input and output with split
        token prices); a whole ``price_per_package`` for ``package`` (one IU can start a new block); for
        ``volume``, the highest price plus any repricing on entering a dearer tier (see ``max_marginal``).
        To bound a request of ``q`` IU use ``max_marginal(q)``, not ``q x estimate_per_iu()``: with a package
        charge 3/2 IU can start two blocks (``package_iu: 1``), more than 3/2 packages.
        """
        return self.max_marginal(Fraction(1))


def charge_model(pricing: Pricing) -> ChargeModel:
    """The charge model of a manifest's validated pricing."""
    if pricing.charge == "package":
        return ChargeModel("package", package_iu=pricing.package_iu, price_per_package=pricing.price_per_package)
    if pricing.tiers is not None:
        return ChargeModel(pricing.charge, tuple(Tier(t.up_to, t.price_per_iu) for t in pricing.tiers))
    return ChargeModel("per_unit", (Tier(None, pricing.price_per_iu),), output_price_per_iu=pricing.output_price_per_iu)


def token_amount(pricing: Pricing, input_tokens: int, output_tokens: int = 0) -> Fraction:
    """The list amount of one call to a ``tokens_1k`` model with a ``per_unit`` charge, from its token counts.

    Input tokens at ``input_price_per_iu`` and output tokens at ``output_price_per_iu`` when the two are priced
    apart; with one ``price_per_iu``, the input tokens only (a ``tokens_1k`` IU counts input text, see
    ``metering.units``), and ``output_tokens`` costs nothing. IU = tokens / 1000, exactly. Tiered and package
    charges depend on the period's usage so far: use ``charge_model(pricing).marginal`` for those.
    """
    ensure(pricing.unit is UnitKind.TOKENS_1K, f"token_amount prices tokens_1k models, not {pricing.unit.value}")
    ensure(pricing.charge == "per_unit", f"token_amount prices per_unit charges, not {pricing.charge}")
    for count in (input_tokens, output_tokens):
        ensure(isinstance(count, int) and not isinstance(count, bool) and count >= 0, f"bad token count {count!r}")
    model = charge_model(pricing)
    amount = model.total(pricing.unit.iu(input_tokens))
    if model.output_price_per_iu is not None:
        amount += model.output_total(pricing.unit.iu(output_tokens))
    return amount
