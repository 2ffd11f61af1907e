"""The economy from the CLI (click's CliRunner, a real SQLite store and event log under MODELMARKET_HOME):
plans, subscriptions, limits, the default plan, the invoice lifecycle, the ledger, payouts and the rebuild."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from engines import append_to_log, developer_setting, store_execute
from modelmarket.billing.period import Period
from modelmarket.bootstrap import bootstrap
from modelmarket.cli.main import cli
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

PLANS = """\
plans:
  - {name: free, kind: free, currency: USD, grant: {image: 100, tokens_1k: 10, audio_minute: 5}}
  - {name: payg, kind: payg, currency: USD}
  - {name: pro, kind: subscription, currency: USD, fee: "20.00", included: {image: 10000, tokens_1k: 1000}}
"""
DIGITS_PRICE = Decimal("0.0010")
"""The demo digits model's list price per image (its manifest)."""
_ids = count(1)


@dataclass
class Mm:
    home: Path
    runner: CliRunner

    def run(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, (
            f"modelmarket {' '.join(args)} exited {result.exit_code}, not {code}:\n{result.stdout}\n{result.stderr}"
        )
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self.run(*args, "--json", code=code).stdout)

    def file(self, name: str, text: str) -> str:
        path = self.home.parent / name
        path.write_text(text)
        return str(path)

    def account_id(self, name: str) -> str:
        (found,) = [a["id"] for a in self.json("accounts", "list") if a["name"] == name]
        return str(found)


@pytest.fixture()
def mm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Mm:
    for name in list(os.environ):
        if developer_setting(name):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MODELMARKET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELMARKET_GATE_REVIEW", "auto")  # the gate approves what passes its stages
    return Mm(tmp_path / "home", CliRunner())


def _months_ago(n: int) -> Period:
    today = datetime.now(UTC).date()
    index = today.year * 12 + today.month - 1 - n
    return Period(index // 12, index % 12 + 1)


def _usage(mm: Mm, consumer: str, images: int, day: str) -> None:
    """Append one served call of ``images`` images of digits 1.0.0 (list price) to the event log."""
    event = UsageEvent(
        id=f"evt-cli-{next(_ids):08d}",
        source="gateway-1",
        account_id=mm.account_id(consumer),
        time=datetime.fromisoformat(f"{day}T12:00:00+00:00"),
        model="digits",
        version="1.0.0",
        provider_account_id=mm.account_id("demo-provider"),
        unit_kind=UnitKind.IMAGE,
        quantity=images,
        unit_price=DIGITS_PRICE,
        currency="USD",
        latency_ms=Decimal("3.5"),
    )
    platform = bootstrap(Settings(home=mm.home))  # the CLI's own settings (the environment), its log
    try:
        append_to_log(platform, [(event.id, event.encode())])
    finally:
        platform.close()


# -- plans and subscriptions ---------------------------------------------------------------------------------


def test_plans_apply_is_idempotent_and_a_changed_plan_moves_its_subscribers_next_period(mm: Mm) -> None:
    plans = mm.file("plans.yaml", PLANS)
    first = mm.run("plans", "apply", plans)
    assert re.search(r"^pro\s+created\s+v1\s+0$", first.stdout, re.M), first.stdout
    again = mm.json("plans", "apply", plans)
    assert [(r["plan"], r["action"], r["version"]) for r in again] == [
        ("free", "unchanged", 1),
        ("payg", "unchanged", 1),
        ("pro", "unchanged", 1),
    ]
    mm.run("accounts", "create", "alice")
    sub = mm.json("subscribe", "alice", "pro")
    assert (sub["plan"], sub["plan_version"], sub["effective_at"]) == ("pro", 1, sub["created_at"])

    changed = mm.run("plans", "apply", mm.file("plans.yaml", PLANS.replace('"20.00"', '"25.00"')))
    assert re.search(r"^pro\s+changed\s+v2\s+1$", changed.stdout, re.M), changed.stdout
    assert re.search(r"^free\s+unchanged\s+v1\s+0$", changed.stdout, re.M)
    assert "at the start of the next period" in changed.stdout
    # moved at the next period: v1 stays in force until then
    assert mm.json("limits", "show", "alice")["plan"]["version"] == 1
    assert mm.json("plans", "show", "pro")["fee"] == "25.00"
    assert mm.json("plans", "show", "pro", "--version", "1")["fee"] == "20.00"
    shown = mm.run("plans", "show", "pro").stdout
    assert "plan pro v2 of 2 (subscription, USD)" in shown and "fee: 25.00 USD per month" in shown
    listed = mm.json("plans", "list")
    assert [(p["name"], p["version"]) for p in listed] == [("free", 1), ("payg", 1), ("pro", 2)]


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (PLANS.replace('"20.00"', "20.5"), r"plans\[2\] \(pro\)\.fee: write the amount as a quoted decimal string"),
        (PLANS.replace("grant: {image: 100", "grant: {pixels: 100"), r"plans\[0\] \(free\)\.grant: 'pixels' is not"),
        (PLANS.replace("kind: payg", "kind: gratis"), r"plans\[1\] \(payg\)\.kind"),
    ],
)
def test_a_bad_plans_file_names_the_plan_and_field_and_applies_nothing(mm: Mm, broken: str, expected: str) -> None:
    result = mm.run("plans", "apply", mm.file("bad.yaml", broken), code=1)
    assert re.search(expected, result.stderr), result.stderr
    assert "bad.yaml" in result.stderr
    assert mm.json("plans", "list") == []


