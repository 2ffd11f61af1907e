"""Invoices and provider statements built from usage groups: rounding, revenue share, invariants. No I/O.

Every amount is computed at full precision and rounded once per line, to the currency's minor unit, half to
even. A document's total is the sum of its rounded lines. Lines only ever come from usage events, and each
carries the number of events it was built from.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from itertools import groupby
from typing import Any

from modelmarket.billing.aggregate import UsageGroup
from modelmarket.billing.period import Period
from modelmarket.core.errors import InvalidInput, ensure
from modelmarket.core.money import EXACT, exact_text, fraction_to_decimal, round_minor
from modelmarket.metering.units import UnitKind


def decimal_text(value: Decimal) -> str:
    """A decimal as plain positional text (never exponent notation), for JSON and display."""
    return format(value, "f")


def _optional_text(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    model_name: str
    unit_kind: UnitKind
    events: int
    quantity_base: int
    """Base units (images, tokens, seconds, requests); IU = quantity_base / unit_kind.divisor, exactly."""
    unit_price: Decimal | None
    """The price per IU when all the line's events had the same one, else None."""
    amount_exact: Fraction
    amount: Decimal
    """``amount_exact`` rounded once to the currency's minor unit, half to even."""

    @property
    def exact(self) -> Fraction:
        return self.amount_exact

    @property
    def quantity_iu(self) -> Fraction:
        return self.unit_kind.iu(self.quantity_base)

    @property
    def amount_precise(self) -> Decimal:
        """``amount_exact`` as a decimal: exact when it has a finite expansion, else 50 significant digits."""
        return fraction_to_decimal(self.amount_exact)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "unit_kind": self.unit_kind.value,
            "events": self.events,
            "quantity": self.quantity_base,
            "base_unit": self.unit_kind.base_unit,
            "quantity_iu": exact_text(self.quantity_iu),
            "unit_price": _optional_text(self.unit_price),
            "amount_exact": exact_text(self.amount_exact),
            "amount_precise": decimal_text(self.amount_precise),
            "amount": decimal_text(self.amount),
        }


@dataclass(frozen=True, slots=True)
class Invoice:
    """A consumer's charges for one period in one currency."""

    account_id: str
    period: Period
    currency: str
    lines: tuple[InvoiceLine, ...]
    total: Decimal

    def __post_init__(self) -> None:
        ensure(len(self.lines) > 0, "an invoice has at least one line")
        for line in self.lines:
            ensure(line.events > 0, f"invoice line {line.model_name} has no usage events")
            ensure(
                line.amount == round_minor(line.exact, self.currency),
                f"invoice line {line.model_name} is not its precise amount rounded once",
            )
        ensure(self.total == sum_exact(line.amount for line in self.lines), "invoice total != sum of its lines")

    @property
    def events(self) -> int:
        return sum(line.events for line in self.lines)

    @property
    def total_precise(self) -> Decimal:
        return fraction_to_decimal(sum((line.exact for line in self.lines), Fraction(0)))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; every decimal is a string."""
        return {
            "account_id": self.account_id,
            "period": self.period.label,
            "currency": self.currency,
            "events": self.events,
            "lines": [line.to_json() for line in self.lines],
            "total_precise": decimal_text(self.total_precise),
            "total": decimal_text(self.total),
        }


@dataclass(frozen=True, slots=True)
class StatementLine:
    model_name: str
    unit_kind: UnitKind
    events: int
    quantity_base: int
    gross_exact: Fraction
    gross: Decimal
    """``gross_exact`` rounded once to the currency's minor unit, half to even."""
    provider_amount: Decimal
    """``gross_exact`` x provider share, rounded once."""
    platform_fee: Decimal
    """``gross - provider_amount``, so the two always add up to the gross exactly."""

    @property
    def exact(self) -> Fraction:
        return self.gross_exact

    @property
    def quantity_iu(self) -> Fraction:
        return self.unit_kind.iu(self.quantity_base)

    @property
    def gross_precise(self) -> Decimal:
        return fraction_to_decimal(self.gross_exact)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "unit_kind": self.unit_kind.value,
            "events": self.events,
            "quantity": self.quantity_base,
            "base_unit": self.unit_kind.base_unit,
            "quantity_iu": exact_text(self.quantity_iu),
            "gross_exact": exact_text(self.gross_exact),
            "gross_precise": decimal_text(self.gross_precise),
            "gross": decimal_text(self.gross),
            "provider_amount": decimal_text(self.provider_amount),
            "platform_fee": decimal_text(self.platform_fee),
        }


