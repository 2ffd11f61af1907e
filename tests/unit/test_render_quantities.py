"""People see quantities with at most 6 decimals, marked when rounded; documents keep them exact."""

from __future__ import annotations

from decimal import Decimal

import pytest

from modelmarket.billing.aggregate import UsageRow, aggregate_usage
from modelmarket.billing.documents import build_invoices
from modelmarket.billing.period import parse_period
from modelmarket.billing.render import approx_text, render_invoice_text


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("0.05", "0.05"),
        ("12", "12"),
        ("0.0333333333333333333333333333", "~0.033333"),
        ("2.5000000001", "~2.5"),
        ("0.0000001", "~0.000000"),
        ("100.0000004", "~100"),
    ],
)
def test_approx_text(value: str, shown: str) -> None:
    assert approx_text(Decimal(value)) == shown


def test_audio_quantities_are_exact_in_documents_and_short_on_screen() -> None:
    # 100 one-second events: IU is exactly 100/60 in the document, shown as ~1.666667 to a person.
    second = UsageRow(
        "USD",
        "speech",
        "audio_minute",
        Decimal("0.0166666666666666666666666667"),
        Decimal("0.006"),
        Decimal("0.006"),
        amount_divisor=60,
        quantity_base=1,
    )
    [invoice] = build_invoices("acct", parse_period("2026-11"), aggregate_usage([second] * 100))
    [line] = invoice.lines
    assert str(line.quantity_iu).startswith("1.666666666666666666666666666666666666666666666")  # 50 digits, not 28
    assert abs(line.quantity_iu * 60 - 100) < Decimal("1E-40")
    assert line.amount == Decimal("0.01")  # 100 x 0.006 / 60 = 0.01 exactly
    text = render_invoice_text(invoice, "acct")
    assert "~1.666667" in text and "0.01" in text
