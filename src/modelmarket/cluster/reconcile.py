"""What the clients of the chaos drill saw against what the platform billed: one usage event and one ledger
posting per answered call, none for a failed one, and an invoice that totals answered calls x price exactly.

The comparison (``reconcile``) is pure; ``billed_facts`` reads what it needs from the store.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from modelmarket.billing.period import Period
from modelmarket.bootstrap import Platform
from modelmarket.core.money import exact_text, round_minor


@dataclass(frozen=True)
class Billed:
    """What the store holds for the drill's account once metering caught up."""

    event_ids: list[str]
    """Rated usage events, one per row (a duplicate id here would be an event billed twice)."""
    amounts: dict[str, Fraction]
    """Each event's exact amount."""
    txn_of_event: dict[str, str]
    """Each event's ledger transaction."""
    txn_sums: dict[str, Fraction]
    """Each usage transaction of the account: the sum of its entries (0 when balanced)."""
    invoice_total: Decimal | None
    invoice_events: int


@dataclass
class Check:
    name: str
    expected: str
    actual: str
    ok: bool


@dataclass
class Reconciliation:
    answered: int
    failed: int
    replayed: int
    price: Decimal
    currency: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "answered": self.answered,
            "failed": self.failed,
            "replayed": self.replayed,
            "price": str(self.price),
            "currency": self.currency,
            "checks": [c.__dict__ for c in self.checks],
        }

    def table(self) -> str:
        rows = [("check", "expected", "actual", "")]
        rows += [(c.name, c.expected, c.actual, "ok" if c.ok else "MISMATCH") for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
        lines.append(
            f"{'RECONCILED' if self.ok else 'NOT RECONCILED'}: {self.answered} answered calls "
            f"({self.replayed} answered by a replayed Idempotency-Key), {self.failed} failed"
        )
        return "\n".join(lines)


def reconcile(
    answered_ids: list[str], failed: int, replayed: int, price: Decimal, currency: str, billed: Billed
) -> Reconciliation:
    """Compare the clients' record with the store's (pure)."""
    answered = set(answered_ids)
    events = Counter(billed.event_ids)
    report = Reconciliation(len(answered_ids), failed, replayed, price, currency)

    def check(name: str, expected: object, actual: object) -> None:
        report.checks.append(Check(name, str(expected), str(actual), expected == actual))

    check("answered calls with distinct ids", len(answered_ids), len(answered))
    check("usage events billed", len(answered), sum(events.values()))
    check("answered calls without a usage event", 0, len(answered - set(events)))
    check("usage events no client saw answered", 0, len(set(events) - answered))
    check("usage events billed more than once", 0, sum(1 for n in events.values() if n > 1))
    check("usage events without a ledger posting", 0, sum(1 for e in events if e not in billed.txn_of_event))
    posted = set(billed.txn_of_event.values())
    check("postings to a missing transaction", 0, len(posted - set(billed.txn_sums)))
    check("unbalanced ledger transactions", 0, sum(1 for s in billed.txn_sums.values() if s != 0))
    exact = price * len(answered)
    check(
        f"billed amount (exact, {currency})",
        exact_text(Fraction(exact)),
        exact_text(sum(billed.amounts.values(), Fraction(0))),
    )
    check(f"invoice total ({currency})", round_minor(Fraction(exact), currency), billed.invoice_total)
    check("invoice usage events", len(answered), billed.invoice_events)
    return report


def billed_facts(p: Platform, account_id: str, period: Period, currency: str) -> Billed:
    """The account's rated events, their ledger transactions and its invoice for ``period`` in ``currency``."""
    with p.store.read() as uow:
        rated = list(uow.ledger.rated(account_id=account_id))
        txns = list(uow.ledger.txns(account_id=account_id, kind="usage"))
    docs = [d for d in p.invoices.invoices(account_id, period) if d.currency == currency]
    return Billed(
        event_ids=[r.event_id for r in rated],
        amounts={r.event_id: r.amount for r in rated},
        txn_of_event={r.event_id: r.txn_id for r in rated},
        txn_sums={t.id: sum((e.amount for e in t.entries), Fraction(0)) for t in txns},
        invoice_total=docs[0].total if docs else None,
        invoice_events=docs[0].events if docs else 0,
    )


def rated_count(p: Platform, account_id: str) -> int:
    with p.store.read() as uow:
        return sum(1 for _ in uow.ledger.rated(account_id=account_id))
