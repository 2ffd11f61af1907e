"""6. Usage events never grow with the request: a huge `traceparent` is refused with the header bound (431) or
ignored; a valid W3C one gives the event its trace id; anything else is ignored; every stored event stays small."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import httpx
import pytest
from tests.hostile.conftest import Market
from tests.hostile.support import LiveProbe, digits_body, http_request, raw_request

MAX_EVENT_BYTES = 4096
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
VALID = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def stored_event(market: Market, event_id: str) -> tuple[int, dict[str, Any]]:
    """(size in bytes, document) of the usage event ``event_id`` as the event log holds it."""
    with sqlite3.connect(market.cli.home / "events.db") as conn:
        row = conn.execute("SELECT payload FROM events WHERE event_id = ?", (event_id,)).fetchone()
    assert row is not None, f"no usage event {event_id} in the log"
    return len(row[0]), json.loads(row[0])


def test_an_8_megabyte_traceparent_is_refused_or_ignored(market: Market) -> None:
    who = market.consumer("huge-trace")
    headers = {**who.auth, "Content-Type": "application/json", "traceparent": VALID + "0" * (8 << 20)}
    with LiveProbe(market.url, "an 8 MB traceparent header"):
        answer = raw_request(
            market.hostport,
            http_request("POST", "/v2/models/digits/infer", headers, json.dumps(digits_body()).encode()),
        )
    print(f"[trace] 8 MB traceparent answered {answer.status} in {answer.elapsed_s * 1000:.0f} ms")
    if answer.status == 431:
        answer.assert_error(431, "header")
        assert market.events(who) == 0
    else:
        assert answer.status == 200, answer.body[:300]
        size, event = stored_event(market, answer.headers["x-request-id"])
        assert event["data"]["trace_id"] is None and size <= MAX_EVENT_BYTES
        assert market.events(who) == 1


@pytest.mark.parametrize(
    ("traceparent", "kept"),
    [
        (VALID, TRACE_ID),
        ("0" * 10_000, None),
        (VALID.upper(), None),
        ("ff" + VALID[2:], None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (VALID + "-extra", None),
        (VALID.replace("-", "\N{EN DASH}", 1), None),
    ],
    ids=["valid", "10k-zeros", "uppercase", "version-ff", "zero-trace-id", "trailing-field", "non-ascii"],
)
def test_only_a_valid_traceparent_reaches_the_usage_event(market: Market, traceparent: str, kept: str | None) -> None:
    who = market.consumer("trace")
    headers = {**who.auth, "traceparent": traceparent.encode()}
    r = httpx.post(f"{market.url}/v2/models/digits/infer", json=digits_body(), headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    size, event = stored_event(market, r.headers["x-request-id"])
    assert event["data"]["trace_id"] == kept
    assert size <= MAX_EVENT_BYTES
    assert market.events(who) == 1


def test_no_stored_usage_event_holds_more_than_a_few_kilobytes(market: Market) -> None:
    with sqlite3.connect(market.cli.home / "events.db") as conn:
        count, largest = conn.execute("SELECT COUNT(*), MAX(LENGTH(payload)) FROM events").fetchone()
    print(f"[trace] {count} usage events in the log, the largest {largest} bytes")
    assert count > 0 and largest <= MAX_EVENT_BYTES
