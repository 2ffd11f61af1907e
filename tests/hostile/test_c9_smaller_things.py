"""9. Smaller things: prices in one canonical form only, path tricks that must not reach a model, a revoked key cut
off within the cache refresh, a refused re-publish that leaves no orphan blob, and audio IU shown exactly."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from fractions import Fraction

import httpx
import pytest
from tests.hostile.conftest import CACHE_REFRESH_S, Market, PublishBatch
from tests.hostile.support import (
    assert_error_response,
    binary_request,
    bytes_elements,
    digits_body,
    http_request,
    raw_request,
    silent_wav,
)

from modelmarket.core.money import exact_text

REVOKED_WITHIN_S = CACHE_REFRESH_S + 3.0
"""Generous: the key snapshot reloads every MODELMARKET_CACHE_REFRESH_S (1 s here)."""


@pytest.mark.parametrize("case", ["price-minus-zero", "price-exponent", "price-underscore", "republish-other-bytes"])
def test_prices_and_republishes_are_refused(refused_publishes: PublishBatch, case: str) -> None:
    refused_publishes.assert_refused(case)


def test_an_unquoted_minus_zero_price_is_refused(refused_publishes: PublishBatch) -> None:
    refused_publishes.assert_refused("price-minus-zero-unquoted")


def test_a_valid_price_is_shown_as_written(market: Market) -> None:
    doc = httpx.get(f"{market.url}/api/models/digits", timeout=10).json()
    assert doc["pricing"]["price_per_iu"] == "0.0010"


PATH_TRICKS = [
    ("GET", "/v2/models/digits%2F.."),
    ("GET", "/v2/models/digits%2F../ready"),
    ("POST", "/v2/models/digits%2F../infer"),
    ("POST", "/v2/models/digits/versions//infer"),
    ("POST", "/v2/models/digits/versions/%2E%2E/infer"),
    ("POST", "/v2/models/digits/versions/../infer"),
    ("POST", "/v2/models/digits/../sentiment/infer"),
    ("POST", "/v2/models//infer"),
    ("POST", "/v2/models/digits%00/infer"),
]


@pytest.mark.parametrize(("method", "path"), PATH_TRICKS, ids=[f"{m} {p}" for m, p in PATH_TRICKS])
def test_path_tricks_reach_no_model_and_bill_nothing(market: Market, method: str, path: str) -> None:
    who = market.consumer("paths")
    body = json.dumps(digits_body()).encode() if method == "POST" else b""
    answer = raw_request(market.hostport, http_request(method, path, who.auth, body))
    answer.assert_error(404)
    assert market.events(who) == 0


MALFORMED = [
    b"GARBAGE\r\n\r\n",
    b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
]


@pytest.mark.parametrize(
    "request_bytes", MALFORMED, ids=["no-request-line", "content-length-abc", "length-and-chunked"]
)
def test_a_malformed_http_request_gets_a_json_error(market: Market, request_bytes: bytes) -> None:
    raw_request(market.hostport, request_bytes, timeout_s=10).assert_error(400)


def test_a_revoked_key_is_refused_within_the_cache_refresh(market: Market) -> None:
    who = market.consumer("revoked")
    other_key = market.admin.accounts.issue_key(who.name, actor="hostile-tests").secret
    url = f"{market.url}/v2/models/digits/infer"
    with httpx.Client(timeout=30) as http:
        assert http.post(url, json=digits_body(), headers=who.auth).status_code == 200
        market.cli.run("keys", "revoke", who.key_id)
        revoked_at = time.monotonic()
        served = 1
        while True:
            r = http.post(url, json=digits_body(), headers=who.auth)
            waited = time.monotonic() - revoked_at
            if r.status_code != 200 or waited > REVOKED_WITHIN_S:
                break
            served += 1
            time.sleep(0.1)
        print(f"[keys] revoked key refused {waited:.2f}s after `keys revoke` returned ({served - 1} calls meanwhile)")
        assert_error_response(r, 401)
        assert waited <= REVOKED_WITHIN_S
        usage = http.get(f"{market.url}/api/usage", headers={"Authorization": f"Bearer {other_key}"}).json()
        assert http.get(f"{market.url}/api/usage", headers=who.auth).status_code == 401
    assert usage["total_events"] == served


def test_audio_is_billed_in_whole_seconds_and_shown_as_an_exact_fraction(market: Market) -> None:
    who = market.consumer("audio")
    clips = [silent_wav(6.2), silent_wav(0.3)]  # 7 s (rounded up) + 1 s (the least an element costs)
    seconds = 8
    body, header_length = binary_request("audio", "BYTES", [len(clips)], bytes_elements(clips))
    headers = {**who.auth, "Inference-Header-Content-Length": str(header_length)}
    r = httpx.post(f"{market.url}/v2/models/speech-to-text/infer", content=body, headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    price = Fraction(Decimal(httpx.get(f"{market.url}/api/models/speech-to-text").json()["pricing"]["price_per_iu"]))
    usage = market.usage(who)
    [entry] = usage["models"]
    assert entry["events"] == 1 and entry["quantity"] == seconds and entry["base_unit"] == "second"
    assert entry["iu"] == usage["total_iu"] == "2/15"  # 8/60 of an audio minute: no decimal is exact
    assert entry["amount"] == exact_text(price * seconds / 60)
