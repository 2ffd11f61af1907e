"""3. One request never stalls the others: a body of millions of BYTES elements is refused quickly naming the bound,
a huge header is refused with 431, and requests whose head or body never completes are cut off by the header and
body timeouts. /v2/health/live keeps answering meanwhile."""

from __future__ import annotations

import json
import select
import socket
import struct
import time

import pytest
from tests.hostile.conftest import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, Market
from tests.hostile.support import LiveProbe, assert_error, binary_request, digits_body, http_request, raw_request

TIMEOUT_SLACK_S = 6.0
"""How long past its configured timeout a stalled connection may stay open (generous: the machine is shared)."""
TRICKLE_EVERY_S = 0.5
SLOW_CONNECTIONS = 20
SILENT_CONNECTIONS = 10


def test_two_million_bytes_elements_are_refused_quickly_naming_the_bound(market: Market) -> None:
    who = market.consumer("many-elements")
    count = 2_000_000
    body, header_length = binary_request("text", "BYTES", [count], (struct.pack("<I", 1) + b"a") * count)
    with LiveProbe(market.url, f"{count:,} BYTES elements ({len(body) / 1e6:.0f} MB)"):
        started = time.perf_counter()
        answer = raw_request(
            market.hostport,
            http_request(
                "POST",
                "/v2/models/sentiment/infer",
                {
                    **who.auth,
                    "Content-Type": "application/octet-stream",
                    "Inference-Header-Content-Length": str(header_length),
                },
                body,
            ),
        )
        took_s = time.perf_counter() - started
    answer.assert_error(400, "BYTES elements", "limit", "1,000,000")
    print(f"[stall] {count:,} BYTES elements refused in {took_s * 1000:.0f} ms")
    assert market.events(who) == 0


def test_a_million_uneven_elements_are_decoded_without_stalling_and_refused(market: Market) -> None:
    """Just under the codec's element bound, with uneven lengths (the slow, per-element split): decoded off the
    event loop, then refused by the runtime's own bound on elements per call."""
    who = market.consumer("uneven-elements")
    pairs = 499_999
    data = (struct.pack("<I", 0) + struct.pack("<I", 1) + b"a") * pairs
    body, header_length = binary_request("text", "BYTES", [2 * pairs], data)
    headers = {**who.auth, "Inference-Header-Content-Length": str(header_length)}
    with LiveProbe(market.url, f"{2 * pairs:,} uneven BYTES elements"):
        started = time.perf_counter()
        answer = raw_request(market.hostport, http_request("POST", "/v2/models/sentiment/infer", headers, body))
        took_s = time.perf_counter() - started
    answer.assert_error(400, "elements", "limit")
    print(f"[stall] {2 * pairs:,} uneven BYTES elements refused in {took_s * 1000:.0f} ms: {answer.json()['error']}")
    assert market.events(who) == 0


MANY_HEADERS = {f"X-Header-{i}": "b" for i in range(3_000)}


@pytest.mark.parametrize(
    "padding", [{"X-Padding": "a" * (1 << 20)}, MANY_HEADERS], ids=["one-1MB-header", "3000-small-headers"]
)
def test_a_huge_request_head_is_refused_with_431(market: Market, padding: dict[str, str]) -> None:
    who = market.consumer("huge-header")
    body = json.dumps(digits_body()).encode()
    headers = {**who.auth, "Content-Type": "application/json", **padding}
    with LiveProbe(market.url, f"a request head of {sum(len(k) + len(v) + 4 for k, v in headers.items()):,} bytes"):
        answer = raw_request(market.hostport, http_request("POST", "/v2/models/digits/infer", headers, body))
    answer.assert_error(431, "header", "limit")
    assert market.events(who) == 0


