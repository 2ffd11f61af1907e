"""The dashboard's account and operator pages (usage, invoices, statements, payouts, audit, runners).

First each page's handler on a real platform (SQLite in tmp_path, demo models published, usage through the event
log as from the gateway, a pinned clock); then a real gateway process over HTTP, signed in through the sign-in
form: billed calls whose costs the usage page shows exactly as ``GET /api/usage`` does, another account's invoice
not found, and the operator pages refused to a consumer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from economy_helpers import OTHER_PROVIDER, PROVIDER, Economy, make_economy
from markupsafe import escape
from sqlalchemy import update
from starlette.requests import Request
from starlette.responses import HTMLResponse
from tests.e2e.conftest import Cli, Gateway, start_gateway, stop_gateway

from modelmarket.accounts import Account
from modelmarket.adapters.store import SqlStore, open_store
from modelmarket.adapters.store.schema import audit_log
from modelmarket.audit.checkpoints import Checkpoint, checkpoint_body, key_id_of
from modelmarket.audit.service import checkpoint_facts
from modelmarket.billing.period import Period
from modelmarket.billing.ports import Payout
from modelmarket.bootstrap import PluginRuntimes, bootstrap
from modelmarket.core.errors import NotFound
from modelmarket.core.money import decimal_text, sum_exact
from modelmarket.dashboard import pages_account, pages_operator
from modelmarket.dashboard.web import DashboardContext, Session, View
from modelmarket.gateway.app import GatewayParts
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.gateway.dataplane import Readiness
from modelmarket.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


# -- the handlers on a real platform --------------------------------------------------------------------------------


@dataclass
class Rig:
    economy: Economy
    parts: GatewayParts

    def account(self, name: str) -> Account:
        return self.economy.platform.accounts.get(name)

    def view(self, name: str, path: str, query: str = "", method: str = "GET", **path_params: str) -> View:
        scope: dict[str, Any] = {
            "type": "http",
            "method": method,
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "headers": [(b"host", b"dashboard")],
            "path_params": path_params,
            "scheme": "http",
            "server": ("dashboard", 80),
            "root_path": "",
        }
        session = Session("s1", self.account(name), "key_1", "csrf", "2099-01-01T00:00:00+00:00")
        return View(Request(scope), DashboardContext(self.economy.platform, self.parts), session)


def make_rig(store: SqlStore, home: Path, demo_dir: Path) -> Rig:
    economy = make_economy(store, home, demo_dir, ["digits-o", "digits-eur"], now="2026-03-01T00:00:00")
    platform = economy.platform
    economy.consumer("alice")
    economy.consumer("bob")
    platform.accounts.create("ops", "operator")
    economy.clock.set("2026-03-14T18:00:00")
    return Rig(economy, bootstrap_gateway(platform, preload=False, metering_child=False))


@pytest.fixture()
def rig(tmp_path: Path, demo_dir: Path) -> Iterator[Rig]:
    store: SqlStore = open_store(f"sqlite:///{tmp_path / 'modelmarket.db'}")
    try:
        yield make_rig(store, tmp_path / "home", demo_dir)
    finally:
        store.dispose()


@pytest.fixture()
def any_rig(store: SqlStore, tmp_path: Path, demo_dir: Path) -> Rig:
    """The rig on SQLite and on PostgreSQL (``store``): for the pages' own reads (sums, newest first, limits)."""
    return make_rig(store, tmp_path / "home", demo_dir)


def body(response: HTMLResponse) -> str:
    return bytes(response.body).decode()


def cells(page: str, row_attr: str) -> list[str]:
    """The text of the cells of the table row carrying ``row_attr`` (``data-model="digits"``)."""
    match = re.search(rf"<tr {re.escape(row_attr)}>(.*?)</tr>", page, re.S)
    assert match, f"no row {row_attr} in the page"
    return [
        html.unescape(re.sub(r"<[^>]+>", "", c)).strip()
        for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", match[1], re.S)
    ]


