"""The pricing what-if (``modelmarket lab price-replay``) on SQLite and PostgreSQL: a month's real usage re-rated
by billing's own code. At today's prices it reproduces every stored invoice to the cent; under a proposed price
or plan it gives the figures worked out by hand beside each assertion; it stores nothing.
"""

from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner
from economy_helpers import OTHER_PROVIDER, PROVIDER, Economy, make_economy
from sqlalchemy import text

from modelmarket.adapters.store import SqlStore
from modelmarket.billing.period import Period
from modelmarket.billing.plans import parse_plans
from modelmarket.billing.replay import Proposal, ReplayReport
from modelmarket.cli.main import cli
from modelmarket.core.errors import InvalidInput

pytestmark = pytest.mark.timeout(120)

JAN, FEB = Period(2026, 1), Period(2026, 2)
SHARE = Fraction("0.80")  # the default provider share (MODELMARKET_PROVIDER_SHARE)
TABLES = ("usage_events", "rating_counters", "ledger_txns", "ledger_entries", "invoices", "audit_log")


def _usage(store: SqlStore, tmp_path: Path, demo_dir: Path) -> Economy:
    """Four consumers on three kinds of plan, a dynamic price factor, tiers, two providers, and a January
    finalized before one of its events arrived."""
    eco = make_economy(store, tmp_path / "home", demo_dir, ("digits-grad", "digits-o"))
    eco.consumer("payg")
    eco.consumer("pro", "pro")  # fee 20.00, 10,000 images included
    eco.consumer("ent", "ent")  # digits at 0.0005, 100.00 committed
    eco.consumer("late")
    eco.append(
        [
            eco.event("payg", "digits", 1000, "2026-01-05"),  # 1,000 x 0.0010 = 1.00
            eco.event("payg", "digits", 500, "2026-01-06", price="0.0012", factor="1.2"),  # 500 x 0.0012 = 0.60
            eco.event("payg", "digits-grad", 12, "2026-01-07", price="0.01"),  # 10 x 0.01 + 2 x 0.005 = 0.11
            eco.event("payg", "digits-o", 300, "2026-01-08"),  # 300 x 0.0010 = 0.30
            eco.event("pro", "digits", 12000, "2026-01-10"),  # 10,000 included, 2,000 x 0.0010 = 2.00 overage
            eco.event("ent", "digits", 4000, "2026-01-11"),  # 4,000 x 0.0005 = 2.00; shortfall 98.00
            eco.event("late", "digits", 1000, "2026-01-20"),  # 1.00
        ]
    )
    eco.clock.set("2026-02-05T00:00:00")
    eco.platform.invoices.finalize(eco.invoice("late", "2026-01").id)
    eco.append(
        [
            eco.event("late", "digits", 300, "2026-01-28"),  # after January was finalized: February's adjustment
            eco.event("late", "digits", 200, "2026-02-03"),  # 0.20
        ]
    )
    return eco


def _invoice_totals(eco: Economy, period: str, *names: str) -> dict[str, Decimal]:
    return {name: eco.invoice(name, period).total for name in names}


def _replayed(eco: Economy, report: ReplayReport, new: bool = True) -> dict[str, Decimal]:
    names = {account_id: name for name, account_id in eco.accounts.items()}
    return {names[i.account_id]: (i.new if new else i.old) for i in report.invoices if i.account_id in names}


