"""The web dashboard on the gateway as ``bootstrap_gateway`` composes it (SQLite store, the demo's ``digits`` and
``sentiment`` served in-process), over httpx.ASGITransport: sessions, CSRF refusals, roles, the sign-in redirect,
the failed sign-in budget under parallel attempts and per IPv6 /64, a revoked key or an expired session ending a
sign-in, the catalogue's search, who sees a model's publish-gate submission, and a playground call billed once."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import text

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.dashboard.sessions import SESSION_COOKIE, SIGNIN_FAILURES_MAX
from modelmarket.demo._digits import build_digits
from modelmarket.demo._sentiment import build_sentiment
from modelmarket.gateway.app import GatewayApp
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]
TOKEN_RE = re.compile(r'id="signin-form"[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)"')
META_RE = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
PIXELS = " ".join(["0", "3", "12", "14", "10", "1", "0", "0"] * 8)
"""64 values 0..16: something digit-like for the playground."""


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dash-packages")
    build_digits(out / "digits", out / "examples", lambda _: None)
    build_sentiment(out / "sentiment", out / "examples", lambda _: None)
    return out


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Rig:
    app: GatewayApp
    platform: Platform
    clock: Clock
    keys: dict[str, str]
    key_ids: dict[str, str]

    def browser(self, address: str = "127.0.0.1") -> httpx.AsyncClient:
        """A client with a cookie jar of its own (one browser), calling from ``address``."""
        transport = httpx.ASGITransport(app=self.app, client=(address, 50_000))
        return httpx.AsyncClient(transport=transport, base_url="http://dash.test")

    def sessions(self) -> list[tuple[str, ...]]:
        with self.platform.store.read() as uow:
            rows = uow.conn.execute(text("SELECT * FROM dashboard_sessions ORDER BY created_at")).all()
        return [tuple(str(v) for v in row) for row in rows]

    def billed(self, account: str) -> list[str]:
        """The model of every usage event of ``account``, once the log is applied."""
        self.platform.metering.catch_up()
        with self.platform.store.read() as uow:
            found = uow.accounts.by_name(account)
            assert found is not None
            rows = uow.conn.execute(
                text("SELECT model_name FROM usage_events WHERE account_id = :a ORDER BY model_name"), {"a": found.id}
            ).all()
        return [str(r[0]) for r in rows]


@pytest.fixture()
async def rig(tmp_path: Path, packages: Path) -> AsyncIterator[Rig]:
    clock = Clock()
    platform = bootstrap(Settings(home=tmp_path / "home", inprocess_runtimes="onnx,vader"), clock=clock)
    keys, key_ids = {}, {}
    platform.accounts.create("demo-provider", "provider")
    for name, role in (("alice", "consumer"), ("bob", "consumer"), ("root", "operator")):
        platform.accounts.create(name, role)
        issued = platform.accounts.issue_key(name)
        keys[name], key_ids[name] = issued.secret, issued.key_id
    platform.registry.publish(packages / "digits")
    platform.registry.publish(packages / "sentiment")
    app = GatewayApp(bootstrap_gateway(platform, preload=False, metering_child=False))
    await app.startup()
    try:
        yield Rig(app, platform, clock, keys, key_ids)
    finally:
        await app.shutdown()
        platform.close()


async def sign_in(client: httpx.AsyncClient, key: str, next_path: str = "/") -> httpx.Response:
    form = await client.get("/signin")
    token = TOKEN_RE.search(form.text)
    assert form.status_code == 200 and token is not None
    return await client.post("/signin", data={"key": key, "csrf_token": token.group(1), "next": next_path})


async def csrf_of(client: httpx.AsyncClient) -> str:
    page = await client.get("/playground")
    found = META_RE.search(page.text)
    assert page.status_code == 200 and found is not None, page.text[:300]
    return found.group(1)


async def test_sign_in_makes_a_strict_session_that_sign_out_ends(rig: Rig) -> None:
    async with rig.browser() as client:
        gone = await client.get("/usage?since=2026-01-01")
        assert gone.status_code == 303
        assert gone.headers["location"] == "/signin?next=%2Fusage%3Fsince%3D2026-01-01"
        signed = await sign_in(client, rig.keys["alice"], "/usage")
        assert signed.status_code == 303 and signed.headers["location"] == "/usage"
        cookie = next(c for c in signed.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}="))
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "path=/", "samesite=strict"} <= flags and "secure" not in flags  # plain http here
        secret = client.cookies[SESSION_COOKIE]
        [row] = rig.sessions()
        assert row[0] == hashlib.sha256(secret.encode()).hexdigest()  # only the secret's hash is stored
        assert rig.keys["alice"] not in " ".join(row) and secret not in " ".join(row)
        page = await client.get("/usage")
        assert page.status_code == 200 and "alice" in page.text and "Sign out" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        out = await client.post("/signout", data={"csrf_token": await csrf_of(client)})
        assert out.status_code == 303 and out.headers["location"] == "/signin"
        assert rig.sessions() == []
        assert (await client.get("/usage")).status_code == 303
    actions = [r.action for r in rig.platform.audit.list(limit=1000)]
    assert "session.signed_in" in actions and "session.signed_out" in actions


async def test_a_wrong_key_is_named_on_the_form_and_failures_are_bounded(rig: Rig) -> None:
    async with rig.browser() as client:
        wrong = await sign_in(client, "mm_not-a-key")
        assert wrong.status_code == 401
        assert "That API key is not valid" in wrong.text and SESSION_COOKIE not in client.cookies
        for _ in range(SIGNIN_FAILURES_MAX - 1):
            assert (await sign_in(client, "mm_still-not-a-key")).status_code == 401
        held = await sign_in(client, rig.keys["alice"])  # the right key, but this client used up its failures
        assert held.status_code == 429 and int(held.headers["retry-after"]) >= 1
        assert SESSION_COOKIE not in client.cookies and rig.sessions() == []


async def test_parallel_wrong_sign_ins_cannot_pass_the_failure_budget(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[str] = []
    authenticate_key = rig.app.state.authenticate_key

    async def counting(secret: str) -> object:
        checked.append(secret)
        return await authenticate_key(secret)  # a wrong key waits for a (throttled) reload of the key snapshot

    monkeypatch.setattr(rig.app.state, "authenticate_key", counting)
    attempts = 200
    async with rig.browser() as client:
        form = await client.get("/signin")
        token = TOKEN_RE.search(form.text)
        assert token is not None
        answers = await asyncio.gather(
            *(
                client.post("/signin", data={"key": f"mm_wrong-{i}", "csrf_token": token.group(1)})
                for i in range(attempts)
            )
        )
        statuses = [a.status_code for a in answers]
        assert len(checked) == SIGNIN_FAILURES_MAX  # only the budget's worth reached the key check
        assert statuses.count(401) == SIGNIN_FAILURES_MAX and statuses.count(429) == attempts - SIGNIN_FAILURES_MAX
        refused = next(a for a in answers if a.status_code == 429)
        assert "Too many failed sign-ins from your address" in refused.text and int(refused.headers["retry-after"]) >= 1
        held = await sign_in(client, rig.keys["alice"])  # the budget is spent: even the right key waits
        assert held.status_code == 429 and len(checked) == SIGNIN_FAILURES_MAX
    assert rig.sessions() == []


async def test_a_right_key_gives_its_attempt_back_and_ipv6_clients_share_their_64(rig: Rig) -> None:
    async with rig.browser("2001:db8:1:2::10") as first:
        for _ in range(SIGNIN_FAILURES_MAX - 1):
            assert (await sign_in(first, "mm_not-a-key")).status_code == 401
        for _ in range(3):  # successes do not count against the budget
            assert (await sign_in(first, rig.keys["alice"])).status_code == 303
        assert (await sign_in(first, "mm_not-a-key")).status_code == 401  # the tenth failure
        assert (await sign_in(first, "mm_not-a-key")).status_code == 429
    async with rig.browser("2001:db8:1:2:ffff:ffff:ffff:ffff") as same_64:
        assert (await sign_in(same_64, rig.keys["bob"])).status_code == 429  # another address of the same /64
    async with rig.browser("2001:db8:1:3::10") as other_64, rig.browser("127.0.0.1") as ipv4:
        assert (await sign_in(other_64, "mm_not-a-key")).status_code == 401
        assert (await sign_in(ipv4, rig.keys["bob"])).status_code == 303


async def test_every_sign_in_makes_a_new_session_and_drops_the_previous_one(rig: Rig) -> None:
    async with rig.browser() as client:
        client.cookies.set(SESSION_COOKIE, "A" * 43, domain="dash.test")  # planted before sign-in: never adopted
        await sign_in(client, rig.keys["alice"])
        first = client.cookies[SESSION_COOKIE]
        assert first != "A" * 43
        await sign_in(client, rig.keys["bob"])
        second = client.cookies[SESSION_COOKIE]
        assert second != first
        assert [row[0] for row in rig.sessions()] == [hashlib.sha256(second.encode()).hexdigest()]
        assert "bob" in (await client.get("/usage")).text


async def test_posts_need_the_sessions_csrf_token_and_this_sites_origin(rig: Rig) -> None:
    async with rig.browser() as client:
        await sign_in(client, rig.keys["alice"])
        token = await csrf_of(client)
        missing = await client.post("/playground/digits", data={"pixels": PIXELS})
        assert missing.status_code == 403 and "security token" in missing.text
        wrong = await client.post("/playground/digits", data={"pixels": PIXELS, "csrf_token": "x" * 43})
        assert wrong.status_code == 403
        foreign = await client.post(
            "/playground/digits", data={"pixels": PIXELS, "csrf_token": token}, headers={"Origin": "http://evil.test"}
        )
        assert foreign.status_code == 403 and "another site" in foreign.text
        fetched = await client.post(
            "/playground/digits", data={"pixels": PIXELS, "csrf_token": token}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert fetched.status_code == 403
        assert rig.billed("alice") == []  # nothing refused reached the model
        by_header = await client.post(
            "/playground/digits",
            data={"pixels": PIXELS},
            headers={"X-CSRF-Token": token, "HX-Request": "true", "Origin": "http://dash.test"},
        )
        assert by_header.status_code == 200 and 'class="iu"' in by_header.text
    async with rig.browser() as client:  # the sign-in form's own token: the cookie and the field must agree
        await client.get("/signin")
        forged = await client.post("/signin", data={"key": rig.keys["alice"], "csrf_token": "y" * 43})
        assert forged.status_code == 403 and SESSION_COOKIE not in client.cookies


async def test_roles_decide_which_pages_open(rig: Rig) -> None:
    async with rig.browser() as consumer, rig.browser() as operator:
        await sign_in(consumer, rig.keys["alice"])
        await sign_in(operator, rig.keys["root"])
        for path in ("/runners", "/audit"):
            refused = await consumer.get(path)
            assert refused.status_code == 403, path
            assert "<html" in refused.text and "cannot open this page" in refused.text
            assert (await operator.get(path)).status_code == 200, path
        nav = (await consumer.get("/")).text
        assert 'href="/usage"' in nav and 'href="/runners"' not in nav
        assert 'href="/runners"' in (await operator.get("/")).text
    async with rig.browser() as anonymous:
        assert (await anonymous.get("/runners")).headers["location"] == "/signin?next=%2Frunners"
        assert (await anonymous.get("/")).status_code == 200  # the catalogue and model pages are public
        assert (await anonymous.get("/models/digits")).status_code == 200


async def test_a_revoked_key_or_an_expired_session_ends_the_sign_in(rig: Rig) -> None:
    async with rig.browser() as client:
        await sign_in(client, rig.keys["alice"])
        assert (await client.get("/usage")).status_code == 200
        rig.platform.accounts.revoke_key(rig.key_ids["alice"])
        await rig.app.state.keys.reload()  # the gateway's key snapshot, as its refresh would
        ended = await client.get("/usage")
        assert ended.status_code == 303 and ended.headers["location"].startswith("/signin")
        assert rig.sessions() == [] and SESSION_COOKIE not in client.cookies
    async with rig.browser() as client:
        await sign_in(client, rig.keys["bob"])
        rig.clock.now += timedelta(seconds=rig.platform.settings.session_ttl_s + 1)
        assert (await client.get("/usage")).status_code == 303
        assert len(rig.sessions()) == 1  # expired but not yet deleted: the next sign-in purges it
    async with rig.browser() as other:
        await sign_in(other, rig.keys["root"])
        assert [row[1] for row in rig.sessions()] == [rig.platform.accounts.get("root").id]


async def test_the_catalogue_searches_filters_and_pages_as_the_api_does(rig: Rig) -> None:
    async with rig.browser() as client:
        found = await client.get("/", params={"q": "sentiment"})
        assert found.status_code == 200
        assert 'data-model="sentiment"' in found.text and 'data-model="digits"' not in found.text
        image = await client.get("/", params={"modality": "image"})
        assert 'data-model="digits"' in image.text and 'data-model="sentiment"' not in image.text
        cheap = await client.get("/", params={"max_price": "0.005"})
        assert 'data-model="digits"' in cheap.text and 'data-model="sentiment"' not in cheap.text
        api = (await client.get("/api/models", params={"sort": "price", "order": "desc"})).json()
        page = await client.get("/", params={"sort": "price", "order": "desc", "limit": "1"})
        assert re.findall(r'data-model="([^"]+)"', page.text) == [api["models"][0]["name"]]
        following = re.search(r'href="(/\?[^"]*cursor=[^"]+)"', page.text)
        assert following is not None
        second = await client.get(following.group(1).replace("&amp;", "&"))
        assert re.findall(r'data-model="([^"]+)"', second.text) == [api["models"][1]["name"]]
        bad = await client.get("/", params={"max_price": "cheap"})
        assert bad.status_code == 400 and "max_price" in bad.text
        partial = await client.get("/", params={"q": "digits"}, headers={"HX-Request": "true"})
        assert "<html" not in partial.text and 'data-model="digits"' in partial.text
        model = await client.get("/models/digits")
        assert model.status_code == 200 and "0.001" in model.text and "Model card" in model.text
        missing = await client.get("/models/no-such-model")
        assert missing.status_code == 404 and "no-such-model" in missing.text and "<html" in missing.text


async def test_a_models_gate_submission_shows_only_to_its_provider_and_operators(
    rig: Rig, packages: Path, tmp_path: Path
) -> None:
    package = tmp_path / "digits-gated"
    shutil.copytree(packages / "digits", package)
    manifest = package / "modelmarket.yaml"
    doc = yaml.safe_load(manifest.read_text())
    manifest.write_text(yaml.safe_dump({**doc, "name": "digits-gated"}, sort_keys=False))
    gate = rig.platform.gate
    sub = await asyncio.to_thread(gate.submit, package, actor="tests")
    ran = await asyncio.to_thread(gate.run, sub.id)
    assert ran.status == "pending_review", [(s.stage, s.status, s.summary) for s in ran.stages]
    done = await asyncio.to_thread(gate.approve, sub.id, actor="tests", reason="checked")
    assert done.status == "published"
    await rig.app.state.models.reload()
    provider_key = rig.platform.accounts.issue_key("demo-provider").secret
    rig.platform.accounts.create("another-provider", "provider")
    another_key = rig.platform.accounts.issue_key("another-provider").secret
    await rig.app.state.keys.reload()
    async with rig.browser() as anonymous, rig.browser() as consumer, rig.browser() as another:
        await sign_in(consumer, rig.keys["alice"])
        await sign_in(another, another_key)  # a provider, but not this model's
        for client in (anonymous, consumer, another):
            page = await client.get("/models/digits-gated")
            assert page.status_code == 200
            assert sub.id not in page.text and "stage-name" not in page.text  # neither the id nor the stages
            assert "latency p50" in page.text  # the benchmark's figures are public, as in GET /api/models
            assert "passed the publish gate" in page.text
    async with rig.browser() as provider, rig.browser() as operator:
        await sign_in(provider, provider_key)
        await sign_in(operator, rig.keys["root"])
        for client in (provider, operator):
            page = await client.get("/models/digits-gated")
            assert page.status_code == 200
            assert sub.id in page.text and 'stage-name">benchmark<' in page.text and "latency p50" in page.text


async def test_a_playground_call_is_billed_once_and_a_bad_input_not_at_all(rig: Rig) -> None:
    async with rig.browser() as client:
        await sign_in(client, rig.keys["alice"])
        token = await csrf_of(client)
        answer = await client.post(
            "/playground/digits", data={"pixels": PIXELS, "csrf_token": token}, headers={"HX-Request": "true"}
        )
        assert answer.status_code == 200, answer.text
        assert re.search(r'class="iu">1<', answer.text) and re.search(r'class="cost">0\.001 USD<', answer.text)
        assert rig.billed("alice") == ["digits"]
        short = await client.post("/playground/digits", data={"pixels": "1 2 3", "csrf_token": token})
        assert short.status_code == 400 and "pixels: 3 values" in short.text and "<html" in short.text
        said = await client.post(
            "/playground/sentiment",
            data={"text": "What a lovely day", "csrf_token": token},
            headers={"HX-Request": "true"},
        )
        assert said.status_code == 200 and "positive" in said.text
        assert rig.billed("alice") == ["digits", "sentiment"]
        assert rig.billed("bob") == []


async def test_static_files_are_served_by_exact_name_with_their_type(rig: Rig) -> None:
    async with rig.browser() as client:
        page = await client.get("/")
        css_url = re.search(r'href="(/static/dashboard\.css\?v=[0-9a-f]+)"', page.text)
        assert css_url is not None
        css = await client.get(css_url.group(1))
        assert css.status_code == 200 and css.headers["content-type"] == "text/css; charset=utf-8"
        assert "immutable" in css.headers["cache-control"]
        js = await client.get("/static/dashboard.js")
        assert (
            js.headers["content-type"].startswith("text/javascript") and "immutable" not in js.headers["cache-control"]
        )
        for path in ("/static/", "/static/vendor", "/static/nothing.css", "/static/web.py"):
            missing = await client.get(path)
            assert missing.status_code == 404 and "<html" in missing.text, path