def bill_alice(rig: Rig) -> None:
    e = rig.economy
    e.append(
        [
            e.event("alice", "digits", 3, "2026-03-02"),
            e.event("alice", "digits", 1, "2026-03-05", price="0.0010"),
            e.event("alice", "digits-o", 7, "2026-03-05"),
            e.event("alice", "digits-eur", 2, "2026-03-09", price="0.0020", currency="EUR"),
            e.event("alice", "digits", 5, "2026-02-20"),  # last month: outside this month's page
            e.event("bob", "digits", 40, "2026-03-03"),
        ]
    )
    e.platform.metering.catch_up()  # what the gateway's metering child does: a page view applies nothing itself


async def test_usage_shows_charts_and_the_table_per_model_with_the_exact_figures_of_the_usage_api(rig: Rig) -> None:
    bill_alice(rig)
    response = await pages_account.usage_page(rig.view("alice", "/usage"))
    assert response.status_code == 200
    page = body(response)
    api = rig.economy.platform.usage.summary(rig.account("alice").id, "2026-03-01", "2026-03-14").to_json()
    assert {m["model"] for m in api["models"]} == {"digits", "digits-o", "digits-eur"}
    for m in api["models"]:
        row = cells(page, f'data-model="{m["model"]}"')
        assert row == [m["model"], m["unit_kind"], str(m["events"]), m["iu"], m["amount"], m["currency"]]
        assert f'<a href="/models/{m["model"]}">' in page
    assert cells(page, 'data-model="digits"')[2:5] == ["2", "4", "0.004"]  # not February's call, not bob's
    assert "2026-03-01 to 2026-03-14" in page
    # One chart of IU per day and, per currency, the cost per day and per model: SVG with their tables.
    for chart in ("usage-iu-day", "usage-cost-day-0", "usage-cost-model-0", "usage-cost-day-1", "usage-cost-model-1"):
        assert f'<svg class="chart" id="{chart}"' in page
        assert f'aria-labelledby="{chart}-title {chart}-desc"' in page
    assert "<title>2026-03-05, digits-o: 7 IU</title>" in page
    assert "Cost per day (EUR)" in page and "Cost per model (USD)" in page
    assert "<title>digits-o: 0.007 USD</title>" in page
    assert 'style="' not in page


async def test_usage_period_selector_and_its_refusals(rig: Rig) -> None:
    bill_alice(rig)
    view = rig.view("alice", "/usage", "since=2026-02-01&until=2026-02-28")
    page = body(await pages_account.usage_page(view))
    assert cells(page, 'data-model="digits"')[2:5] == ["1", "5", "0.005"]
    assert 'href="/usage?since=2026-02-01&amp;until=2026-02-28" aria-current="page"' in page  # "Last month"
    for query, words in [
        ("since=2026-03-10&until=2026-03-01", "since: 2026-03-10 is after until 2026-03-01"),
        ("since=2025-01-01&until=2026-03-01", "at most 92 days"),
        ("since=2026-02-30", "since: '2026-02-30' is not a date YYYY-MM-DD"),
        ("until=" + "9" * 100, "until: at most 64 characters"),
    ]:
        response = await pages_account.usage_page(rig.view("alice", "/usage", query))
        assert response.status_code == 400, query
        assert str(escape(words)) in body(response)


def stored_invoices(rig: Rig, name: str) -> list[str]:
    with rig.economy.platform.store.read() as uow:
        return [i.id for i in uow.ledger.invoices(rig.account(name).id)]


