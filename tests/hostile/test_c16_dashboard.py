"""16. The web dashboard under attack, on the hostile session's real gateway (a subprocess on loopback).

A model card that carries ``<script>`` is shown as text, and every page forbids inline scripts (CSP); a POST without
the session's CSRF token, or with another session's, is refused and calls nothing; one account cannot open another's
invoice or see its usage; ``next=`` never sends the browser to another site; static paths cannot leave the package's
``static/`` folder; a huge sign-in body or upload is refused without being read; the session cookie is HttpOnly and
SameSite=Strict, and a cookie replayed after sign-out opens nothing; hundreds of wrong keys sent at once get no
more than the failure budget's worth checked.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
import uuid
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import billing_period_for_test
from tests.hostile.conftest import Consumer, Market
from tests.hostile.packages import edit_manifest, read_manifest
from tests.hostile.support import RawAnswer, digits_body, raw_request, silent_wav

from modelmarket.billing.period import parse_period
from modelmarket.dashboard.pages_playground import UPLOAD_MAX_BYTES
from modelmarket.dashboard.sessions import SESSION_COOKIE, SIGNIN_FAILURES_MAX, SIGNIN_MAX_BODY_BYTES

SCRIPT = "<script>alert('card')</script><img src=x onerror=alert(1)>"
TOKEN_RE = re.compile(r'id="signin-form"[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)"')
META_RE = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
CATALOGUE_WAIT_S = 30.0


def browser(market: Market) -> httpx.Client:
    return httpx.Client(base_url=market.url, timeout=60)


def sign_in(client: httpx.Client, key: str, next_path: str = "/") -> httpx.Response:
    form = client.get("/signin")
    token = TOKEN_RE.search(form.text)
    assert form.status_code == 200 and token is not None, form.text[:300]
    return client.post("/signin", data={"key": key, "csrf_token": token.group(1), "next": next_path})


def csrf_of(client: httpx.Client) -> str:
    found = META_RE.search(client.get("/playground").text)
    assert found is not None
    return found.group(1)


def raw(market: Market, head: str, body: bytes = b"") -> RawAnswer:
    return raw_request(market.hostport, head.replace("\n", "\r\n").encode("latin-1") + b"\r\n\r\n" + body)


def test_a_card_with_a_script_is_shown_as_text_and_pages_forbid_inline_scripts(market: Market, tmp_path: Path) -> None:
    name = f"xss-card-{uuid.uuid4().hex[:6]}"
    package = tmp_path / name
    shutil.copytree(market.packages / "digits", package)
    card = read_manifest(package)["card"]
    edit_manifest(package, name=name, card={**card, "summary": f"Digits {SCRIPT}", "description": SCRIPT})
    market.admin.registry.publish(package, actor="hostile-tests")
    with browser(market) as client:
        deadline = time.monotonic() + CATALOGUE_WAIT_S
        while (page := client.get(f"/models/{name}")).status_code == 404:  # the gateway's catalogue refresh
            assert time.monotonic() < deadline, "the new model never reached the gateway's catalogue"
            time.sleep(0.2)
        listed = client.get("/", params={"q": name})
        searched = client.get("/", params={"q": "<script>alert(1)</script>"})
        for shown in (page, listed):
            assert shown.status_code == 200
            assert "&lt;script&gt;alert(" in shown.text and "<script>alert" not in shown.text
            assert "<img src=x" not in shown.text
        assert "<script>alert(1)</script>" not in searched.text
        for answer in (page, listed, searched, client.get("/no-such-page"), client.get("/signin")):
            csp = answer.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
            assert answer.headers["x-content-type-options"] == "nosniff"
            scripts = re.findall(r"<script\b[^>]*>", answer.text)
            assert scripts and all('src="/static/' in tag for tag in scripts), scripts  # no inline script at all
            assert " style=" not in answer.text


def test_a_post_without_the_sessions_token_or_with_anothers_is_refused(market: Market) -> None:
    a, b = market.consumer("dash-csrf-a"), market.consumer("dash-csrf-b")
    with browser(market) as alice, browser(market) as bob:
        sign_in(alice, a.key)
        sign_in(bob, b.key)
        bobs_token = csrf_of(bob)
        pixels = " ".join(["4"] * 64)
        for data, headers in (
            ({"pixels": pixels}, {}),
            ({"pixels": pixels, "csrf_token": bobs_token}, {}),
            ({"pixels": pixels}, {"X-CSRF-Token": bobs_token}),
            ({"pixels": pixels, "csrf_token": ""}, {}),
        ):
            refused = alice.post("/playground/digits", data=data, headers=headers)
            assert refused.status_code == 403 and "security token" in refused.text
        signed_out = alice.post("/signout", data={"csrf_token": bobs_token})
        assert signed_out.status_code == 403
        assert alice.get("/usage").status_code == 200  # still signed in: the forged sign-out did nothing
    assert market.events(a) == 0 and market.events(b) == 0


def test_one_account_cannot_open_anothers_invoice_or_see_its_usage(market: Market) -> None:
    a, b = market.consumer("dash-owner"), market.consumer("dash-other")
    period = billing_period_for_test()
    call = httpx.post(f"{market.url}/v2/models/digits/infer", json=digits_body(), headers=a.auth, timeout=60)
    assert call.status_code == 200, call.text
    [invoice] = market.admin.invoices.invoices(a.account_id, parse_period(period))
    with browser(market) as owner, browser(market) as other:
        sign_in(owner, a.key)
        sign_in(other, b.key)
        assert owner.get(f"/invoices/{invoice.id}").status_code == 200  # the id is real
        for path in (f"/invoices/{invoice.id}", f"/invoices/{invoice.id}/print"):
            hidden = other.get(path)
            assert hidden.status_code == 404, path
            assert a.name not in hidden.text and "0.001" not in hidden.text
        assert invoice.id not in other.get("/invoices").text
        usage = other.get("/usage")
        assert usage.status_code == 200 and a.name not in usage.text and "digits" not in usage.text
        assert "digits" in owner.get("/usage").text


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("//evil.test/x", "/"),
        ("https://evil.test/", "/"),
        ("/\\evil.test", "/"),
        ("\\\\evil.test", "/"),
        ("javascript:alert(1)", "/"),
        ("/\t/evil.test", "/"),
        ("/usage?since=2026-01-01", "/usage?since=2026-01-01"),
    ],
)
def test_next_never_sends_the_browser_to_another_site(market: Market, target: str, expected: str) -> None:
    who = market.consumer("dash-next")
    with browser(market) as client:
        form = client.get("/signin", params={"next": target})
        assert f'name="next" value="{expected}"' in form.text
        signed = sign_in(client, who.key, target)
        assert signed.status_code == 303 and signed.headers["location"] == expected
        assert client.get("/usage").status_code == 200  # signed in all the same


@pytest.mark.parametrize(
    "path",
    [
        "/static/../settings.py",
        "/static/../../pyproject.toml",
        "/static/%2e%2e/web.py",
        "/static/..%2fapp.py",
        "/static/%2e%2e%2f%2e%2e%2fsettings.py",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/static/vendor/../../app.py",
        "/static/vendor/",
        "/static/",
        "/static/..",
    ],
)
def test_static_paths_cannot_leave_the_static_folder(market: Market, path: str) -> None:
    answer = raw(market, f"GET {path} HTTP/1.1\nHost: {market.hostport}\nConnection: close")
    assert answer.status == 404, (path, answer.status, answer.body[:200])
    assert b"import " not in answer.body and b"root:" not in answer.body and b"[project]" not in answer.body


def test_huge_sign_in_bodies_and_uploads_are_refused_unread(market: Market) -> None:
    big = 1 << 30
    declared = raw(
        market,
        f"POST /signin HTTP/1.1\nHost: {market.hostport}\nContent-Type: application/x-www-form-urlencoded\n"
        f"Content-Length: {big}\nConnection: close",
        b"key=" + b"k" * 1000,
    )
    assert declared.status == 413 and declared.elapsed_s < 10
    streamed = raw(
        market,
        f"POST /signin HTTP/1.1\nHost: {market.hostport}\nContent-Type: application/x-www-form-urlencoded\n"
        "Transfer-Encoding: chunked\nConnection: close",
        _chunked(b"key=" + b"k" * (SIGNIN_MAX_BODY_BYTES * 4)),
    )
    assert streamed.status == 413
    who = market.consumer("dash-upload")
    with browser(market) as client:
        sign_in(client, who.key)
        token = csrf_of(client)
        cookie = f"{SESSION_COOKIE}={client.cookies[SESSION_COOKIE]}"
        head = (
            f"POST /playground/speech-to-text HTTP/1.1\nHost: {market.hostport}\nCookie: {cookie}\n"
            f"X-CSRF-Token: {token}\nContent-Type: multipart/form-data; boundary=b0undary\nConnection: close"
        )
        wav = silent_wav(UPLOAD_MAX_BYTES / 32_000 + 4)  # just over the page's body bound
        part = b'--b0undary\r\nContent-Disposition: form-data; name="audio"; filename="a.wav"\r\n\r\n'
        body = part + wav + b"\r\n--b0undary--\r\n"
        told = raw(market, f"{head}\nContent-Length: {1 << 40}", body[:1000])
        assert told.status == 413 and told.elapsed_s < 10
        sent = raw(market, f"{head}\nTransfer-Encoding: chunked", _chunked(body))
        assert sent.status == 413, (sent.status, sent.body[:300])
        assert b"larger than the limit" in sent.body
        fits = client.post(
            "/playground/speech-to-text",
            files={"audio": ("quiet.wav", silent_wav(1.0), "audio/wav")},
            headers={"X-CSRF-Token": token, "HX-Request": "true"},
        )
        assert fits.status_code == 200 and 'class="iu"' in fits.text  # the same form within bounds is served
    assert market.events(who) == 1


def test_the_session_cookie_is_strict_and_replaying_it_after_sign_out_opens_nothing(market: Market) -> None:
    who: Consumer = market.consumer("dash-replay")
    with browser(market) as client:
        signed = sign_in(client, who.key)
        cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}="))
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert any(f.startswith("max-age=") for f in flags)
        secret = client.cookies[SESSION_COOKIE]
        assert client.post("/signout", data={"csrf_token": csrf_of(client)}).status_code == 303
    with httpx.Client(base_url=market.url, timeout=30) as replay:
        answer = replay.get("/usage", headers={"Cookie": f"{SESSION_COOKIE}={secret}"})
        assert answer.status_code == 303 and answer.headers["location"].startswith("/signin")
        cleared = answer.headers.get("set-cookie", "")
        assert cleared.startswith(f'{SESSION_COOKIE}=""') or cleared.startswith(f"{SESSION_COOKIE}=;")
        posted = replay.post(
            "/playground/digits", data={"pixels": "1 " * 64}, headers={"Cookie": f"{SESSION_COOKIE}={secret}"}
        )
        assert posted.status_code == 303
    assert market.events(who) == 0


def test_parallel_wrong_sign_ins_over_the_wire_stop_at_the_budget(market: Market) -> None:
    """Wrong keys sent at once on many connections: only the budget's worth is checked (401); the rest are refused
    (429) before their key is looked up. This spends the loopback address's budget for five minutes, so the gateway
    is restarted afterwards (the budget is in its memory) for the tests that follow."""
    who = market.consumer("dash-budget")
    attempts = 300
    try:
        statuses, refusal = asyncio.run(_wrong_sign_ins_at_once(market.url, attempts))
        assert statuses.count(401) == SIGNIN_FAILURES_MAX, sorted(set(statuses))
        assert statuses.count(429) == attempts - SIGNIN_FAILURES_MAX
        assert "Too many failed sign-ins from your address" in refusal
        with browser(market) as client:
            held = sign_in(client, who.key)  # the right key, from the address that spent its budget
            assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1
    finally:
        market.kill_and_restart()
    with browser(market) as client:
        assert sign_in(client, who.key).status_code == 303


async def _wrong_sign_ins_at_once(url: str, attempts: int) -> tuple[list[int], str]:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        form = await client.get("/signin")
        token = TOKEN_RE.search(form.text)
        assert token is not None
        answers = await asyncio.gather(
            *(
                client.post("/signin", data={"key": f"mm_wrong-{i:04d}", "csrf_token": token.group(1)})
                for i in range(attempts)
            )
        )
    refusal = next((a.text for a in answers if a.status_code == 429), "")
    return [a.status_code for a in answers], refusal


def _chunked(data: bytes, size: int = 64 * 1024) -> bytes:
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
