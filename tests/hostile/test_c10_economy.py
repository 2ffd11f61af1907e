"""10. The economy under hostile input: invoices of other accounts, malformed periods and ids, budgets and daily
quotas that must hold exactly under concurrency, refused calls that must bill nothing, and plan files built to
expand or to confuse."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import httpx
import pytest
from tests.hostile.conftest import CACHE_REFRESH_S, Consumer, Market
from tests.hostile.support import assert_error_response, digits_body

from modelmarket.billing.plans import MAX_PLANS_FILE_BYTES
from modelmarket.core.errors import InvalidInput
from modelmarket.metering.units import UnitKind

PICKED_UP_S = CACHE_REFRESH_S + 2.0
"""The gateway reloads plans and limits every MODELMARKET_CACHE_REFRESH_S (1 s here)."""


def _infer(market: Market, who: Consumer, images: int = 1) -> httpx.Response:
    return httpx.post(f"{market.url}/v2/models/digits/infer", json=digits_body(images), headers=who.auth, timeout=30)


def _wait_events(market: Market, who: Consumer, expected: int) -> int:
    deadline = time.monotonic() + 5
    while market.events(who) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a refused call that was billed anyway would show by now
    return market.events(who)


def test_invoices_need_a_key_and_show_only_the_callers_own(market: Market) -> None:
    owner, other = market.consumer("inv-owner"), market.consumer("inv-other")
    assert _infer(market, owner).status_code == 200
    [invoice] = httpx.get(f"{market.url}/api/invoices", headers=owner.auth, timeout=30).json()["invoices"]
    assert_error_response(httpx.get(f"{market.url}/api/invoices", timeout=10), 401, "API key")
    r = httpx.get(f"{market.url}/api/invoices/{invoice['id']}", headers=other.auth, timeout=10)
    assert_error_response(r, 404, invoice["id"])
    assert httpx.get(f"{market.url}/api/invoices", headers=other.auth, timeout=30).json()["invoices"] == []


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/api/invoices?period=2026-13", 400, ("period", "month")),
        ("/api/invoices?period=../../etc", 400, ("period",)),
        ("/api/invoices?period=" + "9" * 5000, 400, ("period",)),
        ("/api/invoices/inv_does_not_exist", 404, ("invoice",)),
        ("/api/invoices/" + "x" * 3000, 404, ("invoice", "x" * 40)),
    ],
)
def test_malformed_periods_and_ids_are_named(market: Market, path: str, status: int, words: tuple[str, ...]) -> None:
    who = market.consumer("inv-probe")
    r = httpx.get(f"{market.url}{path}", headers=who.auth, timeout=10)
    message = assert_error_response(r, status, *words)
    assert len(message) < 500, "an error must not echo a huge input back"


def test_a_daily_quota_holds_exactly_under_concurrency_and_refusals_bill_nothing(market: Market) -> None:
    who = market.consumer("quota")
    market.admin.plans.set_limits(
        who.account_id, None, rpm=None, iu_per_day={UnitKind.IMAGE: Decimal(7)}, budget=None, actor="hostile-tests"
    )
    time.sleep(PICKED_UP_S)

    async def flood() -> list[int]:
        async with httpx.AsyncClient(base_url=market.url, headers=who.auth, timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post("/v2/models/digits/infer", json=digits_body(1)) for _ in range(40))
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(flood())
    assert statuses.count(200) == 7 and statuses.count(402) == 33, statuses
    r = _infer(market, who)
    body = r.json()
    assert (r.status_code, body["limit"], body["unit_kind"], body["allowed"]) == (402, "iu_per_day", "image", "7")
    assert _wait_events(market, who, 7) == 7


def test_a_budget_is_never_overspent_by_concurrent_calls(market: Market) -> None:
    """digits costs 0.0010 per image: a budget of 0.0050 buys exactly five images, however the calls race."""
    who = market.consumer("budget")
    market.admin.plans.set_limits(
        who.account_id, None, rpm=None, iu_per_day=None, budget=Decimal("0.0050"), actor="hostile-tests"
    )
    time.sleep(PICKED_UP_S)

    async def flood() -> list[int]:
        async with httpx.AsyncClient(base_url=market.url, headers=who.auth, timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post("/v2/models/digits/infer", json=digits_body(1)) for _ in range(32))
            )
        return [a.status_code for a in answers]

    statuses = asyncio.run(flood())
    assert statuses.count(200) == 5 and statuses.count(402) == 27, statuses
    refused = _infer(market, who).json()
    assert refused["limit"] == "budget" and refused["currency"] == "USD"
    assert _wait_events(market, who, 5) == 5
    usage = market.usage(who)
    assert Decimal(usage["models"][0]["amount"]) <= Decimal("0.0050")


def test_a_revoked_limit_source_does_not_block_the_hot_path(market: Market) -> None:
    """An account with no plan and no limits takes the fast path: many calls, all billed, none refused."""
    who = market.consumer("unlimited")
    statuses = [_infer(market, who).status_code for _ in range(20)]
    assert statuses == [200] * 20
    assert _wait_events(market, who, 20) == 20


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("x: &a [1]\nplans: *a\n", ("aliases",)),
        ("plans:\n  - {name: a, kind: payg, currency: USD, currency: EUR}\n", ("twice",)),
        ("plans:\n  - {name: a, kind: free, currency: USD, grant: {image: 1e309}}\n", ("grant",)),
        ("plans:\n  - {name: a, kind: subscription, currency: USD, fee: 20.0}\n", ("fee", "float")),
        ("plans:\n  - {name: a, kind: payg, currency: XXX}\n", ("currency",)),
        ("plans:\n  - {name: ../a, kind: payg, currency: USD}\n", ("name",)),
        ("plans:\n  - {name: a, kind: free, currency: USD, fee: '1.00'}\n", ("fee", "free")),
        ("plans:\n  - {name: a, kind: barter, currency: USD}\n", ("kind",)),
        ("plans: []\n", ("plans",)),
        ("- just a list\n", ("plans",)),
        ("plans:\n" + "  - {name: p, kind: payg, currency: USD}\n" * 2, ("twice",)),
    ],
)
def test_hostile_plan_files_are_refused_naming_the_problem(market: Market, text: str, words: tuple[str, ...]) -> None:
    before = market.admin.plans.plans()
    with pytest.raises(InvalidInput) as refused:
        market.admin.plans.apply(text, actor="hostile-tests")
    for word in words:
        assert word in refused.value.message, refused.value.message
    assert market.admin.plans.plans() == before, "a refused plans file changed nothing"


def test_an_oversized_plans_file_is_refused_before_it_is_parsed(market: Market) -> None:
    text = "plans:\n" + "#" * MAX_PLANS_FILE_BYTES
    with pytest.raises(InvalidInput, match="larger than"):
        market.admin.plans.apply(text, actor="hostile-tests")


def test_quota_counters_survive_a_gateway_kill(market: Market) -> None:
    """The limiter's counters are rebuilt from usage when the gateway starts: a SIGKILL does not reset a quota."""
    who = market.consumer("restart-quota")
    market.admin.plans.set_limits(
        who.account_id, None, rpm=None, iu_per_day={UnitKind.IMAGE: Decimal(5)}, budget=None, actor="hostile-tests"
    )
    time.sleep(PICKED_UP_S)
    assert [_infer(market, who).status_code for _ in range(3)] == [200, 200, 200]
    market.kill_and_restart()
    assert [_infer(market, who).status_code for _ in range(2)] == [200, 200]
    refused = _infer(market, who)
    assert refused.status_code == 402 and refused.json()["used"] == "5", refused.text
    assert _wait_events(market, who, 5) == 5


def test_an_invoice_for_a_month_that_has_not_started_is_refused_and_nothing_is_stored(market: Market) -> None:
    who = market.consumer("inv-future")
    assert _infer(market, who).status_code == 200
    r = httpx.get(f"{market.url}/api/invoices?period=9999-12", headers=who.auth, timeout=30)
    message = assert_error_response(r, 400, "period 9999-12 has not started")
    assert len(message) < 500
    with market.admin.store.read() as uow:
        assert [s.period for s in uow.ledger.invoices(who.account_id) if s.period == "9999-12"] == []
    listed = httpx.get(f"{market.url}/api/invoices", headers=who.auth, timeout=30).json()["invoices"]
    assert [i["period"] for i in listed if i["period"] > "9998"] == []