async def test_invoices_list_and_lines_and_another_accounts_invoice_is_not_found(rig: Rig) -> None:
    bill_alice(rig)
    page = body(await pages_account.invoices_page(rig.view("alice", "/invoices")))
    assert stored_invoices(rig, "alice") == []  # a page view recomputes this month's drafts, and stores nothing
    docs = rig.economy.platform.invoices.invoices(rig.account("alice").id)
    march_usd = next(d for d in docs if d.period == "2026-03" and d.currency == "USD")
    row = cells(page, f'data-invoice="{march_usd.id}"')
    assert row == [march_usd.id, "2026-03", "draft", str(march_usd.events), decimal_text(march_usd.total), "USD"]
    assert march_usd.events == 3  # alice's March calls in USD (two of digits, one of digits-o)
    # February has a billed call but no stored invoice: offered as a link to its month, after this month's rows.
    assert page.index('data-invoice="' + march_usd.id) < page.index('<a href="/invoices?period=2026-02">2026-02</a>')

    view = rig.view("alice", f"/invoices/{march_usd.id}", invoice_id=march_usd.id)
    page = body(await pages_account.invoice_page(view))
    assert f"Invoice {march_usd.id}" in page
    for line in march_usd.lines:
        assert html.escape(line.description) in page
    assert f'<td class="num invoice-total">{decimal_text(march_usd.total)}</td>' in page
    printable = await pages_account.invoice_print_page(view)
    policy = printable.headers["content-security-policy"]
    document = bytes(printable.body).decode()
    style = document[document.index("<style>") + len("<style>") : document.index("</style>")]
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives["style-src"] == f"'sha256-{digest}'"  # the hash of this very stylesheet, and nothing else
    assert directives["script-src"] == "'self'" and "unsafe-inline" not in policy

    bob = rig.view("bob", f"/invoices/{march_usd.id}", invoice_id=march_usd.id)
    with pytest.raises(NotFound):
        await pages_account.invoice_page(bob)
    with pytest.raises(NotFound):
        await pages_account.invoice_print_page(bob)
    with pytest.raises(NotFound):
        await pages_account.invoice_page(rig.view("alice", "/invoices/x", invoice_id="../../etc"))


async def test_invoices_of_a_past_month_are_drafted_on_view_but_never_stored(any_rig: Rig) -> None:
    rig = any_rig
    bill_alice(rig)
    alice = rig.account("alice").id
    page = body(await pages_account.invoices_page(rig.view("alice", "/invoices", "period=2026-02")))
    (february,) = rig.economy.platform.invoices.preview(alice, Period(2026, 2))
    assert cells(page, f'data-invoice="{february.id}"')[1:4] == ["2026-02", "draft", "1"]
    assert f'href="/invoices/{february.id}?period=2026-02"' in page
    assert stored_invoices(rig, "alice") == []
    # Not stored: found by its page in the month its link names, not in this month; never another account's.
    view = rig.view("alice", f"/invoices/{february.id}", "period=2026-02", invoice_id=february.id)
    assert "<dt>Period</dt><dd>2026-02</dd>" in body(await pages_account.invoice_page(view))
    with pytest.raises(NotFound):
        await pages_account.invoice_page(rig.view("alice", f"/invoices/{february.id}", invoice_id=february.id))
    with pytest.raises(NotFound):
        await pages_account.invoice_page(
            rig.view("bob", f"/invoices/{february.id}", "period=2026-02", invoice_id=february.id)
        )
    assert stored_invoices(rig, "alice") == []

    # Once stored (the CLI refreshes drafts), other months show as stored, a draft with the time it was refreshed.
    rig.economy.platform.invoices.invoices(alice)
    page = body(await pages_account.invoices_page(rig.view("alice", "/invoices")))
    assert cells(page, f'data-invoice="{february.id}"')[2].startswith("draft as of ")
    assert "?period=2026-02" not in page.split(f'data-invoice="{february.id}"')[1].split("</a>")[0]
    refused = await pages_account.invoices_page(rig.view("alice", "/invoices", "period=2026-04"))
    assert refused.status_code == 400 and "period: 2026-04 has not started" in body(refused)


