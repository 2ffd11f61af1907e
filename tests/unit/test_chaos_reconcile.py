"""The chaos drill's reconciliation (pure): it passes only when billing matches what the clients saw, exactly."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from modelmarket.cluster.reconcile import Billed, reconcile

PRICE = Decimal("0.0010")


def billed(ids: list[str], *, invoice: Decimal | None = None, unbalanced: bool = False) -> Billed:
    return Billed(
        event_ids=ids,
        amounts={i: Fraction(PRICE) for i in ids},
        txn_of_event={i: "txn_1" for i in ids},
        txn_sums={"txn_1": Fraction(1, 100) if unbalanced else Fraction(0)},
        invoice_total=invoice if invoice is not None else Decimal("0.00"),
        invoice_events=len(ids),
    )


def failed_checks(answered: list[str], facts: Billed) -> list[str]:
    return [c.name for c in reconcile(answered, 0, 0, PRICE, "USD", facts).checks if not c.ok]


def test_every_answered_call_billed_once_reconciles() -> None:
    ids = [f"req_{i}" for i in range(1005)]
    report = reconcile(ids, 3, 7, PRICE, "USD", billed(ids, invoice=Decimal("1.00")))  # 1.005 half-even -> 1.00
    assert report.ok, report.table()
    assert "RECONCILED: 1005 answered calls (7 answered by a replayed Idempotency-Key), 3 failed" in report.table()


def test_a_missing_an_extra_and_a_doubled_event_are_each_named() -> None:
    ids = ["a", "b", "c"]
    assert "answered calls without a usage event" in failed_checks(ids, billed(["a", "b"], invoice=Decimal("0.00")))
    extra = failed_checks(ids, billed(["a", "b", "c", "d"], invoice=Decimal("0.00")))
    assert "usage events no client saw answered" in extra and "usage events billed" in extra
    doubled = failed_checks(ids, billed(["a", "b", "c", "c"], invoice=Decimal("0.00")))
    assert "usage events billed more than once" in doubled


def test_an_unbalanced_transaction_or_a_wrong_invoice_fails() -> None:
    ids = ["a", "b", "c"]
    assert failed_checks(ids, billed(ids, unbalanced=True)) == ["unbalanced ledger transactions"]
    assert failed_checks(ids, billed(ids, invoice=Decimal("0.01"))) == ["invoice total (USD)"]
