"""Usage read model: what an account has used, from the exact per-day aggregates."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy import Connection, select

from modelmarket.adapters.store import schema as t
from modelmarket.core.money import fraction_to_decimal


def _text(value: Fraction) -> str:
    """Plain positional notation (never ``1E-7``) for JSON; 50 significant digits for repeating decimals."""
    return format(fraction_to_decimal(value), "f")


@dataclass(frozen=True, slots=True)
class ModelUsage:
    model: str
    unit_kind: str
    currency: str
    events: int
    iu_exact: Fraction
    amount_exact: Fraction

    @property
    def quantity_iu(self) -> Decimal:
        return fraction_to_decimal(self.iu_exact)

    @property
    def amount(self) -> Decimal:
        return fraction_to_decimal(self.amount_exact)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "unit_kind": self.unit_kind,
            "currency": self.currency,
            "events": self.events,
            "iu": _text(self.iu_exact),
            "amount": _text(self.amount_exact),
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
            "total_iu": _text(self.total_iu),
            # Unrounded (invoices round once per line). One currency: its total; none used: "0"; several: null,
            # see totals_by_currency (amounts in different currencies are never added up).
            "total_amount": _text(by_currency[single]) if single else ("0" if not by_currency else None),
            "currency": single,
            "totals_by_currency": {k: _text(v) for k, v in sorted(by_currency.items())},
            "models": [m.to_json() for m in self.models],
        }


def _day_iu(row: Any) -> Fraction:
    if row.quantity_base or not row.quantity_iu:
        return Fraction(row.quantity_base, row.amount_divisor)
    return Fraction(row.quantity_iu)  # a day aggregated before base units were recorded


def usage_summary(
    conn: Connection, account_id: str, since: str | None = None, until: str | None = None
) -> UsageSummary:
    """Usage of ``account_id`` over days ``since``..``until`` inclusive (``YYYY-MM-DD``; None = unbounded)."""
    d = t.usage_daily.c
    query = select(
        d.model_name, d.unit_kind, d.currency, d.events, d.quantity_iu, d.amount, d.amount_divisor, d.quantity_base
    ).where(d.account_id == account_id)
    if since:
        query = query.where(d.day >= since)
    if until:
        query = query.where(d.day <= until)
    totals: dict[tuple[str, str, str], list[Any]] = {}
    for row in conn.execute(query):
        acc = totals.setdefault((row.model_name, row.unit_kind, row.currency), [0, Fraction(0), Fraction(0)])
        acc[0] += row.events
        acc[1] += _day_iu(row)
        acc[2] += Fraction(row.amount) / row.amount_divisor
    models = [ModelUsage(m, u, c, int(v[0]), v[1], v[2]) for (m, u, c), v in sorted(totals.items())]
    return UsageSummary(account_id=account_id, models=models, since=since, until=until)