async def test_statements_show_a_providers_own_share_and_an_operator_picks_one_or_all(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    bill_alice(rig)
    provider, other = rig.account(PROVIDER), rig.account(OTHER_PROVIDER)
    listed: list[int] = []
    accounts_list = rig.economy.platform.accounts.list
    monkeypatch.setattr(rig.economy.platform.accounts, "list", lambda: listed.append(1) or accounts_list())
    page = body(await pages_operator.statements_page(rig.view(PROVIDER, "/statements", "period=2026-03")))
    statements = rig.economy.platform.ledger.statements(Period(2026, 3), provider.id)
    assert len(statements) == 2  # USD and EUR
    for st in statements:
        for line in st.lines:
            assert f'<td class="num">{line["provider_amount"]}</td>' in page
    assert "digits-o" not in page  # the other provider's model
    assert '<select name="account">' not in page  # a provider picks no one else
    assert listed == []  # and its page names only itself: the accounts are not listed for it

    ops = rig.view("ops", "/statements", f"period=2026-03&account={other.id}")
    page = body(await pages_operator.statements_page(ops))
    assert "digits-o" in page and f"{OTHER_PROVIDER}, 2026-03, USD" in page
    assert f"{PROVIDER}, 2026-03" not in page
    assert f'<option value="{other.id}" selected>' in page
    page = body(await pages_operator.statements_page(rig.view("ops", "/statements", "period=2026-03")))
    assert f"{OTHER_PROVIDER}, 2026-03, USD" in page and f"{PROVIDER}, 2026-03, EUR" in page

    refused = await pages_operator.statements_page(rig.view("ops", "/statements", "account=acct_nobody"))
    assert refused.status_code == 400 and "no provider account" in body(refused)
    refused = await pages_operator.statements_page(rig.view(PROVIDER, "/statements", "period=" + "2" * 80))
    assert refused.status_code == 400 and "period: at most 64 characters" in body(refused)
    refused = await pages_operator.statements_page(rig.view(PROVIDER, "/statements", "period=2026-13"))
    assert refused.status_code == 400 and "month 13 is not between 01 and 12" in body(refused)


async def test_statements_from_sums_per_price_equal_the_statements_from_every_event(any_rig: Rig) -> None:
    """The page's statements (summed in the store per model, unit and amount, no catch-up) are the ledger's."""
    rig = any_rig
    bill_alice(rig)
    e = rig.economy
    e.append(
        [
            e.event("bob", "digits", q, "2026-03-0" + str(1 + q % 9), price=price)
            for q, price in [(1, "0.0010"), (2, "0.0010"), (2, "0.0010"), (7, "0.0030"), (3, "0.0007")]
        ]
        + [e.event("bob", "digits-eur", 5, "2026-03-04", price="0.0020", currency="EUR")]
    )
    e.platform.metering.catch_up()
    ledger = e.platform.ledger
    for provider_id in (None, rig.account(PROVIDER).id, rig.account(OTHER_PROVIDER).id):
        for period in (Period(2026, 3), Period(2026, 2), Period(2026, 1)):
            assert ledger.applied_statements(period, provider_id) == ledger.statements(period, provider_id)
    assert any(st.events > 3 for st in ledger.applied_statements(Period(2026, 3)))
    e.append([e.event("bob", "digits", 1, "2026-03-10")])  # in the log, not applied yet: not on the page
    before = ledger.applied_statements(Period(2026, 3), rig.account(PROVIDER).id)
    page = body(await pages_operator.statements_page(rig.view(PROVIDER, "/statements", "period=2026-03")))
    assert ledger.applied_statements(Period(2026, 3), rig.account(PROVIDER).id) == before
    assert [
        int(n) for n in re.findall(r'<span class="stat-label">Calls</span><span class="stat-value">(\d+)<', page)
    ] == [st.events for st in before]


async def test_payouts_list_a_providers_own_and_an_operator_sees_every_one(rig: Rig) -> None:
    bill_alice(rig)
    platform = rig.economy.platform
    made = platform.ledger.run_payouts(Period(2026, 3))
    assert {p.provider_account_id for p in made} == {rig.account(PROVIDER).id, rig.account(OTHER_PROVIDER).id}
    own = [p for p in made if p.provider_account_id == rig.account(PROVIDER).id]
    page = body(await pages_operator.payouts_page(rig.view(PROVIDER, "/payouts")))
    assert all(p.id in page for p in own)
    assert all(p.id not in page for p in made if p not in own)
    page = body(await pages_operator.payouts_page(rig.view("ops", "/payouts", "period=2026-03")))
    assert all(p.id in page for p in made)
    page = body(await pages_operator.payouts_page(rig.view("ops", "/payouts", "period=2026-02")))
    assert "No payouts yet." in page


async def test_payouts_totals_say_they_are_of_the_rows_shown_when_more_exist(
    any_rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = any_rig
    bill_alice(rig)
    made = rig.economy.platform.ledger.run_payouts(Period(2026, 3))
    newest = sorted(made, key=lambda p: (p.created_at, p.id), reverse=True)
    assert len(newest) == 2  # each provider's USD (the EUR share rounds to nothing)

    def paid(payouts: list[Payout]) -> dict[str, str]:
        currencies = sorted({p.currency for p in payouts})
        return {c: decimal_text(sum_exact(p.amount for p in payouts if p.currency == c)) for c in currencies}

    page = body(await pages_operator.payouts_page(rig.view("ops", "/payouts")))
    assert dict(re.findall(r'data-paid-currency="(\w+)">([^<]+)<', page)) == paid(newest)
    assert "newest payouts shown" not in page and "older ones" not in page
    monkeypatch.setattr(pages_operator, "PAYOUTS_SHOWN_MAX", 1)
    page = body(await pages_operator.payouts_page(rig.view("ops", "/payouts")))
    assert dict(re.findall(r'data-paid-currency="(\w+)">([^<]+)<', page)) == paid(newest[:1])
    assert paid(newest[:1]) != paid(newest)  # so the figure shown is the one of the row shown
    assert "Paid (USD), the 1 newest payouts shown" in page and "not counting 1 older ones" in page
    assert newest[0].id in page and newest[1].id not in page
    assert "1 older payouts are not listed" in page
    # A provider's own are filtered in the store: the newest of its own, not of everyone's.
    (other,) = [p for p in made if p.provider_account_id == rig.account(OTHER_PROVIDER).id]
    page = body(await pages_operator.payouts_page(rig.view(OTHER_PROVIDER, "/payouts")))
    assert other.id in page and "older ones" not in page and "newest payouts shown" not in page


@dataclass
class Walks:
    """Counts of the whole-log walks (``AuditService.verify`` and ``verify_trees``) a page asked for."""

    chain: int = 0
    trees: int = 0


@pytest.fixture()
def walks(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> Walks:
    audit, counted = rig.economy.platform.audit, Walks()
    verify, verify_trees = audit.verify, audit.verify_trees

    def chain() -> Any:
        counted.chain += 1
        return verify()

    def trees() -> Any:
        counted.trees += 1
        return verify_trees()

    monkeypatch.setattr(audit, "verify", chain)
    monkeypatch.setattr(audit, "verify_trees", trees)
    return counted


async def press_verify(rig: Rig) -> None:
    """The page's button (the CSRF token is checked by ``dashboard/app.py`` before the handler)."""
    answer = await pages_operator.audit_page(rig.view("ops", "/audit", method="POST"))
    assert answer.status_code == 303 and answer.headers["location"] == "/audit"


async def test_audit_views_walk_nothing_and_the_button_verifies_everything(rig: Rig, walks: Walks) -> None:
    platform = rig.economy.platform
    head = platform.audit.head()
    assert head is not None and head.seq > 5
    page = body(await pages_operator.audit_page(rig.view("ops", "/audit", "size=3")))
    assert (walks.chain, walks.trees) == (0, 0)  # a view reads a few rows: no walk of the chain or of a tree
    assert "No full verification has run since this gateway started." in page
    assert '<input type="hidden" name="csrf_token" value="csrf">' in page and "modelmarket audit verify" in page
    assert [int(s) for s in re.findall(r'id="seq-(\d+)"', page)] == [head.seq, head.seq - 1, head.seq - 2]
    assert 'href="/audit?page=2&amp;size=3"' in page and "Newer" not in page
    # The signed checkpoints, checked cheaply: signature valid, the copy kept under keys/ the same.
    facts = {f.tree: f for f in platform.audit.checkpoint_facts()}
    assert facts["audit"].checkpoint is not None and facts["audit"].checkpoint.size == head.seq
    for tree in ("audit", "usage"):
        row = cells(page, f'data-tree="{tree}"')
        assert row[0] == tree and row[2] == str(facts[tree].leaves)
    audit_row = cells(page, 'data-tree="audit"')
    assert audit_row[1] == "consistent" and audit_row[3] == str(head.seq)
    assert audit_row[-2:] == ["valid", f"matchessize {head.seq}"]

    await press_verify(rig)
    assert (walks.chain, walks.trees) == (1, 1)
    page = body(await pages_operator.audit_page(rig.view("ops", "/audit", "size=3")))
    assert (walks.chain, walks.trees) == (1, 1)  # the result is kept, not recomputed
    assert f"<strong>Chain verified</strong>: {head.seq} records" in page
    assert f"it covered {head.seq} records" in page and "Nothing was added since." in page
    assert '<li data-tree="audit"><span class="badge badge-ok">verified</span>' in page

    platform.accounts.create("carol", "consumer")  # one more record: the result says what it does not cover
    page = body(await pages_operator.audit_page(rig.view("ops", "/audit")))
    assert "Added since, not covered: 1 record, 1 audit tree leaf." in page

    page_of_2 = "size=200"  # every record on one page
    assert head.seq + 1 <= 200
    with platform.store.engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == 2).values(actor="operator:mallory"))
    page = body(await pages_operator.audit_page(rig.view("ops", "/audit", page_of_2)))
    assert "<strong>Chain verified</strong>" in page  # the last run's result, with its time: not rerun by a view
    await press_verify(rig)
    page = body(await pages_operator.audit_page(rig.view("ops", "/audit", page_of_2)))
    assert (walks.chain, walks.trees) == (2, 2)
    assert "<strong>Chain broken at record 2</strong>" in page
    assert '<tr class="row-broken" id="seq-2">' in page
    assert '<li data-tree="audit"><span class="badge badge-bad">broken</span>' in page
    with platform.store.engine.begin() as conn:  # a payload edited into something that is not JSON
        conn.execute(update(audit_log).where(audit_log.c.seq == 3).values(payload_json="not json"))
    response = await pages_operator.audit_page(rig.view("ops", "/audit", page_of_2))
    assert response.status_code == 200
    assert "the records of this page cannot be read" in body(response)
    refused = await pages_operator.audit_page(rig.view("ops", "/audit", "size=100000"))
    assert refused.status_code == 400 and "size: a whole number from 1 to 200" in body(refused)
    assert (walks.chain, walks.trees) == (2, 2)


async def test_audit_runs_one_full_verification_at_a_time_and_says_it_runs(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = rig.economy.platform.audit
    entered, release = threading.Event(), threading.Event()
    verify, calls = audit.verify, []

    def slow_verify() -> Any:
        calls.append(threading.current_thread().name)
        entered.set()
        assert release.wait(60), "the test never released the verification"
        return verify()

    monkeypatch.setattr(audit, "verify", slow_verify)
    first = asyncio.create_task(press_verify(rig))
    assert await asyncio.to_thread(entered.wait, 60)
    page = body(await pages_operator.audit_page(rig.view("ops", "/audit")))
    assert "<strong>Full verification running</strong> since 2026-03-14T18:00:00" in page
    assert '<meta http-equiv="refresh" content="5">' in page and "disabled>Verify everything now" in page
    await press_verify(rig)  # a second press while one runs starts nothing
    assert calls == ["audit-verify-all"]  # in a thread of its own, not the pool the gateway's calls use
    release.set()
    await first
    page = body(await pages_operator.audit_page(rig.view("ops", "/audit")))
    assert "<strong>Chain verified</strong>" in page and "running" not in page and "http-equiv" not in page
    assert len(calls) == 1


def test_checkpoint_facts_without_a_walk_name_a_cut_tail_a_forged_signature_and_another_root() -> None:
    key = Ed25519PrivateKey.generate()
    other = Ed25519PrivateKey.generate()

    def signed(size: int, root: bytes, by: Ed25519PrivateKey = key) -> Checkpoint:
        at = "2026-03-14T18:00:00.000000+00:00"
        body = checkpoint_body("usage", size, root, at)
        return Checkpoint("usage", size, root, at, key_id_of(by.public_key()), by.sign(body))

    public = key.public_key()
    same = checkpoint_facts("usage", 10, signed(10, b"a" * 32), signed(10, b"a" * 32), None, public)
    assert same.ok and (same.signature, same.kept_state) == ("valid", "matches")
    ahead = checkpoint_facts("usage", 12, signed(12, b"b" * 32), signed(10, b"a" * 32), None, public)
    assert ahead.ok and ahead.kept_state == "store ahead"
    cut = checkpoint_facts("usage", 8, signed(8, b"c" * 32), signed(10, b"a" * 32), None, public)
    assert cut.kept_state == "store behind" and "a tail was cut off" in cut.problems[0]
    rewritten = checkpoint_facts("usage", 10, signed(10, b"d" * 32), signed(10, b"a" * 32), None, public)
    assert rewritten.kept_state == "other root" and not rewritten.ok
    forged = checkpoint_facts("usage", 10, signed(10, b"a" * 32, other), None, None, public)
    assert forged.signature == "invalid" and "not signed by this home's key" in forged.problems[0]
    removed = checkpoint_facts("usage", 10, None, None, "the kept copy cannot be read", public)
    assert removed.kept_state == "unreadable" and len(removed.problems) == 2
    beyond = checkpoint_facts("usage", 4, signed(10, b"a" * 32), None, None, public)
    assert "covers more than the 4 leaves stored" in beyond.problems[0]


async def test_runners_show_readiness_and_each_versions_health(rig: Rig) -> None:
    page = body(await pages_operator.runners_page(rig.view("ops", "/runners")))
    assert "<strong>Gateway ready</strong>" in page and "No runners yet" in page
    snapshot = {
        "runners": [
            {
                "model": "digits",
                "version": "1.0.0",
                "runtime": "onnx",
                "profile": "process",
                "limits": {"memory_mb": 512, "pids": 64, "cpus": None, "timeout_s": 30},
                "replicas": {"min": 1, "max": 2, "running": 1},
                "state": "ready",
                "queue_depth": 3,
                "calls": 12,
                "last_error": "<b>boom</b>",
                "processes": [
                    {
                        "replica": 0,
                        "pid": 4242,
                        "state": "running",
                        "outstanding": 3,
                        "rss_bytes": 52428800,
                        "restarts": 2,
                    }
                ],
            }
        ]
    }
    (row,) = pages_operator.runner_rows(snapshot)
    assert (row.state, row.health, row.replicas, row.restarts, row.rss) == ("ready", "warn", "1 (1-2)", 2, "50.0 MiB")
    assert row.limits == "memory 512 MB, pids 64, timeout 30 s"
    rig.parts.supervisor.snapshot = lambda: snapshot  # the supervisor's view of a running gateway
    rig.parts.dataplane.ready = lambda: Readiness(False, ("digits@1.0.0: restarting",))
    page = body(await pages_operator.runners_page(rig.view("ops", "/runners")))
    assert "<strong>Gateway not ready</strong>" in page and "<li>digits@1.0.0: restarting</li>" in page
    assert "replica 0, pid 4242" in page and "&lt;b&gt;boom&lt;/b&gt;" in page


# -- a real gateway over HTTP, signed in through the form -----------------------------------------------------------


@dataclass
class Served:
    gateway: Gateway
    keys: dict[str, str]
    """Account name -> API key."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, demo_dir: Path) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("dash") / "home"
    platform = bootstrap(Settings(home=home), runtimes=PluginRuntimes())
    keys = {}
    try:
        for name, role in [
            ("demo-provider", "provider"),
            ("alice", "consumer"),
            ("bob", "consumer"),
            ("ops", "operator"),
        ]:
            platform.accounts.create(name, role)
            keys[name] = platform.accounts.issue_key(name).secret
        platform.registry.publish(demo_dir / "digits")
    finally:
        platform.close()
    gateway = start_gateway(Cli(home), models=(), extra_args=("--no-preload",))
    try:
        yield Served(gateway, keys)
    finally:
        stop_gateway(gateway)


@contextmanager
def signed_in(served: Served, name: str) -> Iterator[httpx.Client]:
    """A browser-like client signed in with ``name``'s key through the sign-in form."""
    with httpx.Client(base_url=served.gateway.url, timeout=60) as client:
        yield sign_in(client, served.keys[name])


def sign_in(client: httpx.Client, key: str) -> httpx.Client:
    """``client`` after sending the sign-in form with ``key``, as a browser would."""
    form = client.get("/signin")
    assert form.status_code == 200
    token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"', form.text)
    assert token, "the sign-in form carries a CSRF token"
    answer = client.post("/signin", data={"key": key, "csrf_token": token[1] or token[2], "next": "/usage"})
    assert answer.status_code == 303 and answer.headers["location"] == "/usage"
    assert "mm_session" in client.cookies
    return client


def test_over_http_usage_after_billed_calls_equals_the_usage_api_and_invoices_stay_private(served: Served) -> None:
    row = [float(i % 17) for i in range(64)]
    call = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": row}]}
    auth = {"Authorization": f"Bearer {served.keys['alice']}"}
    with httpx.Client(base_url=served.gateway.url, timeout=120) as api:
        for _ in range(3):
            assert api.post("/v2/models/digits/infer", json=call, headers=auth).status_code == 200
        usage_api = api.get("/api/usage", headers=auth).json()
    (digits,) = usage_api["models"]
    assert digits["events"] == 3

    with signed_in(served, "alice") as alice:
        page = alice.get("/usage")
        assert page.status_code == 200
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert cells(page.text, 'data-model="digits"') == [
            "digits",
            digits["unit_kind"],
            "3",
            digits["iu"],
            digits["amount"],
            digits["currency"],
        ]
        assert f'data-total-currency="{usage_api["currency"]}">{usage_api["total_amount"]}<' in page.text
        listing = alice.get("/invoices")
        assert listing.status_code == 200
        invoice_id = re.search(r'data-invoice="(inv_[0-9a-f]+)"', listing.text)
        assert invoice_id
        invoice = alice.get(f"/invoices/{invoice_id[1]}")
        assert invoice.status_code == 200 and "digits" in invoice.text
        assert alice.get("/audit").status_code == 403
        token = re.search(r'name="csrf_token" value="([^"]+)"', alice.get("/usage").text)
        assert token  # her own, valid token: the role still refuses the button
        assert alice.post("/audit", data={"csrf_token": token[1]}).status_code == 403
        assert alice.get("/statements").status_code == 403

    with signed_in(served, "bob") as bob:
        assert bob.get(f"/invoices/{invoice_id[1]}").status_code == 404
        assert bob.get(f"/invoices/{invoice_id[1]}/print").status_code == 404
        assert bob.get("/audit").status_code == 403
        assert bob.get("/runners").status_code == 403
        mine = bob.get("/usage")
        assert mine.status_code == 200 and 'data-model="digits"' not in mine.text


def test_over_http_operator_pages_show_the_runner_and_the_verified_chain(served: Served) -> None:
    auth = {"Authorization": f"Bearer {served.keys['bob']}"}
    row = [float(i % 5) for i in range(64)]
    call = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": row}]}
    with httpx.Client(base_url=served.gateway.url, timeout=120) as api:
        assert api.post("/v2/models/digits/infer", json=call, headers=auth).status_code == 200
    with signed_in(served, "ops") as ops:
        runners = ops.get("/runners")
        assert runners.status_code == 200
        assert '<tr data-runner="digits@' in runners.text
        assert re.search(r"replica 0, pid \d+", runners.text)
        audit = ops.get("/audit")
        assert audit.status_code == 200 and "No full verification has run" in audit.text
        assert ops.post("/audit", data={}).status_code == 403  # the form's CSRF token is required
        token = re.search(r'name="csrf_token" value="([^"]+)"', audit.text)
        assert token
        pressed = ops.post("/audit", data={"csrf_token": token[1]})
        assert pressed.status_code == 303 and pressed.headers["location"] == "/audit"
        audit = ops.get("/audit")
        assert "<strong>Chain verified</strong>" in audit.text and 'badge-ok">verified' in audit.text
        assert ops.get("/statements").status_code == 200
    with signed_in(served, "demo-provider") as provider:
        statements = provider.get("/statements")
        assert statements.status_code == 200 and '<a href="/models/digits">digits</a>' in statements.text
        assert provider.get("/runners").status_code == 403