def _trickle(hostport: str, heads: list[bytes], deadline_s: float) -> list[tuple[float | None, bytes]]:
    """Open a connection per head and send it; then, on those whose head is not empty, one more byte every
    ``TRICKLE_EVERY_S`` (a slow-loris client), until the server closes each or ``deadline_s`` passes. Returns, per
    connection, when the server closed it (seconds after the heads were sent; None if it did not) and what it
    answered."""
    host, port = hostport.rsplit(":", 1)
    socks = [socket.create_connection((host, int(port)), timeout=5) for _ in heads]
    extra = {s: (b" " if b"\r\n\r\n" in head else b"a") if head else b"" for s, head in zip(socks, heads, strict=True)}
    started = time.monotonic()
    closed_at: dict[socket.socket, float] = {}
    received = {s: b"" for s in socks}
    try:
        for s, head in zip(socks, heads, strict=True):
            s.sendall(head)
            s.setblocking(False)
        next_byte = started + TRICKLE_EVERY_S
        while len(closed_at) < len(socks) and time.monotonic() - started < deadline_s:
            open_socks = [s for s in socks if s not in closed_at]
            readable, _, _ = select.select(open_socks, [], [], max(0.0, next_byte - time.monotonic()))
            for s in readable:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    chunk = b""
                if chunk:
                    received[s] += chunk
                else:
                    closed_at[s] = time.monotonic() - started
            if time.monotonic() >= next_byte:
                next_byte += TRICKLE_EVERY_S
                for s in open_socks:
                    if s in closed_at or not extra[s]:
                        continue
                    try:
                        s.send(extra[s])
                    except OSError:
                        closed_at[s] = time.monotonic() - started
    finally:
        for s in socks:
            s.close()
    return [(closed_at.get(s), received[s]) for s in socks]


def test_connections_whose_head_never_completes_are_closed_after_the_header_timeout(market: Market) -> None:
    who = market.consumer("slow-head")
    head = (
        f"POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {who.key}\r\nX-Slow: "
    ).encode()
    heads = [head] * SLOW_CONNECTIONS + [b""] * SILENT_CONNECTIONS  # slow-loris heads, and connections kept silent
    with LiveProbe(market.url, f"{SLOW_CONNECTIONS} slow-loris heads and {SILENT_CONNECTIONS} silent connections"):
        results = _trickle(market.hostport, heads, HEADER_TIMEOUT_S + TIMEOUT_SLACK_S)
    still_open = sum(1 for closed, _ in results if closed is None)
    assert still_open == 0, (
        f"{still_open} of {len(heads)} connections still open {HEADER_TIMEOUT_S + TIMEOUT_SLACK_S:g}s after "
        f"their incomplete head (MODELMARKET_HEADER_TIMEOUT_S={HEADER_TIMEOUT_S:g})"
    )
    print(f"[stall] incomplete heads closed after {max(c for c, _ in results if c is not None):.1f}s at most")
    assert market.events(who) == 0


def test_a_body_that_never_completes_gets_408_after_the_body_timeout(market: Market) -> None:
    who = market.consumer("slow-body")
    head = (
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {who.key}\r\nContent-Length: 100000\r\n\r\n" + '{"inputs": ['
    ).encode()
    with LiveProbe(market.url, "slow-loris request bodies"):
        results = _trickle(market.hostport, [head] * 3, BODY_TIMEOUT_S + TIMEOUT_SLACK_S)
    for closed, answer in results:
        status_line = answer.split(b"\r\n", 1)[0]
        assert b" 408 " in status_line + b" ", (
            f"expected 408 within {BODY_TIMEOUT_S + TIMEOUT_SLACK_S:g}s (MODELMARKET_BODY_TIMEOUT_S="
            f"{BODY_TIMEOUT_S:g}), got {answer[:200]!r} (closed after {closed}s)"
        )
        head_part, _, body = answer.partition(b"\r\n\r\n")
        content_type = next(
            (
                line.split(b":", 1)[1].strip().decode()
                for line in head_part.split(b"\r\n")
                if line.lower().startswith(b"content-type:")
            ),
            None,
        )
        assert_error(408, content_type, body, 408)
    assert market.events(who) == 0