def test_subscribe_errors_and_a_later_change_waits_for_the_next_period(mm: Mm) -> None:
    mm.run("plans", "apply", mm.file("plans.yaml", PLANS))
    mm.run("accounts", "create", "carol")
    assert "no plan named 'gold'" in mm.run("subscribe", "carol", "gold", code=1).stderr
    assert "no account named 'nobody'" in mm.run("subscribe", "nobody", "free", code=1).stderr
    out = mm.run("subscribe", "carol", "free").stdout
    assert out.startswith("subscribed carol to plan free v1, effective ")
    later = mm.json("subscribe", "carol", "pro")
    assert later["effective_at"] > later["created_at"] and later["effective_at"].endswith("-01T00:00:00+00:00")
    assert mm.json("limits", "show", "carol")["plan"]["name"] == "free"
    at_once = mm.json("subscribe", "carol", "pro", "--now")
    assert at_once["effective_at"] == at_once["created_at"]
    assert mm.json("limits", "show", "carol")["plan"]["name"] == "pro"


# -- limits ----------------------------------------------------------------------------------------------------


def test_limits_set_and_show_for_the_account_and_a_key(mm: Mm) -> None:
    limited = PLANS.replace('fee: "20.00",', 'fee: "20.00", limits: {rpm: 600},')
    mm.run("plans", "apply", mm.file("plans.yaml", limited))
    mm.run("accounts", "create", "alice")
    mm.run("accounts", "create", "bob")
    mm.run("subscribe", "alice", "pro")
    key = mm.json("keys", "create", "alice")["key_id"]
    foreign = mm.json("keys", "create", "bob")["key_id"]

    doc = mm.json(
        "limits", "set", "alice", "--rpm", "60", "--iu-per-day", "image=500", "--iu-per-day", "tokens_1k=2.5",
        "--budget", "25.00",
    )  # fmt: skip
    assert (doc["account"], doc["rpm"], doc["budget"], doc["key_id"]) == ("alice", 60, "25.00", None)
    assert doc["iu_per_day"]["image"] == "500"
    assert doc["iu_per_day"]["tokens_1k"] in {"2.5", "5/2"}  # limits_json writes str(Fraction): see the report
    mm.run("limits", "set", "alice", "--key", key, "--rpm", "10")
    mm.run("limits", "set", "alice", "--budget", "30")  # merged: rpm and quotas stay

    shown = mm.json("limits", "show", "alice")
    assert shown["plan"] == {
        "name": "pro",
        "version": 1,
        "currency": "USD",
        "limits": {"rpm": 600, "iu_per_day": {}, "budget": None},
    }
    own = shown["account_limits"]
    assert (own["rpm"], own["iu_per_day"]["image"], own["budget"]) == (60, "500", "30")
    assert [(k["key_id"], k["rpm"], k["budget"]) for k in shown["keys"]] == [(key, 10, None)]
    text = mm.run("limits", "show", "alice").stdout
    assert re.search(r"^plan pro v1\s+600\s+-\s+-$", text, re.M), text
    assert re.search(r"^account\s+60\s+image 500, tokens_1k \S+\s+30 USD$", text, re.M), text
    assert re.search(rf"^key {key}\s+10\s+-\s+-$", text, re.M), text

    cleared = mm.json("limits", "set", "alice", "--clear", "--rpm", "5")
    assert (cleared["rpm"], cleared["iu_per_day"], cleared["budget"]) == (5, {}, None)

    errors = {
        ("--key", foreign, "--rpm", "1"): f"--key: {foreign!r} is not a key of alice",
        ("--iu-per-day", "pixel=3"): "--iu-per-day: unknown unit kind 'pixel'",
        ("--iu-per-day", "image=-3"): "--iu-per-day: image='-3' is not a non-negative number",
        ("--iu-per-day", "image"): "--iu-per-day: 'image' is not UNIT=N",
        ("--budget", "1e3"): "--budget: '1e3' is not a plain non-negative decimal",
        ("--rpm", "0"): "rpm: must be between 1 and",
    }
    for args, message in errors.items():
        assert message in mm.run("limits", "set", "alice", *args, code=1).stderr, args
    assert "nothing to set" in mm.run("limits", "set", "alice", code=2).stderr
    assert "no account named 'zed'" in mm.run("limits", "show", "zed", code=1).stderr