@dataclass(frozen=True, slots=True)
class Statement:
    """A provider's earnings for one period in one currency: gross revenue split into share and fee."""

    provider_account_id: str
    period: Period
    currency: str
    provider_share: Decimal
    lines: tuple[StatementLine, ...]

    def __post_init__(self) -> None:
        ensure(len(self.lines) > 0, "a statement has at least one line")
        for line in self.lines:
            ensure(line.events > 0, f"statement line {line.model_name} has no usage events")
            ensure(
                line.gross == round_minor(line.exact, self.currency),
                f"statement line {line.model_name} is not its precise gross rounded once",
            )
            ensure(
                line.provider_amount + line.platform_fee == line.gross,
                f"statement line {line.model_name}: share + fee != gross",
            )

    @property
    def events(self) -> int:
        return sum(line.events for line in self.lines)

    @property
    def gross(self) -> Decimal:
        return sum_exact(line.gross for line in self.lines)

    @property
    def provider_amount(self) -> Decimal:
        return sum_exact(line.provider_amount for line in self.lines)

    @property
    def platform_fee(self) -> Decimal:
        return sum_exact(line.platform_fee for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; every decimal is a string."""
        return {
            "provider_account_id": self.provider_account_id,
            "period": self.period.label,
            "currency": self.currency,
            "provider_share": decimal_text(self.provider_share),
            "events": self.events,
            "lines": [line.to_json() for line in self.lines],
            "gross": decimal_text(self.gross),
            "provider_amount": decimal_text(self.provider_amount),
            "platform_fee": decimal_text(self.platform_fee),
        }


def sum_exact(values: Iterable[Decimal]) -> Decimal:
    total = Decimal(0)
    for value in values:
        total = EXACT.add(total, value)
    return total


def check_share(provider_share: Decimal) -> Decimal:
    """The provider's share of revenue must be a Decimal fraction between 0 and 1."""
    if not isinstance(provider_share, Decimal) or not provider_share.is_finite():
        raise InvalidInput(f"provider share must be a decimal fraction, got {provider_share!r}")
    if not Decimal(0) <= provider_share <= Decimal(1):
        raise InvalidInput(f"provider share must be between 0 and 1, got {provider_share}")
    return provider_share


def split_gross(
    gross_exact: Fraction | Decimal, currency: str, provider_share: Decimal
) -> tuple[Decimal, Decimal, Decimal]:
    """(gross, provider amount, platform fee): each rounded once; provider + platform == gross exactly."""
    gross_exact = Fraction(gross_exact)
    gross = round_minor(gross_exact, currency)
    provider = round_minor(gross_exact * Fraction(provider_share), currency)
    platform = EXACT.subtract(gross, provider)
    ensure(provider + platform == gross, "revenue split does not add up to the gross")
    return gross, provider, platform


def invoice_line(group: UsageGroup) -> InvoiceLine:
    return InvoiceLine(
        model_name=group.model_name,
        unit_kind=group.unit_kind,
        events=group.events,
        quantity_base=group.quantity_base,
        unit_price=group.unit_price,
        amount_exact=group.amount_exact,
        amount=round_minor(group.amount_exact, group.currency),
    )


def statement_line(group: UsageGroup, provider_share: Decimal) -> StatementLine:
    gross, provider, platform = split_gross(group.amount_exact, group.currency, provider_share)
    return StatementLine(
        model_name=group.model_name,
        unit_kind=group.unit_kind,
        events=group.events,
        quantity_base=group.quantity_base,
        gross_exact=group.amount_exact,
        gross=gross,
        provider_amount=provider,
        platform_fee=platform,
    )


def _by_currency(groups: Iterable[UsageGroup]) -> Iterator[tuple[str, list[UsageGroup]]]:
    ordered = sorted(groups, key=lambda g: (g.currency, g.model_name, g.unit_kind))
    for currency, members in groupby(ordered, key=lambda g: g.currency):
        yield currency, list(members)


def build_invoices(account_id: str, period: Period, groups: Iterable[UsageGroup]) -> list[Invoice]:
    """One invoice per currency (ordered by currency), one line per model and unit kind."""
    invoices = []
    for currency, members in _by_currency(groups):
        lines = tuple(invoice_line(group) for group in members)
        total = sum_exact(line.amount for line in lines)
        invoices.append(Invoice(account_id, period, currency, lines, total))
    return invoices


def build_statements(
    provider_account_id: str, period: Period, groups: Iterable[UsageGroup], provider_share: Decimal
) -> list[Statement]:
    """One statement per currency (ordered by currency), one line per model and unit kind."""
    share = check_share(provider_share)
    return [
        Statement(
            provider_account_id,
            period,
            currency,
            share,
            tuple(statement_line(group, share) for group in members),
        )
        for currency, members in _by_currency(groups)
    ]