def _counts(store: SqlStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {name: int(conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()) for name in TABLES}


def test_a_replay_at_todays_prices_reproduces_every_stored_invoice_and_stores_nothing(
    store: SqlStore, tmp_path: Path, demo_dir: Path
) -> None:
    eco = _usage(store, tmp_path, demo_dir)
    january = _invoice_totals(eco, "2026-01", "payg", "pro", "ent", "late")
    february = _invoice_totals(eco, "2026-02", "pro", "ent", "late")  # payg has no February invoice
    assert {k: str(v) for k, v in january.items()} == {"payg": "2.01", "pro": "22.00", "ent": "100.00", "late": "1.00"}
    # February: pro's fee and ent's commitment, and late's 0.30 adjustment + 0.20
    assert {k: str(v) for k, v in february.items()} == {"pro": "20.00", "ent": "100.00", "late": "0.50"}
    before = _counts(store)

    for period, stored in ((JAN, january), (FEB, february)):
        report = eco.platform.replays.replay(period, Proposal())
        assert _replayed(eco, report) == stored, period
        assert _replayed(eco, report, new=False) == stored, period
        assert report.models and all(c.old == c.new for c in report.models.values())
    assert _counts(store) == before  # nothing written: no row, no counter, no invoice, no audit record

    report = eco.platform.replays.replay(JAN, Proposal())
    assert report.events == 7  # January's own (late's event read after the close landed on February)
    assert report.rated == 8  # with it: it belongs to January's counters
    assert report.segments[("payg", "USD")].events == 5  # payg's 4 and late's 1 (no plan: pay as you go)


def test_a_changed_list_price_gives_the_hand_computed_revenue(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = _usage(store, tmp_path, demo_dir)
    report = eco.platform.replays.replay(JAN, Proposal({"digits": Decimal("0.0020")}))
    assert {k: str(v) for k, v in _replayed(eco, report).items()} == {
        "payg": "3.61",  # 1,000 x 0.0020 + 500 x 0.0020 x 1.2 (its factor) + 0.11 + 0.30 = 2.00 + 1.20 + 0.41
        "pro": "24.00",  # 20.00 + 2,000 overage x 0.0020
        "ent": "100.00",  # the plan's own rate (0.0005) wins over a list price: 2.00, and the shortfall to 100.00
        "late": "2.00",  # 1,000 x 0.0020
    }
    digits = report.models[("digits", "USD")]
    # old: payg 1.00 + 0.60, pro 2.00, ent 2.00, late 1.00; new: 2.00 + 1.20, 4.00, 2.00, 2.00
    assert (digits.old, digits.new) == (Fraction("6.60"), Fraction("11.20"))
    provider = eco.providers[PROVIDER]
    assert report.providers[(provider, "USD")].new == (digits.new + Fraction("0.11")) * SHARE
    assert report.providers[(eco.providers[OTHER_PROVIDER], "USD")].new == Fraction("0.30") * SHARE
    assert [i.account_id for i in report.invoices[:2]] == [eco.accounts["pro"], eco.accounts["payg"]]  # +2.00, +1.60
    totals = report.totals()["USD"]
    assert totals == (Decimal("125.01"), Decimal("129.61"))  # 2.01+22.00+100.00+1.00 -> 3.61+24.00+100.00+2.00


def test_a_proposed_plan_rerates_its_subscribers(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = _usage(store, tmp_path, demo_dir)
    (pro,) = parse_plans(
        'plans: [{name: pro, kind: subscription, currency: USD, fee: "25.00", included: {image: 5000},'
        ' overage: {image: "0.0008"}}]'
    )
    report = eco.platform.replays.replay(JAN, Proposal(plans=(pro,)))
    replayed = _replayed(eco, report)
    assert str(replayed["pro"]) == "30.60"  # 25.00 + (12,000 - 5,000) x 0.0008 = 25.00 + 5.60
    assert (replayed["payg"], replayed["ent"]) == (Decimal("2.01"), Decimal("100.00"))  # other plans untouched
    segment = report.segments[("pro", "USD")]
    assert (segment.old, segment.new) == (Fraction("2.00"), Fraction("5.60"))  # usage only; the fee is on invoices

    (unknown,) = parse_plans("plans: [{name: platinum, kind: payg, currency: USD}]")
    with pytest.raises(InvalidInput, match="'platinum' is not a plan of this platform"):
        eco.platform.replays.replay(JAN, Proposal(plans=(unknown,)))
    with pytest.raises(InvalidInput, match="non-negative"):
        eco.platform.replays.replay(JAN, Proposal({"digits": Decimal("-1")}))


def test_the_cli_prints_the_replay_as_a_table_and_as_json(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = _usage(store, tmp_path, demo_dir)
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, ["lab", "price-replay", *args], obj={"platform": eco.platform})
        assert result.exit_code == code, result.output
        return result.output

    doc = json.loads(run("--period", "2026-01", "--model", "digits", "--price", "0.002", "--json"))
    assert doc["totals"] == [{"currency": "USD", "old": "125.01", "new": "129.61", "change": "4.60"}]
    assert doc["accounts"][0] == {
        "account": "pro",
        "account_id": eco.accounts["pro"],
        "segment": "pro",
        "currency": "USD",
        "old": "22.00",
        "new": "24.00",
        "change": "2.00",
    }
    table = run("--period", "2026-01", "--model", "digits", "--price", "0.002")
    assert "digits at 0.002 per IU" in table
    assert "125.01 USD  129.61 USD  +4.60 USD" in table
    assert "--model and --price go together" in run("--period", "2026-01", "--price", "1", code=2)
    assert "no model 'nope'" in run("--period", "2026-01", "--model", "nope", "--price", "1", code=1)
    assert "--price must be a decimal" in run("--period", "2026-01", "--model", "digits", "--price", "abc", code=1)


def test_a_scheduled_price_replay_keeps_its_report(store: SqlStore, tmp_path: Path, demo_dir: Path) -> None:
    eco = _usage(store, tmp_path, demo_dir)
    schedule = tmp_path / "rituals.yaml"
    schedule.write_text(
        "rituals:\n"
        "  - {name: pricing, cron: '0 4 1 * *', price_replay: {period: '2026-01', model: digits, price: '0.002'}}\n"
        "  - {name: broken, cron: '0 4 1 * *', bakeoff: {models: [digits], dataset: /nowhere.jsonl}}\n"
    )
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(cli, ["lab", *args], obj={"platform": eco.platform})
        assert result.exit_code == code, result.output
        return result.output

    assert "kept" in run("schedule", str(schedule), "--run", "pricing")
    (kept,) = json.loads(run("reports", "pricing", "--json"))
    assert kept["ok"] and kept["report"]["totals"] == [
        {"currency": "USD", "old": "125.01", "new": "129.61", "change": "4.60"}
    ]  # the same figures as the replay by hand
    assert "no ritual 'nope'" in run("schedule", str(schedule), "--run", "nope", code=1)
    run("schedule", str(schedule), "--run", "broken", code=1)
    (failed,) = json.loads(run("reports", "broken", "--json"))
    assert not failed["ok"] and "nowhere" in failed["error"]
