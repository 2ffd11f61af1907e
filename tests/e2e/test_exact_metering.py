"""N successful and M failed calls: usage shows exactly N events and the invoice is N x price to the cent."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_EVEN, Decimal

import httpx
from tests.e2e.conftest import COLD_START_S, Gateway, billing_period_for_test

from engines import log_payloads


def _log_events_for(gateway: Gateway, account_id: str) -> int:
    return sum(1 for payload in log_payloads(gateway.cli.home) if json.loads(payload)["subject"] == account_id)


def test_only_successful_calls_are_metered_and_billed(gateway: Gateway) -> None:
    period = billing_period_for_test()  # every call below falls in this month
    cli = gateway.cli
    key = cli.new_consumer("counter")
    account_id = next(a["id"] for a in cli.json("accounts", "list") if a["name"] == "counter")
    price = Decimal(cli.json("models", "show", "digits")["manifest"]["pricing"]["price_per_iu"])
    row = [float(i % 17) for i in range(64)]
    good = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": row}]}
    auth = {"Authorization": f"Bearer {key}"}
    failures = [
        # (description, path, body, headers, expected status, words the error must contain)
        (
            "bad shape",
            "/v2/models/digits/infer",
            {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 63], "data": row[:63]}]},
            auth,
            400,
            "shape",
        ),
        (
            "wrong datatype",
            "/v2/models/digits/infer",
            {"inputs": [{"name": "pixels", "datatype": "INT64", "shape": [1, 64], "data": [1] * 64}]},
            auth,
            400,
            "datatype",
        ),
        (
            "data/shape mismatch",
            "/v2/models/digits/infer",
            {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 64], "data": row}]},
            auth,
            400,
            "elements",
        ),
        (
            "unknown input",
            "/v2/models/digits/infer",
            {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 64], "data": row}]},
            auth,
            400,
            "no input named",
        ),
        (
            "unknown output",
            "/v2/models/digits/infer",
            {**good, "outputs": [{"name": "nope"}]},
            auth,
            400,
            "no output named 'nope'",
        ),
        (
            "empty batch",
            "/v2/models/digits/infer",
            {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [0, 64], "data": []}]},
            auth,
            400,
            "no elements",
        ),
        ("unknown model", "/v2/models/nope/infer", good, auth, 404, "not published"),
        ("unknown version", "/v2/models/digits/versions/9.9.9/infer", good, auth, 404, "9.9.9"),
        ("missing key", "/v2/models/digits/infer", good, {}, 401, "missing API key"),
        (
            "invalid key",
            "/v2/models/digits/infer",
            good,
            {"Authorization": "Bearer mm_not-a-real-key"},
            401,
            "invalid API key",
        ),
        ("malformed header", "/v2/models/digits/infer", good, {"Authorization": key}, 401, "Bearer"),
    ]
    n_ok = 23
    with httpx.Client(base_url=gateway.url, timeout=COLD_START_S) as http:
        for i in range(n_ok):
            r = http.post("/v2/models/digits/infer", json=good, headers=auth)
            assert r.status_code == 200, r.text
            if i == 10:  # interleave the failures with the successes
                for what, path, body, headers, status, words in failures:
                    bad = http.post(path, json=body, headers=headers)
                    assert bad.status_code == status, (what, bad.text)
                    assert words in bad.json()["error"], (what, bad.json())
        bad_json = http.post("/v2/models/digits/infer", content=b"{not json", headers=auth)
        assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]
        usage = http.get("/api/usage", headers=auth).json()

    assert _log_events_for(gateway, account_id) == n_ok
    assert usage["total_events"] == n_ok
    assert Decimal(usage["total_iu"]) == n_ok
    assert Decimal(usage["total_amount"]) == n_ok * price

    [invoice] = cli.json("invoice", "counter", "--period", period)["invoices"]
    expected = (n_ok * price).quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)
    assert Decimal(invoice["total"]) == expected
    assert invoice["events"] == n_ok
