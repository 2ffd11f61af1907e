"""Limits and quotas enforced by a real gateway: a free grant is a hard cap (402), a per-key rate limit answers 429
with Retry-After under 32 concurrent clients, and a refused call is never billed."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from pathlib import Path

import httpx
from tests.e2e.conftest import Cli, Gateway, start_gateway, stop_gateway

ROW = [float(i % 17) for i in range(64)]
ONE_IMAGE = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": ROW}]}
REFRESH_WAIT_S = 3.0
"""The session gateway reloads plans and limits every MODELMARKET_CACHE_REFRESH_S (2 s): wait a little more."""


def _account_id(gateway: Gateway, name: str) -> str:
    return str(next(a["id"] for a in gateway.cli.json("accounts", "list") if a["name"] == name))


def _usage_events(gateway: Gateway, key: str) -> int:
    doc = httpx.get(f"{gateway.url}/api/usage", headers={"Authorization": f"Bearer {key}"}).json()
    return int(doc["total_events"])


def test_a_free_grant_answers_n_calls_then_402_naming_the_grant(gateway: Gateway, tmp_path: Path) -> None:
    cli = gateway.cli
    plans = tmp_path / "plans.yaml"
    plans.write_text("plans:\n  - {name: tiny-free, kind: free, currency: USD, grant: {image: 3}}\n")
    cli.run("plans", "apply", str(plans))
    key = cli.new_consumer("grant-holder")
    cli.run("subscribe", "grant-holder", "tiny-free")
    time.sleep(REFRESH_WAIT_S)
    auth = {"Authorization": f"Bearer {key}"}
    statuses = [
        httpx.post(f"{gateway.url}/v2/models/digits/infer", json=ONE_IMAGE, headers=auth).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 200]
    refused = httpx.post(f"{gateway.url}/v2/models/digits/infer", json=ONE_IMAGE, headers=auth)
    assert refused.status_code == 402, refused.text
    body = refused.json()
    assert body["limit"] == "grant" and body["unit_kind"] == "image", body
    assert "grant" in body["error"]
    two = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": ROW * 2}]}
    assert httpx.post(f"{gateway.url}/v2/models/digits/infer", json=two, headers=auth).status_code == 402
    # Only the three answered calls were metered; the invoice shows them granted at 0.00.
    deadline = time.monotonic() + 5
    while _usage_events(gateway, key) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _usage_events(gateway, key) == 3
    invoices = httpx.get(f"{gateway.url}/api/invoices", headers=auth).json()["invoices"]
    assert len(invoices) == 1
    invoice = invoices[0]
    assert invoice["total"] == "0.00"
    [granted] = [line for line in invoice["lines"] if line["model"] == "digits"]
    assert (granted["type"], granted["events"], granted["quantity_iu"], granted["amount"]) == (
        "granted",
        3,
        "3",
        "0.00",
    )


def test_a_key_rate_limit_holds_under_32_concurrent_clients(gateway: Gateway) -> None:
    cli = gateway.cli
    key = cli.new_consumer("rate-limited")
    [stored] = cli.json("keys", "list", "rate-limited")
    limit = 5
    cli.run("limits", "set", "rate-limited", "--key", stored["key_id"], "--rpm", str(limit))
    time.sleep(REFRESH_WAIT_S)
    auth = {"Authorization": f"Bearer {key}"}

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.url, headers=auth, timeout=30) as client:
            return await asyncio.gather(
                *(client.post("/v2/models/digits/infer", json=ONE_IMAGE) for _ in range(32 * 2))
            )

    answers = asyncio.run(fire())
    ok = [a for a in answers if a.status_code == 200]
    limited = [a for a in answers if a.status_code == 429]
    # The documented overshoot of one gateway is 0: exactly `limit` calls pass in the minute.
    assert len(ok) == limit, [a.status_code for a in answers]
    assert len(ok) + len(limited) == len(answers)
    for answer in limited:
        retry_after = int(answer.headers["retry-after"])
        assert 1 <= retry_after <= 60
        body = answer.json()
        assert (body["limit"], body["scope"], body["allowed"]) == ("rpm", "key", limit), body
    deadline = time.monotonic() + 5
    while _usage_events(gateway, key) < limit and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # anything refused and still billed would show up by now
    assert _usage_events(gateway, key) == limit
    # Another key of the same account is not limited by the first key's rate.
    other = str(cli.json("keys", "create", "rate-limited")["key"])
    time.sleep(REFRESH_WAIT_S)
    answer = httpx.post(
        f"{gateway.url}/v2/models/digits/infer", json=ONE_IMAGE, headers={"Authorization": f"Bearer {other}"}
    )
    assert answer.status_code == 200


def test_another_accounts_invoice_is_not_found(gateway: Gateway) -> None:
    cli = gateway.cli
    mine = cli.new_consumer("invoice-owner")
    theirs = cli.new_consumer("invoice-snoop")
    auth = {"Authorization": f"Bearer {mine}"}
    assert httpx.post(f"{gateway.url}/v2/models/digits/infer", json=ONE_IMAGE, headers=auth).status_code == 200
    [invoice] = httpx.get(f"{gateway.url}/api/invoices", headers=auth).json()["invoices"]
    own = httpx.get(f"{gateway.url}/api/invoices/{invoice['id']}", headers=auth)
    assert own.status_code == 200 and own.json()["id"] == invoice["id"]
    snoop = httpx.get(f"{gateway.url}/api/invoices/{invoice['id']}", headers={"Authorization": f"Bearer {theirs}"})
    assert snoop.status_code == 404
    assert httpx.get(f"{gateway.url}/api/invoices/{invoice['id']}").status_code == 401


def test_a_list_price_set_for_now_is_shown_by_the_catalogue_and_stamped_on_calls(digits_cli: Cli) -> None:
    """`prices set` takes effect within the refresh bound: /api/models shows it, and the next call is billed at it
    (never retroactively: the call made before it keeps the old price)."""
    cli = digits_cli
    key = cli.new_consumer("price-watcher")
    gateway = start_gateway(cli, models=("digits",))
    try:
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{gateway.url}/v2/models/digits/infer", json=ONE_IMAGE, headers=auth).status_code == 200
        before = httpx.get(f"{gateway.url}/api/models/digits").json()
        assert before["price_now"] == {"price_per_iu": "0.001", "factor": "1", "list_price": None, "record": 0}
        cli.run("prices", "set", "digits", "0.0025")
        time.sleep(REFRESH_WAIT_S)
        after = httpx.get(f"{gateway.url}/api/models/digits").json()
        assert after["price_now"]["price_per_iu"] == "0.0025" and after["price_now"]["list_price"] == "0.0025"
        assert after["pricing"]["price_per_iu"] == "0.0010"  # the manifest's own price is unchanged
        assert httpx.post(f"{gateway.url}/v2/models/digits/infer", json=ONE_IMAGE, headers=auth).status_code == 200
        deadline = time.monotonic() + 5
        while _usage_events(gateway, key) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        usage = httpx.get(f"{gateway.url}/api/usage", headers=auth).json()
        assert Decimal(usage["total_amount"]) == Decimal("0.0010") + Decimal("0.0025")
        history = cli.json("prices", "history", "digits")
        assert [r["source"] for r in history["records"]] == ["list"]
    finally:
        stop_gateway(gateway)
