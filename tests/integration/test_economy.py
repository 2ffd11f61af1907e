"""The economy's billing rules, end to end on SQLite and PostgreSQL: published prices and plans, usage events
through the event log and the metering consumer (which rates them), invoices, the ledger, payouts, rebuild.

Every expected number is worked out by hand in the comment beside it; none is computed by the code under test.
"""

from __future__ import annotations

import random
import threading
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from economy_helpers import AUDIO, OTHER_PROVIDER, PLANS, PROVIDER, TOKENS, Economy, lines_of, make_economy

from modelmarket.adapters.store import SqlStore
from modelmarket.billing.lifecycle import invoice_id
from modelmarket.billing.period import Period
from modelmarket.core.errors import Conflict, InvalidInput
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.usage import UsageSummary

pytestmark = pytest.mark.timeout(120)

JAN = Period(2026, 1)


def economy(store: SqlStore, tmp_path: Path, demo_dir: Path, *models: str, now: str = "2026-01-01T00:00:00") -> Economy:
    return make_economy(store, tmp_path / "home", demo_dir, models, now=now)


def usage_rows(summary: UsageSummary) -> list[tuple[str, int, int, str]]:
    """(model, events, base units, exact list amount) per model."""
    return [(m.model, m.events, m.quantity_base, str(m.amount_exact)) for m in summary.models]


# -- 1. charge models ------------------------------------------------------------------------------------------


def _tiered_usage(eco: Economy, consumer: str) -> list[UsageEvent]:
    """Events that cross tier and package boundaries, with fractional IU of tokens and audio."""
    events = []
    for q in (4, 7, 30, 80, 1):  # 122 images per model
        events.append(eco.event(consumer, "digits-grad", q, "2026-01-05", price="0.01"))
        events.append(eco.event(consumer, "digits-vol", q, "2026-01-06", price="0.01"))
        events.append(eco.event(consumer, "digits-pkg", q, "2026-01-07", price="0.30"))
    for tokens in (1500, 700, 2300):  # 4,500 tokens = 9/2 IU
        events.append(eco.event(consumer, "text-grad", tokens, "2026-01-08", unit=TOKENS, price="0.10"))
    for seconds in (90, 30, 45):  # 165 s = 11/4 minutes
        events.append(eco.event(consumer, "audio-pkg", seconds, "2026-01-09", unit=AUDIO, price="0.06"))
    return events


