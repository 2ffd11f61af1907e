"""20. Feedback (``/api/feedback``) as an attacker sends it: on someone else's call, with no key, with scores and
labels of every wrong shape, with a body too large or not JSON. Each is refused with an error that names the
problem, and nothing is stored; feedback never bills or runs a model."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from tests.hostile.conftest import Consumer, Market
from tests.hostile.support import assert_error_response, digits_body

from modelmarket.gateway.api_lab import FEEDBACK_BODY_MAX


def _call(market: Market, who: Consumer) -> str:
    r = httpx.post(f"{market.url}/v2/models/digits/infer", json=digits_body(), headers=who.auth, timeout=60)
    assert r.status_code == 200, r.text
    return r.headers["x-request-id"]


def _post(market: Market, who: Consumer | None, doc: Any = None, content: bytes | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json", **(who.auth if who else {})}
    body = content if content is not None else json.dumps(doc).encode()
    return httpx.post(f"{market.url}/api/feedback", content=body, headers=headers, timeout=30)


def _digits_scored(market: Market, who: Consumer) -> int:
    r = httpx.get(f"{market.url}/api/feedback", params={"model": "digits"}, headers=who.auth, timeout=30)
    assert r.status_code == 200, r.text
    return sum(v["calls"] for v in r.json()["versions"])


def test_feedback_on_ones_own_call_is_stored_once_and_counted(market: Market) -> None:
    who = market.consumer("feedback")
    request_id = _call(market, who)
    before = _digits_scored(market, who)
    r = _post(market, who, {"request_id": request_id, "score": 4, "label": "3"})
    assert r.status_code == 201, r.text
    assert {k: r.json()[k] for k in ("request_id", "model", "score", "label")} == {
        "request_id": request_id,
        "model": "digits",
        "score": 4,
        "label": "3",
    }
    r = _post(market, who, {"request_id": request_id, "score": 5})
    assert r.status_code == 200, r.text  # replaced: one feedback per call
    shown = httpx.get(f"{market.url}/api/feedback/{request_id}", headers=who.auth, timeout=30).json()
    assert (shown["score"], shown["label"]) == (5, None)
    assert _digits_scored(market, who) == before + 1
    assert market.events(who) == 1  # the call only: feedback bills nothing


def test_feedback_on_another_accounts_call_is_not_found_like_an_unknown_one(market: Market) -> None:
    owner, other = market.consumer("feedback-owner"), market.consumer("feedback-other")
    request_id = _call(market, owner)
    theirs = _post(market, other, {"request_id": request_id, "score": 1})
    unknown = _post(market, other, {"request_id": "evt-" + "0" * 32, "score": 1})
    assert_error_response(theirs, 404, "no call")
    assert_error_response(unknown, 404, "no call")
    assert theirs.json()["error"].replace(request_id, "ID") == unknown.json()["error"].replace("evt-" + "0" * 32, "ID")
    peek = httpx.get(f"{market.url}/api/feedback/{request_id}", headers=other.auth, timeout=30)
    assert_error_response(peek, 404, "no feedback")


@pytest.mark.parametrize("path", ["/api/feedback", "/api/feedback/evt-x"])
def test_feedback_needs_a_key(market: Market, path: str) -> None:
    assert httpx.get(f"{market.url}{path}", timeout=30).status_code == 401
    assert _post(market, None, {"request_id": "x", "score": 3}).status_code == 401


BAD = [
    ({"request_id": "R", "score": 0}, "score"),
    ({"request_id": "R", "score": 6}, "score"),
    ({"request_id": "R", "score": 3.5}, "score"),
    ({"request_id": "R", "score": "3"}, "score"),
    ({"request_id": "R", "score": True}, "score"),
    ({"request_id": "R"}, "score"),
    ({"score": 3}, "request_id"),
    ({"request_id": "x" * 65, "score": 3}, "request_id"),
    ({"request_id": "R", "score": 3, "label": "x" * 201}, "label"),
    ({"request_id": "R", "score": 3, "label": ""}, "label"),
    ({"request_id": "R", "score": 3, "label": 7}, "label"),
    ({"request_id": "R", "score": 3, "label": "a\nb"}, "label"),
    ({"request_id": "R", "score": 3, "admin": True}, "unknown field"),
    (["R", 3], "JSON object"),
]


@pytest.mark.parametrize(("doc", "named"), BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_malformed_feedback_is_refused_naming_the_field_and_nothing_is_stored(
    market: Market, doc: Any, named: str
) -> None:
    who = market.consumer("feedback-bad")
    request_id = _call(market, who)
    if isinstance(doc, dict) and doc.get("request_id") == "R":
        doc = {**doc, "request_id": request_id}
    assert_error_response(_post(market, who, doc), 400, named)
    assert httpx.get(f"{market.url}/api/feedback/{request_id}", headers=who.auth, timeout=30).status_code == 404


def test_a_body_too_large_or_not_json_is_refused(market: Market) -> None:
    who = market.consumer("feedback-body")
    huge = json.dumps({"request_id": "x", "score": 3, "label": "y" * FEEDBACK_BODY_MAX}).encode()
    assert_error_response(_post(market, who, content=huge), 413, "limit")
    assert_error_response(_post(market, who, content=b"{not json"), 400, "not JSON")
    assert_error_response(_post(market, who, content=b""), 400, "not JSON")
