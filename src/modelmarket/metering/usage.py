"""Usage read model: what an account has used, from the per-day aggregates."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select

from modelmarket.adapters.store import schema as t


def _text(value: Decimal) -> str:
    """Plain positional notation (never ``1E-7``) for JSON."""
    return format(value, "f")


@dataclass(frozen=True, slots=True)
class ModelUsage:
    model: str
    unit_kind: str
    currency: str
    events: int
    quantity_iu: Decimal
    amount: Decimal

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "unit_kind": self.unit_kind,
            "currency": self.currency,
            "events": self.events,
            "iu": _text(self.quantity_iu),
            "amount": _text(self.amount),
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
    def total_iu(self) -> Decimal:
        return sum((m.quantity_iu for m in self.models), Decimal(0))

    def totals_by_currency(self) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        for m in self.models:
            out[m.currency] = out.get(m.currency, Decimal(0)) + m.amount
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
            # One currency: its total. None used: "0". Several: null, see totals_by_currency (never added up).
            "total_amount": _text(by_currency[single]) if single else ("0" if not by_currency else None),
            "currency": single,
            "totals_by_currency": {k: _text(v) for k, v in sorted(by_currency.items())},
            "models": [m.to_json() for m in self.models],
        }


def usage_summary(
    conn: Connection, account_id: str, since: str | None = None, until: str | None = None
) -> UsageSummary:
    """Usage of ``account_id`` over days ``since``..``until`` inclusive (``YYYY-MM-DD``; None = unbounded)."""
    d = t.usage_daily.c
    query = select(d.model_name, d.unit_kind, d.currency, d.events, d.quantity_iu, d.amount).where(
        d.account_id == account_id
    )
    if since:
        query = query.where(d.day >= since)
    if until:
        query = query.where(d.day <= until)
    totals: dict[tuple[str, str, str], list[Any]] = {}
    for row in conn.execute(query):
        acc = totals.setdefault((row.model_name, row.unit_kind, row.currency), [0, Decimal(0), Decimal(0)])
        acc[0] += row.events
        acc[1] += row.quantity_iu
        acc[2] += row.amount
    models = [ModelUsage(m, u, c, int(v[0]), v[1], v[2]) for (m, u, c), v in sorted(totals.items())]
    return UsageSummary(account_id=account_id, models=models, since=since, until=until)