def test_graduated_volume_and_package_invoices_do_not_depend_on_event_order(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-grad", "digits-vol", "digits-pkg", "text-grad", "audio-pkg")
    eco.consumer("forward")
    eco.consumer("backward")
    forward = _tiered_usage(eco, "forward")
    backward = _tiered_usage(eco, "backward")
    backward.reverse()  # the same calls, last first (volume marginals go negative the other way round)
    eco.append(forward)
    eco.append(backward)

    expected = [
        # 165 s = 2.75 min -> ceil(2.75 / 1) = 3 packages x 0.06 = 0.18
        ("usage", "audio-pkg", "2.75", "0.18"),
        # 122 IU graduated: 10 x 0.01 + 90 x 0.005 + 22 x 0.002 = 0.10 + 0.45 + 0.044 = 0.594 -> 0.59
        ("usage", "digits-grad", "122", "0.59"),
        # 122 IU in packages of 25: ceil(122 / 25) = 5 x 0.30 = 1.50
        ("usage", "digits-pkg", "122", "1.50"),
        # 122 IU volume: 122 > 100, so every IU at the last tier: 122 x 0.002 = 0.244 -> 0.24
        ("usage", "digits-vol", "122", "0.24"),
        # 4.5 IU graduated: 2 x 0.10 + 2.5 x 0.05 = 0.20 + 0.125 = 0.325 -> 0.32 (half to even)
        ("usage", "text-grad", "4.5", "0.32"),
    ]
    for consumer in ("forward", "backward"):
        invoice = eco.invoice(consumer, "2026-01")
        assert lines_of(invoice) == expected, consumer
        assert str(invoice.total) == "2.83"  # 0.18 + 0.59 + 1.50 + 0.24 + 0.32
        assert [li.events for li in invoice.lines] == [3, 5, 5, 5, 3]
        # the ledger holds the exact sum: 0.18 + 0.594 + 1.50 + 0.244 + 0.325 = 2.843
        assert eco.receivable(consumer).exact == Fraction("2.843")


def test_split_token_prices_and_a_dynamic_price_factor(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir, "text-split", "digits-grad")
    eco.consumer("chatty")
    eco.append(
        [
            # 2,000 input tokens x 0.01/1k + 1,000 output tokens x 0.03/1k = 0.02 + 0.03 = 0.05
            eco.event("chatty", "text-split", 3000, "2026-01-03", unit=TOKENS, price="0.01", quantity_out=1000),
            # (1,000 x 0.01 + 500 x 0.03) / 1,000 = 0.025, x 1.2 (the price factor in force) = 0.03
            eco.event(
                "chatty", "text-split", 1500, "2026-01-04", unit=TOKENS, price="0.012", quantity_out=500, factor="1.2"
            ),
            # graduated 12 IU: 10 x 0.01 + 2 x 0.005 = 0.11, x 1.5 = 0.165
            eco.event("chatty", "digits-grad", 12, "2026-01-05", price="0.015", factor="1.5"),
        ]
    )
    invoice = eco.invoice("chatty", "2026-01")
    assert lines_of(invoice) == [
        ("usage", "digits-grad", "12", "0.16"),  # 0.165 -> 0.16 (half to even)
        ("usage", "text-split", "4.5", "0.08"),  # 0.05 + 0.03; 4,500 tokens = 4.5 IU
    ]
    assert eco.receivable("chatty").exact == Fraction("0.245")  # 0.165 + 0.05 + 0.03


# -- 2. subscriptions --------------------------------------------------------------------------------------------


def test_subscription_included_iu_then_overage_at_list_or_plan_rate(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir)
    eco.consumer("on-pro", "pro")  # from 2026-01-01T00:00: the whole month
    eco.consumer("on-pro-plus", "pro-plus")
    for consumer in ("on-pro", "on-pro-plus"):
        eco.append(eco.event(consumer, "digits", q, f"2026-01-{d:02d}") for q, d in ((4000, 3), (5000, 9), (3000, 20)))

    pro = eco.invoice("on-pro", "2026-01")
    assert lines_of(pro) == [
        ("fee", None, "0", "20.00"),  # 20.00 x 31/31 days
        ("included", "digits", "10000", "0.00"),  # 4,000 + 5,000 + 1,000 of the third call
        ("overage", "digits", "2000", "2.00"),  # 12,000 - 10,000 = 2,000 x 0.0010 (list price)
    ]
    assert str(pro.total) == "22.00"

    plus = eco.invoice("on-pro-plus", "2026-01")
    assert lines_of(plus) == [
        ("fee", None, "0", "50.00"),
        ("included", "digits", "10000", "0.00"),
        ("overage", "digits", "2000", "1.60"),  # 2,000 x 0.0008 (the plan's overage rate, not the list price)
    ]
    assert str(plus.total) == "51.60"


# -- 3. proration ------------------------------------------------------------------------------------------------


def test_plan_change_mid_period_prorates_fees_and_included_iu_by_day(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir, now="2026-04-01T00:00:00")  # April: 30 days
    account = eco.consumer("switcher", "pro")
    eco.append([eco.event("switcher", "digits", 3000, "2026-04-05")])
    eco.clock.set("2026-04-11T00:00:00")
    sub = eco.platform.plans.subscribe(account, "team", now=True)
    assert sub.effective_at == "2026-04-11T00:00:00+00:00"
    eco.append([eco.event("switcher", "digits", 25000, "2026-04-15")])

    invoice = eco.invoice("switcher", "2026-04")
    assert lines_of(invoice) == [
        ("fee", None, "0", "6.67"),  # pro, 1st..10th: 20.00 x 10/30 = 6.666... -> 6.67
        ("fee", None, "0", "40.00"),  # team, 11th..30th: 60.00 x 20/30 = 40.00
        # pro: 3,000 of its 10,000; team: 30,000 x 20/30 = 20,000 included of the 25,000 call
        ("included", "digits", "23000", "0.00"),
        ("overage", "digits", "5000", "5.00"),  # 25,000 - 20,000 = 5,000 x 0.0010
    ]
    assert "(10/30 days)" in invoice.lines[0].description and "(20/30 days)" in invoice.lines[1].description
    assert str(invoice.total) == "51.67"  # 6.67 + 40.00 + 0.00 + 5.00


def test_a_changed_plan_applied_now_prorates_both_versions(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir, now="2026-04-01T00:00:00")  # April: 30 days
    account = eco.consumer("mover", "pro")
    eco.clock.set("2026-04-21T00:00:00")
    changed = eco.platform.plans.apply(
        'plans: [{name: pro, kind: subscription, currency: USD, fee: "35.00", included: {image: 10000}}]', now=True
    )
    assert [(a.version, a.action, a.moved) for a in changed] == [(2, "changed", 1)]
    eco.append([eco.event("mover", "digits", 4000, "2026-04-25")])

    invoice = eco.invoice("mover", "2026-04")
    assert lines_of(invoice) == [
        ("fee", None, "0", "13.33"),  # v1, 1st..20th: 20.00 x 20/30 = 13.333... -> 13.33
        ("fee", None, "0", "11.67"),  # v2, 21st..30th: 35.00 x 10/30 = 11.666... -> 11.67
        ("included", "digits", "3333", "0.00"),  # v2 includes 10,000 x 10/30 = 3,333.3 -> 3,333 whole images
        ("overage", "digits", "667", "0.67"),  # 4,000 - 3,333 = 667 x 0.0010 = 0.667 -> 0.67
    ]
    assert str(invoice.total) == "25.67"  # 13.33 + 11.67 + 0.67
    assert eco.platform.plans.history(account)[-1].plan_version == 2


# -- 4. enterprise -----------------------------------------------------------------------------------------------


def test_enterprise_custom_rate_and_commitment_shortfall(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-b")
    eco.consumer("small", "ent")
    eco.consumer("large", "ent")
    eco.append(
        [
            eco.event("small", "digits", 20000, "2026-01-10"),
            eco.event("small", "digits-b", 5000, "2026-01-11"),
            eco.event("large", "digits", 150000, "2026-01-10"),
            eco.event("large", "digits-b", 40000, "2026-01-11"),
        ]
    )

    small = eco.invoice("small", "2026-01")
    assert lines_of(small) == [
        ("usage", "digits", "20000", "10.00"),  # 20,000 x 0.0005 (the plan's rate for digits)
        ("usage", "digits-b", "5000", "5.00"),  # 5,000 x 0.0010 (no rate: the list price)
        ("shortfall", None, "0", "85.00"),  # 100.00 committed - (10.00 + 5.00) used
    ]
    assert str(small.total) == "100.00"

    large = eco.invoice("large", "2026-01")
    assert lines_of(large) == [
        ("usage", "digits", "150000", "75.00"),  # 150,000 x 0.0005
        ("usage", "digits-b", "40000", "40.00"),  # 40,000 x 0.0010; 115.00 >= 100.00: no shortfall
    ]
    assert str(large.total) == "115.00"

    eco.clock.set("2026-02-05T00:00:00")
    eco.platform.invoices.finalize(small.id)
    # usage 10.00 + 5.00 (rated), then the shortfall 85.00 posted on finalizing: 100.00
    assert eco.receivable("small").exact == Fraction(100)


# -- 5. free plan ------------------------------------------------------------------------------------------------


def test_free_plan_grant_is_invoiced_as_granted_at_zero(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir)
    account = eco.consumer("freeloader", "free")  # grant: 5 images
    eco.append(eco.event("freeloader", "digits", 1, f"2026-01-{d:02d}") for d in (2, 3, 4, 5, 6))

    usage = eco.platform.usage.summary(account)
    assert usage_rows(usage) == [("digits", 5, 5, "1/200")]  # usage keeps the list amount: 5 x 0.0010
    invoice = eco.invoice("freeloader", "2026-01")
    assert lines_of(invoice) == [("granted", "digits", "5", "0.00")]
    assert invoice.lines[0].events == 5
    assert str(invoice.total) == "0.00"
    assert eco.receivable("freeloader").exact == 0


# -- 6. late events ----------------------------------------------------------------------------------------------


def test_event_after_finalization_is_an_adjustment_on_the_next_invoice(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-grad")
    eco.consumer("late")
    eco.append(eco.event("late", "digits", 1000, "2026-01-10") for _ in range(3))
    eco.append([eco.event("late", "digits-grad", 8, "2026-01-12", price="0.01")])
    draft = eco.invoice("late", "2026-01")
    assert str(draft.total) == "3.08"  # 3,000 x 0.0010 = 3.00; 8 x 0.01 = 0.08

    eco.clock.set("2026-02-05T00:00:00")
    final = eco.platform.invoices.finalize(draft.id)
    assert (final.status, str(final.total)) == ("finalized", "3.08")
    eco.append(
        [
            eco.event("late", "digits", 500, "2026-01-25"),  # January, read after January was finalized
            eco.event("late", "digits-grad", 5, "2026-01-28", price="0.01"),
            eco.event("late", "digits", 200, "2026-02-03"),
        ]
    )

    january = eco.invoice("late", "2026-01")
    assert january == final  # unchanged: the same lines, total and status
    february = eco.invoice("late", "2026-02")
    assert lines_of(february) == [
        ("usage", "digits", "200", "0.20"),  # 200 x 0.0010
        ("adjustment", "digits", "500", "0.50"),  # 500 x 0.0010
        # January's tiers go on from its 8 IU: total(13) - total(8) = (10 x 0.01 + 3 x 0.005) - 8 x 0.01
        # = 0.115 - 0.08 = 0.035 -> 0.04 (half to even)
        ("adjustment", "digits-grad", "5", "0.04"),
    ]
    assert "usage of 2026-01" in february.lines[1].description
    assert str(february.total) == "0.74"
    assert eco.platform.ledger.verify().ok


# -- 7. exactly once ---------------------------------------------------------------------------------------------


def _duplicated_usage(eco: Economy, who: str) -> list[UsageEvent]:
    sub, payg = f"{who}-sub", f"{who}-payg"
    return [
        *(eco.event(sub, "digits", 3000, f"2026-01-{d:02d}") for d in (2, 4, 6, 8)),
        *(eco.event(sub, "text-grad", 1500, f"2026-01-{d:02d}", unit=TOKENS, price="0.10") for d in (3, 5, 7)),
        *(eco.event(payg, "digits-vol", 30, f"2026-01-{d:02d}", price="0.01") for d in (2, 3, 4, 5)),
        *(eco.event(payg, "digits-pkg", 30, f"2026-01-{d:02d}", price="0.30") for d in (6, 7, 8, 9)),
    ]


def _in_chunks(eco: Economy, events: list[UsageEvent], log_ids: list[str], size: int) -> None:
    for i in range(0, len(events), size):
        eco.append(events[i : i + size], log_ids=log_ids[i : i + size])
        eco.platform.metering.catch_up()


def test_every_event_delivered_twice_out_of_order_is_billed_once(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir, "text-grad", "digits-vol", "digits-pkg")
    eco.platform.metering.batch_max = 7  # batches split the deliveries of one event
    for who in ("clean", "dup"):
        eco.consumer(f"{who}-sub", "pro")
        eco.consumer(f"{who}-payg")
    clean = _duplicated_usage(eco, "clean")
    eco.append(clean)
    # A second delivery reaches the consumer under another log record id (the log itself refuses an id twice),
    # with the same event inside; shuffled, and in chunks metered one after the other.
    dup = _duplicated_usage(eco, "dup")
    deliveries = [(e, e.id) for e in dup] + [(e, f"{e.id}-redelivered") for e in dup]
    random.Random(20260101).shuffle(deliveries)
    _in_chunks(eco, [e for e, _ in deliveries], [i for _, i in deliveries], 11)
    assert eco.platform.metering.halted() is None

    for who in ("clean", "dup"):
        sub, payg = f"{who}-sub", f"{who}-payg"
        assert usage_rows(eco.platform.usage.summary(eco.accounts[sub])) == [
            ("digits", 4, 12000, "12"),  # 4 x 3,000 images x 0.0010
            ("text-grad", 3, 4500, "9/20"),  # 4.5 IU x 0.10 (the usage table keeps the stamped price)
        ]
        assert usage_rows(eco.platform.usage.summary(eco.accounts[payg])) == [
            ("digits-pkg", 4, 120, "36"),  # 120 x 0.30
            ("digits-vol", 4, 120, "6/5"),  # 120 x 0.01
        ]
        # fee 20.00 + overage (12,000 - 10,000) x 0.0010 = 2.00 + tokens 2 x 0.10 + 2.5 x 0.05 = 0.325 -> 0.32
        assert str(eco.invoice(sub, "2026-01").total) == "22.32"
        # volume 120 x 0.002 = 0.24; package ceil(120 / 25) = 5 x 0.30 = 1.50
        assert str(eco.invoice(payg, "2026-01").total) == "1.74"
        assert eco.receivable(sub).exact == Fraction("2.325")  # 2.00 + 0.325 (the fee is posted on finalizing)
        assert eco.receivable(payg).exact == Fraction("1.74")
    (payable,) = [
        b for b in eco.platform.ledger.balances(eco.providers[PROVIDER]) if b.ledger_account.startswith("payable:")
    ]
    assert payable.exact == Fraction("-6.504")  # 2 x (2.325 + 1.74) = 8.13 x 0.80 provider share
    report = eco.platform.ledger.verify()
    assert (report.ok, report.rated_events) == (True, 2 * 15)


# -- 8. rebuild --------------------------------------------------------------------------------------------------


def _busy_month(eco: Economy) -> None:
    """Subscriptions, tiers, a finalized invoice and a late event: every kind of derived row."""
    eco.consumer("r-sub", "pro")
    eco.consumer("r-payg")
    eco.append(
        [
            eco.event("r-sub", "digits", 6000, "2026-01-03"),
            eco.event("r-sub", "digits", 6000, "2026-01-04"),
            eco.event("r-payg", "digits-grad", 15, "2026-01-05", price="0.01"),
            eco.event("r-payg", "digits", 1000, "2026-01-06"),
        ]
    )
    eco.clock.set("2026-02-05T00:00:00")
    eco.platform.invoices.finalize(eco.invoice("r-payg", "2026-01").id)
    eco.append(
        [
            eco.event("r-payg", "digits", 700, "2026-01-30"),  # late: an adjustment in February
            eco.event("r-payg", "digits", 300, "2026-02-02"),
        ]
    )


def test_rebuild_is_identical_and_repairs_a_tampered_rated_event(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-grad")
    _busy_month(eco)
    # pro: 20.00 fee + (12,000 - 10,000) x 0.0010 = 22.00
    assert str(eco.invoice("r-sub", "2026-01").total) == "22.00"
    # February: 300 x 0.0010 = 0.30 + the adjustment 700 x 0.0010 = 0.70
    assert str(eco.invoice("r-payg", "2026-02").total) == "1.00"

    first = eco.platform.ledger.rebuild()
    assert first.identical and first.events == 6
    assert str(eco.invoice("r-sub", "2026-01").total) == "22.00"
    assert str(eco.invoice("r-payg", "2026-02").total) == "1.00"

    (row,) = [
        r
        for r in eco.platform.ledger.transactions(eco.accounts["r-payg"])
        if r.kind == "usage" and r.period == "2026-02" and "adjustment" in r.memo
    ]
    changed = eco.sql("UPDATE usage_events SET amount = '1' WHERE txn_id = :t", t=row.id)
    assert changed == 1
    assert str(eco.invoice("r-payg", "2026-02").total) == "1.30"  # the tampered adjustment bills 1 instead of 0.70
    assert not eco.platform.ledger.verify().ok

    repaired = eco.platform.ledger.rebuild()
    assert repaired.before != repaired.after
    assert repaired.after == first.after
    assert str(eco.invoice("r-payg", "2026-02").total) == "1.00"
    again = eco.platform.ledger.rebuild()
    assert again.identical and again.after == first.after
    assert eco.platform.ledger.verify().ok


# -- 9. verify ---------------------------------------------------------------------------------------------------


def test_verify_names_the_transaction_whose_entry_was_changed(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-grad")
    _busy_month(eco)
    good = eco.platform.ledger.verify()
    assert good.ok and good.violation is None
    assert good.rated_events == 6

    fee = next(x for x in eco.platform.ledger.transactions(eco.accounts["r-payg"]) if x.kind == "usage")
    assert eco.sql("UPDATE ledger_entries SET amount = '7' WHERE txn_id = :t AND seq = 1", t=fee.id) == 1
    bad = eco.platform.ledger.verify()
    assert not bad.ok
    assert bad.violation is not None and fee.id in bad.violation


# -- 10. payouts -------------------------------------------------------------------------------------------------


def _payable(eco: Economy, provider: str) -> Fraction:
    balances = eco.platform.ledger.balances(eco.providers[provider])
    (balance,) = [b for b in balances if b.ledger_account.startswith("payable:")]
    return balance.exact


def test_payouts_split_gross_exactly_and_run_once(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-o")
    eco.consumer("buyer")
    eco.append([eco.event("buyer", "digits", 1234, "2026-01-10"), eco.event("buyer", "digits-o", 2500, "2026-01-11")])
    eco.clock.set("2026-02-05T00:00:00")
    assert _payable(eco, PROVIDER) == Fraction("-0.9872")  # 1,234 x 0.0010 = 1.234 x 0.80
    assert _payable(eco, OTHER_PROVIDER) == Fraction("-2")  # 2,500 x 0.0010 = 2.50 x 0.80

    statements = {s.provider_account_id: s for s in eco.platform.ledger.statements(JAN)}
    demo, other = statements[eco.providers[PROVIDER]], statements[eco.providers[OTHER_PROVIDER]]
    # gross 1.234 -> 1.23; provider 0.9872 -> 0.99; platform 1.23 - 0.99 = 0.24
    assert (str(demo.gross), str(demo.provider_amount), str(demo.platform_fee)) == ("1.23", "0.99", "0.24")
    assert (str(other.gross), str(other.provider_amount), str(other.platform_fee)) == ("2.50", "2.00", "0.50")
    for st in (demo, other):
        assert st.provider_amount + st.platform_fee == st.gross

    made = eco.platform.ledger.run_payouts(JAN)
    assert sorted((p.provider_account_id, str(p.amount)) for p in made) == sorted(
        [(eco.providers[PROVIDER], "0.99"), (eco.providers[OTHER_PROVIDER], "2.00")]
    )
    assert _payable(eco, PROVIDER) == Fraction("0.0028")  # -0.9872 + 0.99
    assert _payable(eco, OTHER_PROVIDER) == 0  # -2 + 2.00
    assert eco.platform.ledger.run_payouts(JAN) == []
    assert len(eco.platform.ledger.payouts(JAN)) == 2
    assert _payable(eco, PROVIDER) == Fraction("0.0028")
    assert eco.platform.ledger.verify().ok

    # Late usage of January (its invoice still a draft, so it lands in January): the next run pays only that.
    eco.append([eco.event("buyer", "digits", 1000, "2026-01-20")])
    [late] = eco.platform.ledger.run_payouts(JAN)
    # January's provider amount is now (1,234 + 1,000) x 0.0010 x 0.80 = 1.7872 -> 1.79; 0.99 was paid: 0.80 due
    assert (late.provider_account_id, str(late.amount), late.seq) == (eco.providers[PROVIDER], "0.80", 2)
    assert eco.platform.ledger.run_payouts(JAN) == []
    assert _payable(eco, PROVIDER) == Fraction("0.0028")  # -1.7872 + 0.99 + 0.80
    assert eco.platform.ledger.verify().ok


# -- 11. void ----------------------------------------------------------------------------------------------------


def test_void_posts_a_credit_note_and_only_a_finalized_invoice_can_be_voided(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir)
    eco.consumer("voidee", "pro")
    eco.append(eco.event("voidee", "digits", 4000, f"2026-01-{d:02d}") for d in (5, 6, 7))
    draft = eco.invoice("voidee", "2026-01")
    assert str(draft.total) == "22.00"  # fee 20.00 + (12,000 - 10,000) x 0.0010
    assert eco.receivable("voidee").exact == Fraction(2)  # the overage; the fee is posted on finalizing

    eco.clock.set("2026-02-05T00:00:00")
    with pytest.raises(Conflict):
        eco.platform.invoices.void(draft.id, "never sent")
    final = eco.platform.invoices.finalize(draft.id)
    assert eco.receivable("voidee").exact == Fraction(22)  # 2.00 + the 20.00 fee
    with pytest.raises(Conflict):
        eco.platform.invoices.finalize(draft.id)

    voided = eco.platform.invoices.void(final.id, "billed twice")
    assert voided.status == "void" and voided.void_reason == "billed twice"
    doc = voided.to_json()
    assert doc["credit_note"] == {"invoice_id": final.id, "amount": "-22.00"}
    assert eco.receivable("voidee").exact == 0  # 22 - 22.00
    assert eco.invoice("voidee", "2026-01").status == "void"
    with pytest.raises(Conflict):
        eco.platform.invoices.void(final.id, "again")
    assert eco.platform.ledger.verify().ok


# -- bugs found while writing these tests ------------------------------------------------------------------------


def test_an_adjustment_stays_on_the_invoice_it_landed_on_through_a_rebuild(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    """A late January event landed on February, and February was finalized with it: a rebuild must not move it
    to March because February is closed *now* (it was open when the event was read)."""
    eco = economy(store, tmp_path, demo_dir)
    eco.consumer("late")
    eco.append([eco.event("late", "digits", 1000, "2026-01-10")])
    eco.clock.set("2026-02-05T00:00:00")
    eco.platform.invoices.finalize(eco.invoice("late", "2026-01").id)
    eco.append([eco.event("late", "digits", 500, "2026-01-25")])  # -> February, adjustment 0.50
    eco.clock.set("2026-03-05T00:00:00")
    february = eco.platform.invoices.finalize(eco.invoice("late", "2026-02").id)
    assert lines_of(february) == [("adjustment", "digits", "500", "0.50")]  # 500 x 0.0010

    report = eco.platform.ledger.rebuild()
    assert report.identical
    march = eco.platform.invoices.invoices(eco.accounts["late"], Period(2026, 3))
    assert march == []  # not billed a second time in March
    assert eco.invoice("late", "2026-02") == february
    assert eco.receivable("late").exact == Fraction("1.5")  # 1.00 + 0.50, once each


def test_a_shortfall_brings_the_invoice_to_the_commitment_exactly(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-b")
    eco.consumer("small", "ent")
    eco.append([eco.event("small", "digits", 20008, "2026-01-10"), eco.event("small", "digits-b", 5004, "2026-01-11")])
    invoice = eco.invoice("small", "2026-01")
    assert lines_of(invoice) == [
        ("usage", "digits", "20008", "10.00"),  # 20,008 x 0.0005 = 10.004 -> 10.00
        ("usage", "digits-b", "5004", "5.00"),  # 5,004 x 0.0010 = 5.004 -> 5.00
        ("shortfall", None, "0", "85.00"),  # 100.00 - (10.00 + 5.00): not 100 - 15.008 = 84.992 -> 84.99
    ]
    assert str(invoice.total) == "100.00"


def test_a_switch_from_payg_to_enterprise_counts_the_enterprise_usage_against_the_commitment(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-b")
    account = eco.consumer("grower")  # payg until the 11th
    eco.append([eco.event("grower", "digits", 10000, "2026-01-05")])
    eco.clock.set("2026-01-11T00:00:00")
    eco.platform.plans.subscribe(account, "ent")  # the first plan: in force at once
    eco.append(
        [eco.event("grower", "digits", 40000, "2026-01-15"), eco.event("grower", "digits-b", 30000, "2026-01-15")]
    )

    invoice = eco.invoice("grower", "2026-01")
    assert lines_of(invoice) == [
        ("usage", "digits", "40000", "20.00"),  # enterprise: 40,000 x 0.0005
        ("usage", "digits", "10000", "10.00"),  # payg, before the 11th: 10,000 x 0.0010
        ("usage", "digits-b", "30000", "30.00"),  # enterprise, no rate: 30,000 x 0.0010
        # 100.00 x 21/31 days = 67.7419... committed; enterprise usage 20.00 + 30.00 = 50.00; 17.7419... -> 17.74
        ("shortfall", None, "0", "17.74"),
    ]
    assert str(invoice.total) == "77.74"  # 20.00 + 10.00 + 30.00 + 17.74


def test_plan_rates_apply_only_to_usage_in_the_plans_currency(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-eur")
    eco.consumer("abroad", "pro-plus")  # USD, 10,000 images included, overage 0.0008 USD
    eco.append(
        [
            eco.event("abroad", "digits", 12000, "2026-01-10"),
            eco.event("abroad", "digits-eur", 1000, "2026-01-11", price="0.0020", currency="EUR"),
        ]
    )
    usd = eco.invoice("abroad", "2026-01", "USD")
    assert str(usd.total) == "51.60"  # fee 50.00 + (12,000 - 10,000) x 0.0008
    eur = eco.invoice("abroad", "2026-01", "EUR")
    # the included images are used up; the USD overage rate is no EUR price: the list price, 1,000 x 0.0020 EUR
    assert lines_of(eur) == [("overage", "digits-eur", "1000", "2.00")]


def test_subscribing_again_to_the_plan_in_force_does_not_renew_its_included_iu(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir, now="2026-04-01T00:00:00")  # April: 30 days
    account = eco.consumer("renewer", "pro")
    first = eco.platform.plans.history(account)
    eco.append([eco.event("renewer", "digits", 10000, "2026-04-05")])  # all of pro's included images
    eco.clock.set("2026-04-11T00:00:00")
    again = eco.platform.plans.subscribe(account, "pro", now=True)
    assert again == first[0] and eco.platform.plans.history(account) == first
    eco.append([eco.event("renewer", "digits", 3000, "2026-04-15")])

    invoice = eco.invoice("renewer", "2026-04")
    assert lines_of(invoice) == [
        ("fee", None, "0", "20.00"),  # 20.00 x 30/30
        ("included", "digits", "10000", "0.00"),
        ("overage", "digits", "3000", "3.00"),  # 3,000 x 0.0010: no second 20/30 x 10,000 included
    ]
    assert str(invoice.total) == "23.00"


def test_a_draft_refresh_racing_a_finalize_does_not_reopen_the_invoice(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    """The draft is refreshed (new usage) while another caller finalizes it: the finalized invoice stays."""
    eco = economy(store, tmp_path, demo_dir)
    account = eco.consumer("raced")
    eco.append([eco.event("raced", "digits", 1000, "2026-01-10")])
    invoice_id = eco.invoice("raced", "2026-01").id
    eco.append([eco.event("raced", "digits", 1000, "2026-01-11")])  # the stored draft is now out of date
    eco.clock.set("2026-02-05T00:00:00")

    service = eco.platform.invoices
    drafts = service._drafts
    outcome: list[object] = []

    def finalize() -> None:
        try:
            outcome.append(service.finalize(invoice_id))
        except Exception as exc:  # reported by the assertion below
            outcome.append(exc)

    racer = threading.Thread(target=finalize)

    def drafts_with_a_racer(*args: Any) -> Any:
        if not racer.is_alive() and not outcome:
            service._drafts = drafts
            racer.start()
            racer.join(timeout=1.0)  # it finishes here unless the refresh holds it off until it commits
        return drafts(*args)

    service._drafts = drafts_with_a_racer
    service.invoices(account, JAN)
    racer.join(timeout=30)
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    final = eco.invoice("raced", "2026-01")
    assert (final.status, str(final.total)) == ("finalized", "2.00")  # 2,000 x 0.0010


# -- finalization rules -------------------------------------------------------------------------------------------


def test_an_unfinished_month_is_finalized_only_when_forced(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir)
    eco.consumer("early")
    eco.append([eco.event("early", "digits", 100, "2026-01-10")])
    eco.clock.set("2026-01-20T00:00:00")
    draft = eco.invoice("early", "2026-01")
    with pytest.raises(Conflict, match="has not ended"):
        eco.platform.invoices.finalize(draft.id)
    assert eco.invoice("early", "2026-01").status == "draft"
    forced = eco.platform.invoices.finalize(draft.id, force=True)
    assert forced.status == "finalized"
    eco.append([eco.event("early", "digits", 50, "2026-01-21")])  # the rest of January: an adjustment in February
    february = eco.invoice("early", "2026-02")
    assert [(line.type, line.events) for line in february.lines] == [("adjustment", 1)]


def test_finalize_due_finds_accounts_whose_invoices_were_never_read(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    """Nobody opened these invoices, so no draft was ever stored: the scheduler must still close the month."""
    eco = economy(store, tmp_path, demo_dir)
    eco.consumer("unread")
    eco.consumer("fee-only", "pro")  # a subscription month with no usage still bills its fee
    eco.append([eco.event("unread", "digits", 1234, "2026-01-10")])
    eco.clock.set("2026-02-02T00:00:00")  # January ended a day ago: inside the 3-day grace period
    assert eco.platform.invoices.finalize_due() == []
    eco.clock.set("2026-02-04T00:00:01")  # grace over
    done = {(eco.account_name(doc.account_id), doc.period): doc for doc in eco.platform.invoices.finalize_due()}
    assert set(done) == {("unread", "2026-01"), ("fee-only", "2026-01")}
    assert str(done[("unread", "2026-01")].total) == "1.23"  # 1,234 x 0.0010 = 1.234 -> 1.23
    assert str(done[("fee-only", "2026-01")].total) == "20.00"  # the whole month's fee
    assert eco.platform.invoices.finalize_due() == []  # nothing left: idempotent


# -- rebuild under appends, future periods, finalize_due's visits --------------------------------------------------


PLANS_WITH_PAYG = PLANS + "- {name: go, kind: payg, currency: USD}\n"


class _AppendsWhenReplayed:
    """The platform's event log, but the first read from offset 0 (a rebuild applying the log again) first appends
    ``pending`` to the log, as a gateway serving calls during the rebuild would."""

    def __init__(self, inner: Any, eco: Economy, pending: list[UsageEvent]) -> None:
        self.inner, self.eco, self.pending = inner, eco, pending

    def read(self, after_offset: int, limit: int) -> Any:
        # A read from 0 of a partition that holds events is the replay's (catching up first reads an empty
        # partition from 0 too, and a partition with events from its consumer's offset)
        if after_offset == 0 and self.pending and self.inner.last_offset() > 0:
            events = list(self.pending)
            self.pending.clear()
            self.eco.append(events)
        return self.inner.read(after_offset, limit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _rebuild_while_appending(eco: Economy, events: list[UsageEvent]) -> Any:
    metering = eco.platform.metering
    open_log = metering.open_log
    pending = list(events)
    metering.open_log = lambda *partition: _AppendsWhenReplayed(open_log(*partition), eco, pending)  # type: ignore[method-assign]
    try:
        report = eco.platform.ledger.rebuild()
    finally:
        metering.open_log = open_log  # type: ignore[method-assign]
    assert not pending, "the events were appended during the rebuild"
    return report


def test_a_rebuild_is_identical_though_events_arrive_during_it_and_still_repairs_a_tampered_row(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir, "digits-grad")
    _busy_month(eco)
    clean = eco.platform.ledger.rebuild()
    assert clean.identical and clean.events == 6

    # An event appended after the rebuild caught up is in neither digest: the consumer applies it afterwards.
    raced = _rebuild_while_appending(eco, [eco.event("r-payg", "digits", 400, "2026-02-03")])
    assert raced.identical and raced.events == 6 and raced.after == clean.after
    (record,) = [r for r in eco.platform.audit.list(1000) if r.action == "billing.rebuilt"][-1:]
    assert dict(record.payload) == {"digest_before": clean.after, "digest_after": clean.after, "events": 6}
    # February: 300 + 400 images x 0.0010 = 0.70, + the adjustment 700 x 0.0010 = 0.70
    assert str(eco.invoice("r-payg", "2026-02").total) == "1.40"
    assert eco.platform.ledger.verify().ok
    seven = eco.platform.ledger.rebuild()
    assert seven.identical and seven.events == 7

    (row,) = [
        r
        for r in eco.platform.ledger.transactions(eco.accounts["r-payg"])
        if r.kind == "usage" and r.period == "2026-02" and "adjustment" in r.memo
    ]
    assert eco.sql("UPDATE usage_events SET amount = '1' WHERE txn_id = :t", t=row.id) == 1
    repaired = _rebuild_while_appending(eco, [eco.event("r-payg", "digits", 100, "2026-02-04")])
    assert not repaired.identical and repaired.events == 7
    assert repaired.after == seven.after  # repaired, and still without the event that arrived meanwhile
    # 1.40 + 100 x 0.0010 = 1.50
    assert str(eco.invoice("r-payg", "2026-02").total) == "1.50"
    assert eco.platform.ledger.verify().ok
    assert eco.platform.ledger.rebuild().events == 8


def test_a_period_that_has_not_started_is_refused_and_nothing_is_stored(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = economy(store, tmp_path, demo_dir)
    account = eco.consumer("future", "pro", at="2026-01-10T00:00:00")
    for label in ("2026-02", "9999-12"):
        with pytest.raises(InvalidInput, match=f"period {label} has not started"):
            eco.platform.invoices.invoices(account, Period(int(label[:4]), int(label[5:])))
    with eco.platform.store.read() as uow:
        assert uow.ledger.invoices(account) == []
    # The list: the current month only (pro's prorated fee, 22 of 31 days x 20.00 = 14.19...), nothing later.
    assert [(d.period, str(d.total)) for d in eco.platform.invoices.invoices(account)] == [("2026-01", "14.19")]
    with eco.platform.store.read() as uow:
        assert [s.period for s in uow.ledger.invoices(account)] == ["2026-01"]


def test_finalize_due_visits_only_months_that_bill(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = economy(store, tmp_path, demo_dir)
    eco.platform.plans.apply(PLANS_WITH_PAYG)
    free = eco.consumer("idle-free", "free", at="2026-01-01T00:00:00")
    payg = eco.consumer("idle-payg", "go")
    eco.consumer("pro-all-along", "pro")
    was_pro = eco.consumer("was-pro", "pro")
    eco.clock.set("2026-01-15T00:00:00")
    eco.platform.plans.subscribe(was_pro, "free")  # from February
    eco.clock.set("2026-04-10T00:00:00")

    service = eco.platform.invoices
    visited: list[tuple[str, str]] = []
    read_invoices = service.invoices

    def spy(account_id: str, period: Period | None = None) -> list[Any]:
        visited.append((eco.account_name(account_id), "" if period is None else period.label))
        return read_invoices(account_id, period)

    service.invoices = spy  # type: ignore[method-assign]
    try:
        done = service.finalize_due()
        assert sorted((eco.account_name(d.account_id), d.period, str(d.total)) for d in done) == [
            ("pro-all-along", "2026-01", "20.00"),
            ("pro-all-along", "2026-02", "20.00"),
            ("pro-all-along", "2026-03", "20.00"),
            ("was-pro", "2026-01", "20.00"),
        ]
        assert sorted(set(visited)) == [
            ("pro-all-along", "2026-01"),
            ("pro-all-along", "2026-02"),
            ("pro-all-along", "2026-03"),
            ("was-pro", "2026-01"),
        ]  # neither the free nor the pay-as-you-go months without usage, nor was-pro's free ones
        visited.clear()
        assert service.finalize_due() == [] and visited == []  # every month that bills is settled
    finally:
        service.invoices = read_invoices  # type: ignore[method-assign]
    assert {free, payg}.isdisjoint(d.account_id for d in done)


def test_finalizing_a_draft_with_nothing_left_to_bill_is_a_conflict(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    """A stored draft whose currency no usage and no plan bills any more (here: stored by hand in EUR)."""
    eco = economy(store, tmp_path, demo_dir)
    pro = eco.consumer("stale", "pro")
    service = eco.platform.invoices
    (january,) = service.invoices(pro, JAN)
    stale = replace(january, id=invoice_id(pro, "2026-01", "EUR"), currency="EUR", lines=())
    with eco.platform.store.write() as uow:
        uow.ledger.put_invoice(stale.stored())
    with pytest.raises(Conflict, match="nothing left to bill"):
        service.finalize(stale.id, force=True)
    with eco.platform.store.read() as uow:
        assert [(s.currency, s.status) for s in uow.ledger.invoices(pro)] == [("EUR", "draft"), ("USD", "draft")]
    assert service.finalize(january.id, force=True).status == "finalized"  # the USD one is unaffected
