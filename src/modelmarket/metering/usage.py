"""Usage read model: what an account has used, from the exact per-day aggregates."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from fractions import Fraction
from typing import Any

from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import exact_text
from modelmarket.core.uow import UnitOfWorkFactory
from modelmarket.metering.consumer import MeteringService
from modelmarket.metering.ports import DailyUsage, MeteringUnitOfWork
from modelmarket.metering.units import UnitKind

CATCH_UP_MAX_RECORDS = 50_000
"""Most log records a usage read applies before it answers (read-your-writes without an unbounded wait)."""


@dataclass(frozen=True, slots=True)
class ModelUsage:
    model: str
    unit_kind: UnitKind
    currency: str
    events: int
    quantity_base: int
    amount_exact: Fraction

    @property
    def iu_exact(self) -> Fraction:
        return self.unit_kind.iu(self.quantity_base)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "unit_kind": self.unit_kind.value,
            "currency": self.currency,
            "events": self.events,
            "quantity": self.quantity_base,
            "base_unit": self.unit_kind.base_unit,
            "iu": exact_text(self.iu_exact),
            "amount": exact_text(self.amount_exact),
        }


@dataclass(frozen=True, slots=True)
class UsageSummary:
    account_id: str
    models: list[ModelUsage]
    since: str | None
    until: str | None

    @property
    def total_events(self) -> int:
        return sum(m.events for m in self.models)

    @property
    def total_iu(self) -> Fraction:
        return sum((m.iu_exact for m in self.models), Fraction(0))

    def totals_by_currency(self) -> dict[str, Fraction]:
        out: dict[str, Fraction] = {}
        for m in self.models:
            out[m.currency] = out.get(m.currency, Fraction(0)) + m.amount_exact
        return out

    def to_json(self) -> dict[str, Any]:
        by_currency = self.totals_by_currency()
        single = next(iter(by_currency)) if len(by_currency) == 1 else None
        return {
            "account_id": self.account_id,
            "since": self.since,
            "until": self.until,
            "total_events": self.total_events,
            "total_iu": exact_text(self.total_iu),
            # Unrounded (invoices round once per line). One currency: its total; none used: "0"; several: null,
            # see totals_by_currency (amounts in different currencies are never added up).
            "total_amount": exact_text(by_currency[single]) if single else ("0" if not by_currency else None),
            "currency": single,
            "totals_by_currency": {k: exact_text(v) for k, v in sorted(by_currency.items())},
            "models": [m.to_json() for m in self.models],
        }


def parse_day(value: str | None, field: str) -> str | None:
    """A ``YYYY-MM-DD`` day that exists (``2026-02-30`` is refused), or None."""
    if value is None:
        return None
    try:
        if len(value) != len("YYYY-MM-DD"):
            raise ValueError(value)
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise InvalidInput(f"{field}: {value!r} is not a date YYYY-MM-DD") from None


def summarize(account_id: str, days: Iterable[DailyUsage], since: str | None, until: str | None) -> UsageSummary:
    totals: dict[tuple[str, UnitKind, str], list[Any]] = {}
    for row in days:
        acc = totals.setdefault((row.model_name, row.unit_kind, row.currency), [0, 0, Fraction(0)])
        acc[0] += row.events
        acc[1] += row.quantity_base
        acc[2] += Fraction(row.amount_numerator) / row.unit_kind.divisor
    models = [ModelUsage(m, u, c, v[0], v[1], v[2]) for (m, u, c), v in sorted(totals.items())]
    return UsageSummary(account_id=account_id, models=models, since=since, until=until)


class UsageService:
    """An account's usage, current as of the call (the log is applied first, boundedly)."""

    def __init__(self, uow: UnitOfWorkFactory[MeteringUnitOfWork], metering: MeteringService) -> None:
        self.uow = uow
        self.metering = metering

    def summary(self, account_id: str, since: str | None = None, until: str | None = None) -> UsageSummary:
        first, last = parse_day(since, "since"), parse_day(until, "until")
        return summarize(account_id, self.daily(account_id, first, last), first, last)

    def daily(self, account_id: str, since: str | None = None, until: str | None = None) -> list[DailyUsage]:
        """The account's exact per-day rows from ``since`` to ``until`` (both included, ``YYYY-MM-DD``): one per
        day, model, unit kind and currency with any usage, by day then model (the dashboard's charts per day)."""
        first, last = parse_day(since, "since"), parse_day(until, "until")
        if first and last and first > last:
            raise InvalidInput(f"since {first} is after until {last}")
        self.metering.catch_up(CATCH_UP_MAX_RECORDS)
        with self.uow.read() as uow:
            return uow.usage.daily_usage(account_id, first, last)