# -- the default plan ------------------------------------------------------------------------------------------


def test_a_new_consumer_is_subscribed_to_the_default_plan(mm: Mm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELMARKET_DEFAULT_PLAN", "free")
    refused = mm.run("accounts", "create", "dave", code=1)
    assert "MODELMARKET_DEFAULT_PLAN names plan 'free', which does not exist" in refused.stderr
    assert mm.json("accounts", "list") == []  # nothing created

    mm.run("plans", "apply", mm.file("plans.yaml", PLANS))
    created = mm.json("accounts", "create", "dave")
    assert (created["subscription"]["plan"], created["subscription"]["plan_version"]) == ("free", 1)
    assert "subscribed to plan free v1" in mm.run("accounts", "create", "erin").stdout
    assert mm.json("limits", "show", "erin")["plan"]["name"] == "free"
    provider = mm.json("accounts", "create", "acme", "--role", "provider")
    assert "subscription" not in provider
    assert mm.json("limits", "show", "acme")["plan"] is None


# -- invoices, ledger, payouts, rebuild ------------------------------------------------------------------------


@pytest.fixture()
def billed(mm: Mm, demo_dir: Path) -> Mm:
    """digits published; bob (payg) used 2,500 images two months ago (2.50 USD); alice is on pro since today."""
    mm.run("accounts", "create", "demo-provider", "--role", "provider")
    mm.run("publish", str(demo_dir / "digits"))
    mm.run("plans", "apply", mm.file("plans.yaml", PLANS))
    mm.run("accounts", "create", "bob")
    mm.run("accounts", "create", "alice")
    mm.run("subscribe", "alice", "pro")
    month = _months_ago(2)
    _usage(mm, "bob", 2000, f"{month.label}-10")
    _usage(mm, "bob", 500, f"{month.label}-20")
    return mm


def test_invoice_lifecycle_draft_finalize_void_with_html(billed: Mm, tmp_path: Path) -> None:
    mm, month = billed, _months_ago(2).label
    (draft,) = mm.json("invoices", "list", "bob", "--period", month)["invoices"]
    assert (draft["status"], draft["total"], draft["currency"], draft["account"]) == ("draft", "2.50", "USD", "bob")
    assert [(x["type"], x["quantity_iu"], x["amount"]) for x in draft["lines"]] == [("usage", "2500", "2.50")]
    listed = mm.run("invoices", "list", "bob").stdout
    assert re.search(rf"^{draft['id']}\s+bob\s+{month}\s+draft\s+1\s+2.50 USD$", listed, re.M), listed

    shown = mm.run("invoices", "show", draft["id"]).stdout
    assert f"Invoice {draft['id']} for bob, period {month}, currency USD: draft" in shown
    assert re.search(r"^usage\s+digits: usage\s+image\s+2\s+2500\s+2.50$", shown, re.M), shown
    assert re.search(r"^Total \(USD\)\s+2\s+2.50$", shown, re.M), shown
    # the short form prints the month's invoices in full, the same documents
    assert shown in mm.run("invoice", "bob", "--period", month).stdout
    (short,) = mm.json("invoice", "bob", "--period", month)["invoices"]
    assert {k: v for k, v in short.items() if k != "updated_at"} == {
        k: v for k, v in draft.items() if k != "updated_at"
    }

    # alice's current invoice has the pro fee, prorated by day
    (current,) = mm.json("invoices", "list", "alice", "--period", _months_ago(0).label)["invoices"]
    assert [x["type"] for x in current["lines"]] == ["fee"] and "plan pro v1 fee" in current["lines"][0]["description"]

    done = mm.json("invoices", "finalize", "--due")
    assert [(d["id"], d["status"]) for d in done] == [(draft["id"], "finalized")]
    assert "no drafts are due" in mm.run("invoices", "finalize", "--due").stdout
    assert "already finalized" in mm.run("invoices", "finalize", draft["id"], code=1).stderr
    assert "give either an INVOICE_ID or --due" in mm.run("invoices", "finalize", code=2).stderr
    assert "Missing option '--reason'" in mm.run("invoices", "void", draft["id"], code=2).stderr

    voided = mm.run("invoices", "void", draft["id"], "--reason", "<b>billed twice</b> & sorry")
    assert voided.stdout.strip() == f"voided {draft['id']} ({month}): credit note -2.50 USD"
    assert (
        "only a finalized invoice can be voided"
        in mm.run("invoices", "void", draft["id"], "--reason", "x", code=1).stderr
    )
    doc = mm.json("invoices", "show", draft["id"])
    assert (doc["status"], doc["credit_note"]["amount"], doc["void_reason"]) == (
        "void",
        "-2.50",
        "<b>billed twice</b> & sorry",
    )

    page = tmp_path / "invoice.html"
    text = mm.run("invoices", "show", draft["id"], "--html", str(page)).stdout
    assert f"wrote {page}" in text and "credit note: -2.50 USD" in text
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert "&lt;b&gt;billed twice&lt;/b&gt; &amp; sorry" in html and "<b>billed twice" not in html
    for needle in ("digits: usage", "2500", "2.50", "Total (USD)", "Credit note", "-2.50", "void", "bob"):
        assert needle in html, needle
    assert not re.search(r"(src|href)=|url\(|@import|<script|<link", html), "the page must be self-contained"
    assert "no invoice 'inv_nope'" in mm.run("invoices", "show", "inv_nope", code=1).stderr


def _balances(mm: Mm, account: str) -> dict[str, tuple[str, str]]:
    doc = mm.json("ledger", "show", account)
    return {b["ledger_account"].split(":")[0]: (b["balance"], b["balance_exact"]) for b in doc["balances"]}


def test_ledger_show_verify_tamper_and_rebuild(billed: Mm) -> None:
    mm = billed
    assert _balances(mm, "bob") == {"receivable": ("2.50", "2.5")}
    assert _balances(mm, "demo-provider") == {"payable": ("-2.00", "-2")}
    shown = mm.run("ledger", "show", "bob").stdout
    assert re.search(r"^receivable:\S+\s+USD\s+2.50\s+2.5$", shown, re.M), shown
    assert re.search(r"\susage\s+\d{4}-\d{2}\s+2.50 USD\s+\d+ usage event", shown), shown
    txns = mm.json("ledger", "show", "bob")["transactions"]
    assert {t["kind"] for t in txns} == {"usage"}
    ok = mm.run("ledger", "verify")
    assert re.fullmatch(r"ledger ok: \d+ transactions, 2 rated events\n", ok.stdout), ok.stdout
    assert mm.json("ledger", "verify")["ok"] is True

    identical = mm.run("billing", "rebuild").stdout
    assert identical.strip().endswith("identical") and "digest before: " in identical
    assert mm.json("billing", "rebuild")["identical"] is True

    txn = txns[0]["id"]
    changed = store_execute(mm.home, "UPDATE ledger_entries SET amount = '999' WHERE txn_id = :t AND seq = 1", t=txn)
    assert changed == 1
    broken = mm.run("ledger", "verify", code=1)
    assert broken.stdout == "" and f"transaction {txn} does not balance in USD" in broken.stderr
    assert mm.json("ledger", "verify", code=1)["ok"] is False

    repaired = mm.run("billing", "rebuild")  # exit 0: the usage transactions are derived from the log
    assert repaired.stdout.strip().endswith("repaired: derived rows differed from the log")
    assert mm.run("ledger", "verify").stdout.startswith("ledger ok:")
    assert _balances(mm, "bob") == {"receivable": ("2.50", "2.5")}


def test_payouts_are_recorded_once_per_closed_month(billed: Mm) -> None:
    mm, month = billed, _months_ago(2).label
    statements = mm.json("payouts", "statements", "--period", month)
    assert [(s["provider"], s["gross"], s["provider_amount"], s["platform_fee"]) for s in statements] == [
        ("demo-provider", "2.50", "2.00", "0.50")
    ]
    assert mm.json("payouts", "statements", "--period", month, "bob") == []
    text = mm.run("payouts", "statements", "--period", month, "demo-provider").stdout
    assert re.search(r"^digits\s+image\s+2\s+2500\s+2.50\s+2.00\s+0.50$", text, re.M), text

    first = mm.run("payouts", "run", "--period", month).stdout
    assert f"recorded 1 payout(s) for {month}" in first and re.search(r"demo-provider\s+\S+\s+2.00 USD", first)
    second = mm.run("payouts", "run", "--period", month)
    assert f"nothing new recorded: 1 payout(s) for {month} were already recorded" in second.stdout
    assert mm.json("payouts", "run", "--period", month)["recorded"] == []
    listed = mm.json("payouts", "list", "--period", month)
    assert [(x["provider"], x["amount"], x["currency"]) for x in listed] == [("demo-provider", "2.00", "USD")]
    assert mm.json("payouts", "list", "--period", _months_ago(3).label) == []
    assert _balances(mm, "demo-provider") == {"payable": ("0.00", "0")}
    assert mm.run("ledger", "verify").stdout.startswith("ledger ok:")

    assert "still open to late usage" in mm.run("payouts", "run", "--period", _months_ago(0).label, code=1).stderr
    assert "nothing recorded: no provider earned" in mm.run("payouts", "run", "--period", _months_ago(3).label).stdout
    assert "month 13 is not between 01 and 12" in mm.run("payouts", "run", "--period", "2026-13", code=1).stderr
    # the short form prints the same statement
    assert text.startswith(f"Provider statement for demo-provider, period {month}, currency USD")
    assert mm.run("statement", "demo-provider", "--period", month).stdout == text
    short = mm.json("statement", "demo-provider", "--period", month)
    assert (short["provider"], short["period"], short["statements"]) == ("demo-provider", month, statements)
    assert f"no revenue for bob in {month}" in mm.run("statement", "bob", "--period", month).stdout
