"""8. An answer lost after billing: an `Idempotency-Key` retry gets the kept answer and is never billed again, not
even after a SIGKILL of the gateway and a restart on the same home; a key reused for another request is refused
(422); a malformed key is refused (400); keys are per account."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from tests.hostile.conftest import MAX_KEPT_ANSWER_BYTES, Consumer, Market
from tests.hostile.support import LiveProbe, assert_error_response, digits_body

REPLAYED = "idempotency-replayed"
BURST = 8


def _infer(market: Market, who: Consumer, key: str | bytes, body: dict[str, Any]) -> httpx.Response:
    headers: dict[str, str | bytes] = {**who.auth, "Idempotency-Key": key}
    return httpx.post(f"{market.url}/v2/models/digits/infer", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "key",
    ["", "k" * 201, "has space", b"caf\xc3\xa9", "tab\there"],
    ids=["empty", "201-chars", "space", "non-ascii", "tab"],
)
def test_a_malformed_idempotency_key_is_refused_and_not_billed(market: Market, key: str | bytes) -> None:
    who = market.consumer("idem-bad-key")
    assert_error_response(_infer(market, who, key, digits_body()), 400, "Idempotency-Key")
    assert market.events(who) == 0


def test_a_retry_gets_the_same_answer_and_is_not_billed_again(market: Market) -> None:
    who = market.consumer("idem-retry")
    key = str(uuid.uuid4())
    first = _infer(market, who, key, digits_body(2))
    assert first.status_code == 200 and REPLAYED not in first.headers, first.text
    with LiveProbe(market.url, "idempotent retries"):
        retries = [_infer(market, who, key, digits_body(2)) for _ in range(3)]
    for retry in retries:
        assert retry.status_code == 200, retry.text
        assert retry.content == first.content
        assert retry.headers[REPLAYED] == "true"
        assert retry.headers["x-request-id"] == first.headers["x-request-id"]
    assert market.events(who) == 1
    # the same key with another body is another request: refused, not billed
    other = _infer(market, who, key, digits_body(3))
    assert_error_response(other, 422, "Idempotency-Key")
    assert market.events(who) == 1


def test_keys_belong_to_one_account(market: Market) -> None:
    alice, bob = market.consumer("idem-alice"), market.consumer("idem-bob")
    key = str(uuid.uuid4())
    for who in (alice, bob):
        r = _infer(market, who, key, digits_body())
        assert r.status_code == 200 and REPLAYED not in r.headers, (who.name, r.headers)
    assert market.events(alice) == 1 and market.events(bob) == 1


def test_a_refused_call_bills_nothing_so_its_key_can_be_used_again(market: Market) -> None:
    who = market.consumer("idem-after-refusal")
    key = str(uuid.uuid4())
    bad = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 63], "data": [0.0] * 63}]}
    assert_error_response(_infer(market, who, key, bad), 400, "shape")
    assert market.events(who) == 0
    served = _infer(market, who, key, digits_body())
    assert served.status_code == 200 and REPLAYED not in served.headers, served.text
    again = _infer(market, who, key, digits_body())
    assert again.status_code == 200 and again.headers[REPLAYED] == "true" and again.content == served.content
    assert market.events(who) == 1


def test_a_retry_of_an_answer_too_large_to_keep_is_refused_not_billed_again(market: Market) -> None:
    who = market.consumer("idem-large")
    key = str(uuid.uuid4())
    rows = 700  # about 85 kB of answer: more than the gateway keeps here
    first = _infer(market, who, key, digits_body(rows))
    assert first.status_code == 200 and len(first.content) > MAX_KEPT_ANSWER_BYTES, (
        first.status_code,
        len(first.content),
    )
    assert_error_response(_infer(market, who, key, digits_body(rows)), 409, "Idempotency-Key", "no longer kept")
    usage = market.usage(who)
    assert usage["total_events"] == 1 and usage["models"][0]["quantity"] == rows


@dataclass(frozen=True)
class Burst:
    who: Consumer
    answers: list[httpx.Response]


@pytest.fixture(scope="module")
def burst(market: Market) -> Burst:
    """Eight calls with one key and one body, sent at the same moment on warmed-up connections."""
    who = market.consumer("idem-concurrent")
    key = str(uuid.uuid4())
    start = threading.Barrier(BURST)
    body = digits_body(200)  # a call long enough for the others to arrive while the first is in flight

    def call(_: int) -> httpx.Response:
        with httpx.Client(base_url=market.url, headers=who.auth, timeout=30) as http:
            http.get("/v2/health/live")
            start.wait(timeout=30)
            return http.post("/v2/models/digits/infer", json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(max_workers=BURST) as pool:
        answers = list(pool.map(call, range(BURST)))
    return Burst(who, answers)


def test_concurrent_retries_with_one_key_run_once_and_are_billed_once(market: Market, burst: Burst) -> None:
    assert all(a.status_code == 200 for a in burst.answers), [a.text for a in burst.answers]
    assert len({a.content for a in burst.answers}) == 1
    assert len({a.headers["x-request-id"] for a in burst.answers}) == 1
    assert market.events(burst.who) == 1


def test_concurrent_retries_are_marked_replayed(burst: Burst) -> None:
    marked = [a.headers.get(REPLAYED) for a in burst.answers]
    print(f"[idempotency] Idempotency-Replayed of {BURST} concurrent calls with one key: {marked}")
    assert marked.count("true") == BURST - 1, marked


def test_a_retry_after_the_gateway_was_killed_gets_the_kept_answer_unbilled(market: Market) -> None:
    """Runs last in this module: it SIGKILLs the session's gateway and starts another on the same home."""
    who = market.consumer("idem-sigkill")
    key = str(uuid.uuid4())
    first = _infer(market, who, key, digits_body(3))
    assert first.status_code == 200, first.text
    ready_after_s = market.kill_and_restart()
    print(f"[idempotency] the restarted gateway was ready {ready_after_s:.1f}s after the SIGKILL")
    assert httpx.get(f"{market.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    retry = _infer(market, who, key, digits_body(3))
    assert retry.status_code == 200, retry.text
    assert retry.content == first.content
    assert retry.headers[REPLAYED] == "true" and retry.headers["x-request-id"] == first.headers["x-request-id"]
    assert market.events(who) == 1
