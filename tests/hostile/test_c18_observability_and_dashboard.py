"""18. Observability and the dashboard under attack, on in-process gateways (``bootstrap_gateway`` over
httpx.ASGITransport, the demo's ``digits`` and ``sentiment`` served in the gateway's process), with tracing on and an
in-memory span exporter beside the gateway's own metrics and request log.

Tracing: a malformed, oversized or forged ``traceparent`` (and any ``tracestate``) never breaks a call and never
reaches the request log, a span or a usage event; a runner's span header is checked before it is exported, whatever
bytes it holds. The request log keeps one valid JSON line per request whatever the path or model name, and no key,
secret or prompt. ``/metrics`` grows no series for made-up names sent to the dashboard. The dashboard refuses every
POST without the session's token or from another site, on every POST route; sign-in bodies and the failed sign-in
budget hold under odd bodies and concurrency; a revoked key's or a signed-out session posts nothing; htmx partials
need a session; path tricks find nothing; card text with markup is shown as text on every page; the playground bills
a call once and a refused or failed call never; other methods change nothing.

(``test_c16_dashboard.py`` and ``test_c17_metrics.py`` attack the same parts on the real gateway process.)
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, unquote

import httpx
import orjson
import pytest
import yaml
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.dashboard.pages_playground import UPLOAD_MAX_BYTES
from modelmarket.dashboard.sessions import SESSION_COOKIE, SIGNIN_FAILURES_MAX
from modelmarket.demo._digits import build_digits
from modelmarket.demo._sentiment import build_sentiment
from modelmarket.gateway.app import GatewayApp
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.observability import CallInfo, Observability, note_answer_headers
from modelmarket.observability.logs import RequestLog, log_line
from modelmarket.observability.metrics import GatewayMetrics
from modelmarket.observability.runner_spans import (
    SPAN_HEADER,
    SPAN_HEADER_MAX_BYTES,
    RunnerSpans,
    parse_traceparent,
)
from modelmarket.observability.tracing import RUNNER_SERVICE, GatewayTracing, client_call
from modelmarket.settings import Settings

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

BASE = "http://dash.test"
TOKEN_RE = re.compile(r'id="signin-form"[^>]*>\s*<input type="hidden" name="csrf_token" value="([^"]+)"')
META_RE = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
PIXELS = " ".join(["0", "3", "12", "14", "10", "1", "0", "0"] * 8)
HEX32 = re.compile(r"[0-9a-f]{32}")
INFER_ROUTE = "/v2/models/{model}/versions/{version}/infer"
MARKUP = '<script>alert(1)</script>"onmouseover="alert(2)"\'><img src=x onerror=alert(3)>'
"""Card text that would run if it reached a page unescaped: a tag, an attribute break, an image handler."""
SHORT_MARKUP = '"><script>alert(9)</script>'
"""Within the 64 characters a page reads of a query parameter."""
XSS_MODEL = "xss-card"
AUDIO_MODEL = "ears"
BROKEN_MODEL = "broken"


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


# -- packages, published into every rig ----------------------------------------------------------------------------


def _edit(package: Path, change: Any) -> None:
    path = package / "modelmarket.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def _xss_card(doc: dict[str, Any]) -> None:
    """Markup in every free-text place of the manifest a page shows: card fields, license, task, the example."""
    doc["name"] = XSS_MODEL
    doc["license"] = "MIT " + MARKUP
    doc["task"] = "t" + MARKUP
    card = doc["card"]
    for field in ("summary", "description", "intended_use", "limitations", "training_data", "evaluation_data"):
        card[field] = f"{field} {MARKUP}"
    card["metrics"] = [{"name": "accuracy", "value": "1", "dataset": "set " + MARKUP}]
    card["details"]["contact"] = "contact " + MARKUP
    card["primary_users"] = ["users " + MARKUP]
    doc["examples"][0]["inputs"][0]["data"] = ["</textarea>" + MARKUP]


def _audio(doc: dict[str, Any]) -> None:
    """The sentiment model declared as audio: the playground asks for a WAV upload (any runtime will do here)."""
    doc["name"] = AUDIO_MODEL
    doc["modality"] = "audio"
    doc.pop("examples", None)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("c18-packages")
    build_digits(out / "digits", out / "examples", lambda _: None)
    build_sentiment(out / "sentiment", out / "examples", lambda _: None)
    for name, source, change in (
        (XSS_MODEL, "sentiment", _xss_card),
        (AUDIO_MODEL, "sentiment", _audio),
        (BROKEN_MODEL, "digits", lambda doc: doc.update(name=BROKEN_MODEL)),
    ):
        shutil.copytree(out / source, out / name)
        _edit(out / name, change)
    (out / BROKEN_MODEL / "model.onnx").write_bytes(b"this is not an ONNX model")  # fails to load when called
    return out


# -- the rig: one in-process gateway ---------------------------------------------------------------------------------


@dataclass
class Rig:
    app: GatewayApp
    platform: Platform
    exporter: InMemorySpanExporter
    log: RequestLog
    keys: dict[str, str]
    key_ids: dict[str, str]
    digits_body: bytes

    def browser(self, client: tuple[str, int] = ("127.0.0.1", 40000)) -> httpx.AsyncClient:
        """A client with a cookie jar of its own (one browser) at address ``client``."""
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app, client=client), base_url=BASE)

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

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

    def event_traces(self) -> dict[str, str | None]:
        """Usage event id -> the trace id it carries, straight from the event log."""
        with sqlite3.connect(self.platform.settings.home / "events.db") as db:
            rows = db.execute("SELECT payload FROM events ORDER BY log_offset").fetchall()
        docs = [json.loads(row[0]) for row in rows]
        return {doc["id"]: doc["data"]["trace_id"] for doc in docs}

    def log_text(self) -> str:
        self.log.flush()
        path = self.platform.settings.logs_dir / "requests.log"
        return path.read_text(encoding="utf-8") if path.exists() else ""

    def log_lines(self) -> list[str]:
        """The log's lines as a JSON Lines reader splits them: on ``\\n`` only (``str.splitlines`` would also split
        inside a string at U+2028, which JSON leaves unescaped)."""
        return self.log_text().split("\n")[:-1]

    async def scrape(self, client: httpx.AsyncClient) -> str:
        answer = await client.get("/metrics", headers=self.auth("root"))
        assert answer.status_code == 200, answer.text
        return answer.text


@pytest.fixture()
async def rig(tmp_path: Path, packages: Path) -> AsyncIterator[Rig]:
    platform = bootstrap(Settings(home=tmp_path / "home", inprocess_runtimes="onnx,vader", tracing=True))
    keys, key_ids = {}, {}
    platform.accounts.create("demo-provider", "provider")
    for name, role in (("alice", "consumer"), ("bob", "consumer"), ("broke", "consumer"), ("root", "operator")):
        platform.accounts.create(name, role)
        issued = platform.accounts.issue_key(name)
        keys[name], key_ids[name] = issued.secret, issued.key_id
    for name in ("digits", "sentiment", XSS_MODEL, AUDIO_MODEL, BROKEN_MODEL):
        platform.registry.publish(packages / name)
    platform.plans.set_limits(platform.accounts.get("broke").id, None, rpm=None, iu_per_day=None, budget=Decimal(0))
    parts = bootstrap_gateway(platform, preload=False, metering_child=False)
    assert parts.observability is not None
    rest = tuple(o for o in parts.observability.observers if not isinstance(o, GatewayTracing))
    exporter = InMemorySpanExporter()
    parts.observability = Observability((GatewayTracing(SimpleSpanProcessor(exporter), 1.0), *rest))
    log = next(o for o in rest if isinstance(o, RequestLog))
    app = GatewayApp(parts)
    await app.startup()
    body = (packages / "examples" / "digit.json").read_bytes()
    try:
        yield Rig(app, platform, exporter, log, keys, key_ids, body)
    finally:
        await app.shutdown()
        log.close()
        platform.close()


async def sign_in(client: httpx.AsyncClient, key: str) -> str:
    """Sign in with ``key``; the session's CSRF token."""
    form = await client.get("/signin")
    token = TOKEN_RE.search(form.text)
    assert form.status_code == 200 and token is not None
    signed = await client.post("/signin", data={"key": key, "csrf_token": token.group(1)})
    assert signed.status_code == 303, signed.text[:300]
    return await csrf_of(client)


async def csrf_of(client: httpx.AsyncClient) -> str:
    page = await client.get("/playground")
    found = META_RE.search(page.text)
    assert page.status_code == 200 and found is not None, page.text[:300]
    return found.group(1)


async def signin_token(client: httpx.AsyncClient) -> str:
    form = await client.get("/signin")
    found = TOKEN_RE.search(form.text)
    assert found is not None
    return found.group(1)


# -- traces, the request log and the usage events --------------------------------------------------------------------

THEIR_TRACE = "0af7651916cd43dd8448eb211c80319c"
THEIR_SPAN = "b7ad6b7169203331"
JUNK = "zqjunk"
"""In every junk header; no trace id, span or log line may ever contain it."""
JUNK_TRACEPARENTS: tuple[bytes, ...] = (
    f"00-{THEIR_TRACE.upper()}-{THEIR_SPAN}-01".encode(),  # upper-case hex is not W3C
    f"ff-{THEIR_TRACE}-{THEIR_SPAN}-01".encode(),  # version ff is forbidden
    f"00-{THEIR_TRACE}-{'0' * 16}-01".encode(),  # an all-zero parent
    f"00-{THEIR_TRACE}-{THEIR_SPAN}-01-{JUNK}".encode(),  # version 00 has nothing after its flags
    f"00-{THEIR_TRACE}-{THEIR_SPAN}-0g".encode(),
    f"00-{THEIR_TRACE}-{THEIR_SPAN}".encode(),
    f'00-"{JUNK}\\",{{}}-{THEIR_SPAN}-01'.encode(),
    f"00-{THEIR_TRACE[:-3]}\xe9\xe9\xe9-{THEIR_SPAN}-01".encode("latin-1"),  # 55 bytes, not all hex
    (JUNK * 2000).encode(),  # 12 KB
)
JUNK_TRACESTATE = f'{JUNK}={JUNK}"\\{{}}'.encode() + b"v" * 8000


async def test_junk_trace_headers_break_no_call_and_reach_no_log_span_or_event(rig: Rig) -> None:
    async with rig.browser() as client:
        token = await sign_in(client, rig.keys["alice"])
        served: list[str] = []
        auth = [(k.encode(), v.encode()) for k, v in rig.auth("alice").items()]
        for junk in JUNK_TRACEPARENTS:
            trace_headers = [(b"traceparent", junk), (b"tracestate", JUNK_TRACESTATE)]
            call = await client.post(
                "/v2/models/digits/infer",
                content=rig.digits_body,
                headers=[*auth, (b"content-type", b"application/json"), *trace_headers],
            )
            assert call.status_code == 200, (junk[:60], call.text)
            served.append(call.headers["x-request-id"])
            page = await client.get("/", headers=trace_headers)
            assert page.status_code == 200
        played = await client.post(
            "/playground/digits",
            data={"pixels": PIXELS, "csrf_token": token},
            headers=[(b"traceparent", JUNK_TRACEPARENTS[0]), (b"tracestate", JUNK_TRACESTATE)],
        )
        assert played.status_code == 200, played.text[:300]
        theirs = f"00-{THEIR_TRACE}-{THEIR_SPAN}-01"  # the one well-formed header: followed
        followed = await client.post(
            "/v2/models/digits/infer",
            content=rig.digits_body,
            headers={**rig.auth("alice"), "content-type": "application/json", "traceparent": theirs},
        )
        assert followed.status_code == 200

    lines = [orjson.loads(line) for line in rig.log_lines()]
    by_request = {line["request_id"]: line for line in lines if line["request_id"]}
    events = rig.event_traces()
    for line in lines:
        assert line["trace_id"] is None or HEX32.fullmatch(line["trace_id"]), line
    for request_id in served:
        logged = by_request[request_id]["trace_id"]
        assert logged is not None and logged != THEIR_TRACE  # a fresh trace: none of the junk was followed
        assert events[request_id] == logged  # the event names the same (the gateway's own) trace
    assert by_request[followed.headers["x-request-id"]]["trace_id"] == THEIR_TRACE
    assert events[followed.headers["x-request-id"]] == THEIR_TRACE
    assert len([t for t in events.values() if t == THEIR_TRACE]) == 1
    assert JUNK not in rig.log_text()

    spans = rig.exporter.get_finished_spans()
    followed_servers, seen = [], set()
    for span in spans:
        shown = f"{span.name} {dict(span.attributes or {})}"
        assert JUNK not in shown and "tracestate" not in shown.lower(), shown[:300]
        if span.parent is not None and f"{span.parent.span_id:016x}" == THEIR_SPAN:
            followed_servers.append(span)
        if span.kind.name == "SERVER" and span.resource.attributes["service.name"] != RUNNER_SERVICE:
            named = str((span.attributes or {}).get("modelmarket.request_id"))
            if named in served:
                seen.add(named)
                assert span.parent is None and f"{span.context.trace_id:032x}" != THEIR_TRACE
    assert seen == set(served)
    assert len(followed_servers) == 1 and f"{followed_servers[0].context.trace_id:032x}" == THEIR_TRACE


HOSTILE_PATHS = (
    ("POST", "/v2/models/a%0Ab%22c%5C/infer"),
    ("POST", "/v2/models/digits%0A%7B%22level%22%3A%22error%22%7D/infer"),
    ("POST", "/v2/models/digits/versions/1%0A%22/infer"),
    ("GET", "/models/%E2%80%A8x%22%3E%3Cscript%3E"),
    ("GET", "/%0D%0Aset-cookie:%20x=1"),
    ("GET", "/static/%00%0A"),
    ("GET", "/metrics%0A"),
    ("GET", "/api/models/%0A%22"),
    ("GET", "/invoices/%22%0A%7D"),
    ("POST", "/playground/a%0Ab%22"),
)


async def test_hostile_paths_and_names_keep_one_json_line_per_request_and_no_secret(rig: Rig) -> None:
    secret_text = "my card number is 4111 1111 1111 1111 and I feel great"
    async with rig.browser() as client:
        token = await sign_in(client, rig.keys["alice"])
        session = client.cookies[SESSION_COOKIE]
        before = len(rig.log_lines())
        sent: list[str] = []
        for method, path in HOSTILE_PATHS:
            headers = {**rig.auth("alice"), "content-type": "application/json", "x-csrf-token": token}
            answer = await client.request(method, path, content=rig.digits_body, headers=headers)
            assert answer.status_code < 500, (path, answer.status_code)
            sent.append(unquote(path))
        chats = [
            ("/v1/chat/completions", {"model": 'x\n"}{', "messages": [{"role": "user", "content": secret_text}]}),
            ("/v1/embeddings", {"model": "\u2028\\", "input": secret_text}),
        ]
        for path, doc in chats:
            answer = await client.post(path, json=doc, headers=rig.auth("alice"))
            assert answer.status_code in (400, 404), answer.text
            sent.append(path)
        said = await client.post("/playground/sentiment", data={"text": secret_text, "csrf_token": token})
        oip_text = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [secret_text]}]}
        inferred = await client.post("/v2/models/sentiment/infer", json=oip_text, headers=rig.auth("alice"))
        assert said.status_code == 200 and inferred.status_code == 200
        sent += ["/playground/sentiment", "/v2/models/sentiment/infer"]
        tried = await client.post("/signin", data={"key": rig.keys["bob"], "csrf_token": await signin_token(client)})
        assert tried.status_code == 303
        sent += ["/signin", "/signin"]

    lines = rig.log_lines()[before:]
    assert len(lines) == len(sent), f"{len(sent)} requests made {len(lines)} lines"
    keys = set(log_line(CallInfo("GET", "/", "dashboard", 0.0), "t"))
    parsed = [json.loads(line) for line in lines]  # every line is one JSON document
    assert all(set(doc) == keys for doc in parsed)
    assert [doc["path"] for doc in parsed] == sent  # each path as asked, in order, whatever it holds
    whole = rig.log_text()
    for secret in (rig.keys["alice"], rig.keys["bob"], session, token, secret_text):
        assert secret not in whole, f"{secret[:12]}... is in the request log"


# -- a runner's span header ----------------------------------------------------------------------------------------


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/v2/models/digits/infer", "headers": []}


PARENT_SLOT = "fedcba9876543210"
"""Stands for the client span's id in a forged header (replaced by the real one before it is checked)."""
DROPPED_SPAN = "1234567890abcdef"
"""The span id of every forgery that must be dropped whole (wrong ids, times, status, size or not JSON)."""
CLEANED_SPAN = "abcdef1234567890"
"""The span id of forgeries whose ids and times are right but whose text is junk: exported with none of it."""


def _forgeries(trace: str, now: int) -> list[bytes]:
    good = {
        "trace": trace,
        "span": DROPPED_SPAN,
        "parent": PARENT_SLOT,
        "name": "POST /v2/models/{model}/infer",
        "start": now,
        "end": now + 1000,
        "status": "unset",
        "attributes": {"http.response.status_code": 200},
    }

    def forged(**changes: Any) -> bytes:
        return orjson.dumps({**good, **changes})

    def cleaned(**changes: Any) -> bytes:
        return orjson.dumps({**good, "span": CLEANED_SPAN, **changes})

    rng = random.Random(18)
    noise = [rng.randbytes(rng.randrange(0, 3000)) for _ in range(150)]
    junk_attributes = {
        "modelmarket.model": JUNK,
        "modelmarket.version": JUNK,
        "modelmarket.runtime": JUNK,
        "modelmarket.sandbox": JUNK,
        "http.route": "/" + JUNK,
        "error.type": JUNK,
        "user.prompt": JUNK,
        "process.pid": JUNK,
        "http.response.status_code": [JUNK],
    }
    return [
        *noise,
        forged(trace=trace.upper()),
        forged(span=DROPPED_SPAN.upper()),
        forged(span=DROPPED_SPAN + "0"),
        forged(parent=PARENT_SLOT.upper()),
        forged(start=float(now)),
        forged(start=True, end=True),
        forged(end=2**64 - 1),
        forged(start=-(2**63)),
        forged(start=now + 1000, end=now),
        forged(status=None),
        forged(status=["unset"]),
        forged(status=JUNK),
        forged(trace=None),
        forged(span=None),
        orjson.dumps(good)[:-1] + b" " * SPAN_HEADER_MAX_BYTES + b"}",  # well-formed, but over the bound
        b'{"a":' * 300 + b"1" + b"}" * 300,
        b"[" * 900 + b"]" * 900,
        b"\xff\xfe" + orjson.dumps(good),
        orjson.dumps(good)[:-1],
        b"",
        cleaned(name=JUNK * 10),
        cleaned(name=[JUNK]),
        cleaned(attributes=junk_attributes),
        cleaned(attributes={"modelmarket.model": JUNK * 400}),
        cleaned(attributes=[["modelmarket.model", JUNK]]),
    ]


def test_a_runners_forged_or_huge_span_header_never_breaks_the_call_nor_reaches_a_trace() -> None:
    exporter = InMemorySpanExporter()
    observed = Observability((GatewayTracing(SimpleSpanProcessor(exporter), 1.0),))
    info, token = observed.begin(_scope())
    ended = 0
    first = client_call("digits", "1.0.0", INFER_ROUTE)
    assert first is not None
    parsed = parse_traceparent(first.traceparent)
    assert parsed is not None
    for raw in _forgeries(f"{parsed[0]:032x}", time.time_ns()):
        call = client_call("digits", "1.0.0", INFER_ROUTE)
        assert call is not None
        header = raw.replace(PARENT_SLOT.encode(), f"{call.span_id:016x}".encode())  # the right parent
        call.end(200, {SPAN_HEADER: header})  # never raises, whatever the runner sent
        ended += 1
    real = client_call("digits", "1.0.0", INFER_ROUTE)  # and a real runner's span still gets through
    assert real is not None
    spans = RunnerSpans("digits", "1.0.0", "onnx", "process")
    span = spans.start(real.traceparent, "POST", INFER_ROUTE)
    assert span is not None
    real.end(200, {SPAN_HEADER: spans.finish(span, 200)})
    info.status = 200
    observed.finish(info, token)
    finished = exporter.get_finished_spans()
    runners = [s for s in finished if s.resource.attributes["service.name"] == RUNNER_SERVICE]
    clients = {s.context.span_id for s in finished if s.kind.name == "CLIENT"}
    assert len(clients) == ended + 1
    assert not [s for s in runners if s.context.span_id == int(DROPPED_SPAN, 16)]
    assert [s for s in runners if s.parent is not None and s.parent.span_id == real.span_id]
    for runner in runners:
        assert runner.parent is not None and runner.parent.span_id in clients
        shown = f"{runner.name} {dict(runner.attributes or {})}"
        assert JUNK not in shown, shown[:300]
        assert all(len(v) <= 128 for v in (runner.attributes or {}).values() if isinstance(v, str)), shown[:300]


def test_a_runners_span_cannot_claim_to_be_another_model() -> None:
    exporter = InMemorySpanExporter()
    observed = Observability((GatewayTracing(SimpleSpanProcessor(exporter), 1.0),))
    info, token = observed.begin(_scope())
    call = client_call("digits", "1.0.0", INFER_ROUTE)
    assert call is not None
    doctored = RunnerSpans("someone-elses-model", "6.6.6", "onnx", "bwrap")  # what provider code in a runner can say
    span = doctored.start(call.traceparent, "POST", INFER_ROUTE)
    assert span is not None
    call.end(200, {SPAN_HEADER: doctored.finish(span, 200)})
    info.status = 200
    observed.finish(info, token)
    [runner] = [s for s in exporter.get_finished_spans() if s.resource.attributes["service.name"] == RUNNER_SERVICE]
    attributes = dict(runner.attributes or {})
    assert attributes.get("modelmarket.model") in (None, "digits"), attributes
    assert attributes.get("modelmarket.version") in (None, "1.0.0"), attributes


# -- /metrics ------------------------------------------------------------------------------------------------------

MARK = "zq"
REQUEST_FAMILIES = (
    "modelmarket_requests",
    "modelmarket_request_duration_seconds",
    "modelmarket_errors",
    "modelmarket_limit_refusals",
    "modelmarket_inference_units",
    "modelmarket_revenue",
)


def _series(exposition: str) -> set[tuple[str, frozenset[tuple[str, str]]]]:
    return {
        (s.name, frozenset(s.labels.items()))
        for family in text_string_to_metric_families(exposition)
        if family.name in REQUEST_FAMILIES
        for s in family.samples
    }


async def _made_up_dashboard_names(client: httpx.AsyncClient, token: str, tag: str, count: int) -> None:
    for i in range(count):
        name = f"{tag}{i:03d}{MARK}"
        for method, path, status in (
            ("GET", f"/models/{name}", 404),
            ("GET", f"/models/digits?version={name}", 404),
            ("GET", f"/playground/{name}", 404),
            ("POST", f"/playground/{name}", 404),
            ("GET", f"/invoices/{name}", 404),
            ("GET", f"/invoices/{name}/print", 404),
            ("GET", f"/static/{name}.css", 404),
            ("GET", f"/{name}/{name}", 404),
            ("OPTIONS", f"/models/{name}", 405),
            ("PUT", f"/usage/{name}", 404),
        ):
            data = {"pixels": PIXELS, "csrf_token": token} if method == "POST" else None
            answer = await client.request(method, path, data=data)
            assert answer.status_code == status, (method, path, answer.status_code)


async def test_made_up_names_on_dashboard_paths_make_no_series(rig: Rig) -> None:
    async with rig.browser() as client:
        token = await sign_in(client, rig.keys["alice"])
        await _made_up_dashboard_names(client, token, "warm", 2)
        await rig.scrape(client)
        before = _series(await rig.scrape(client))
        await _made_up_dashboard_names(client, token, "grow", 40)
        exposition = await rig.scrape(client)
    assert MARK not in exposition
    grown = _series(exposition) - before
    assert len(grown) <= 2, sorted(grown)[:10]  # the scrape itself counted; nothing per made-up name
    catalogue = rig.app.state.catalogue
    for _, labels in _series(exposition):
        found = dict(labels)
        model, version = found.get("model", ""), found.get("version", "")
        assert model == "" or model in catalogue.models, model
        assert version == "" or version in catalogue.models[model].versions, (model, version)


def test_a_routed_calls_inference_units_count_under_the_model_that_served_it() -> None:
    catalogue = SimpleNamespace(models={"digits": SimpleNamespace(versions={"1.0.0": None})})
    metrics = GatewayMetrics(lambda: catalogue)  # a stand-in with the one thing read: models and their versions
    info = CallInfo("POST", "/v2/models/fast-digits/infer", "oip", time.perf_counter(), status=200)
    note_answer_headers(
        info,
        [
            (b"x-modelmarket-route", b"fast-digits->digits@1.0.0"),  # what gateway/attempts.py labels a route's call
            (b"x-modelmarket-iu", b"1"),
            (b"x-modelmarket-cost", b"0.001 USD"),
        ],
    )
    info.ended = info.started + 0.01
    metrics.record(info)
    metrics.refresh()
    body, _ = metrics.render(None)
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    units = frozenset({("model", "digits"), ("version", "1.0.0")})
    assert samples.get(("modelmarket_inference_units_total", units)) == 1.0, sorted(samples)[:20]


# -- the dashboard: CSRF on every POST route ----------------------------------------------------------------------

POST_ROUTES: tuple[tuple[str, dict[str, str]], ...] = (
    ("/signout", {}),
    ("/playground/digits", {"pixels": PIXELS}),
    ("/audit", {}),
)


@pytest.mark.parametrize(("path", "form"), POST_ROUTES, ids=[p for p, _ in POST_ROUTES])
async def test_every_post_route_refuses_a_missing_foreign_or_cross_site_token(
    rig: Rig, path: str, form: dict[str, str]
) -> None:
    async with rig.browser() as root, rig.browser(("127.0.0.2", 40000)) as other:
        token = await sign_in(root, rig.keys["root"])
        others = await sign_in(other, rig.keys["alice"])
        for data, headers in (
            (form, {}),
            ({**form, "csrf_token": ""}, {}),
            ({**form, "csrf_token": others}, {}),
            (form, {"X-CSRF-Token": others}),
            ({**form, "csrf_token": token}, {"X-CSRF-Token": others}),  # the header is the one that counts
            ({**form, "csrf_token": token + "x"}, {}),
            ({**form, "csrf_token": token}, {"Origin": "http://evil.test"}),
            ({**form, "csrf_token": token}, {"Origin": "null"}),
            ({**form, "csrf_token": token}, {"Origin": "http://dash.test.evil.test"}),
            ({**form, "csrf_token": token}, {"Origin": "http://dash.test@evil.test"}),
            ({**form, "csrf_token": token}, {"Sec-Fetch-Site": "same-site"}),
            ({**form, "csrf_token": token}, {"Sec-Fetch-Site": "cross-site", "HX-Request": "true"}),
        ):
            refused = await root.post(path, data=data, headers=headers)
            assert refused.status_code == 403, (data.keys(), headers, refused.status_code)
        assert (await root.get("/usage")).status_code == 200  # still signed in
        assert rig.platform.audit.last_full_verification() is None  # no verification ran
        assert rig.billed("root") == []
        done = await root.post(path, data={**form, "csrf_token": token}, headers={"Origin": BASE})
        assert done.status_code in (200, 303), done.text[:300]  # the same form, from this site, is served


async def test_a_page_number_of_unicode_digits_is_a_bad_request(rig: Rig) -> None:
    async with rig.browser() as client:
        await sign_in(client, rig.keys["root"])
        for params in ({"page": "\u00b2"}, {"size": "\u2467"}, {"page": "\u0661", "size": "\u00b9"}):
            answer = await client.get("/audit", params=params)
            assert answer.status_code in (200, 400), (params, answer.status_code)


async def test_a_consumer_cannot_start_the_audit_verification_with_its_own_token(rig: Rig) -> None:
    async with rig.browser() as client:
        token = await sign_in(client, rig.keys["alice"])
        for headers in ({}, {"HX-Request": "true"}):
            refused = await client.post("/audit", data={"csrf_token": token}, headers=headers)
            assert refused.status_code == 403 and "cannot open this page" in refused.text
    assert rig.platform.audit.last_full_verification() is None
    assert rig.platform.audit.full_verification_running() is None


# -- the dashboard: sign-in ----------------------------------------------------------------------------------------


async def test_a_sign_in_body_with_many_fields_is_refused_not_a_crash(rig: Rig) -> None:
    async with rig.browser() as client:
        token = await signin_token(client)
        body = f"key=mm_wrong&csrf_token={token}&next=/" + "&x=1" * 6
        answer = await client.post(
            "/signin", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert answer.status_code in (400, 401, 403, 413), answer.status_code
        assert SESSION_COOKIE not in client.cookies


async def test_concurrent_wrong_keys_cannot_outrun_the_sign_in_budget(rig: Rig) -> None:
    async with rig.browser(("198.51.100.7", 40000)) as client:
        token = await signin_token(client)

        async def attempt(i: int) -> int:
            answer = await client.post("/signin", data={"key": f"mm_guess-{i}", "csrf_token": token})
            return answer.status_code

        statuses = await asyncio.gather(*(attempt(i) for i in range(SIGNIN_FAILURES_MAX * 3)))
    assert set(statuses) <= {401, 429}, statuses
    checked = statuses.count(401)
    assert checked <= SIGNIN_FAILURES_MAX, f"{checked} keys were tried; the budget is {SIGNIN_FAILURES_MAX}"


async def test_odd_sign_in_bodies_are_refused_cleanly(rig: Rig) -> None:
    async with rig.browser(("203.0.113.9", 40000)) as client:
        token = await signin_token(client)
        form = "application/x-www-form-urlencoded"
        for body, content_type, status in (
            (b"\xff\xfe\x00key=\xc3\x28&csrf_token=" + token.encode(), form, 401),  # not UTF-8
            (f"key={'k' * 3900}&csrf_token={token}".encode(), form, 401),  # a key far past its bound
            (f"key=%00mm_{'a' * 40}&csrf_token={token}".encode(), form, 401),
            (f"key=mm_wrong&key={rig.keys['alice']}&csrf_token={token}".encode(), form, 401),  # the first counts
            (b"", form, 403),
            (orjson.dumps({"key": rig.keys["alice"], "csrf_token": token}), "application/json", 403),
            (
                f'--b\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{token}\r\n--b--\r\n'.encode(),
                "multipart/form-data; boundary=b",
                403,
            ),
        ):
            answer = await client.post("/signin", content=body, headers={"content-type": content_type})
            assert answer.status_code == status, (body[:40], answer.status_code, answer.text[:200])
            assert SESSION_COOKIE not in client.cookies and "<html" in answer.text


async def test_an_old_csrf_token_dies_with_its_session(rig: Rig) -> None:
    async with rig.browser() as client:
        first = await sign_in(client, rig.keys["alice"])
        assert (await client.post("/signout", data={"csrf_token": first})).status_code == 303
        second = await sign_in(client, rig.keys["alice"])
        assert second != first
        for headers, data in (
            ({}, {"pixels": PIXELS, "csrf_token": first}),
            ({"X-CSRF-Token": first}, {"pixels": PIXELS}),
        ):
            stale = await client.post("/playground/digits", data=data, headers=headers)
            assert stale.status_code == 403
        assert (await client.get("/usage")).status_code == 200
    assert rig.billed("alice") == []


async def test_a_revoked_keys_session_can_post_nothing(rig: Rig) -> None:
    async with rig.browser() as client, rig.browser(("127.0.0.3", 40000)) as htmx:
        token = await sign_in(client, rig.keys["alice"])
        htmx_token = await sign_in(htmx, rig.keys["alice"])
        rig.platform.accounts.revoke_key(rig.key_ids["alice"])
        await rig.app.state.keys.reload()  # the gateway's key snapshot, as its refresh would
        plain = await client.post("/playground/digits", data={"pixels": PIXELS, "csrf_token": token})
        assert plain.status_code == 303 and plain.headers["location"].startswith("/signin")
        assert plain.headers.get("set-cookie", "").startswith((f'{SESSION_COOKIE}=""', f"{SESSION_COOKIE}=;"))
        partial = await htmx.post(
            "/playground/digits", data={"pixels": PIXELS}, headers={"X-CSRF-Token": htmx_token, "HX-Request": "true"}
        )
        assert partial.status_code == 401 and partial.headers["hx-redirect"].startswith("/signin")
        assert partial.content == b""
        assert (await htmx.post("/signout", data={"csrf_token": htmx_token})).status_code == 303
        assert (await client.get("/usage")).status_code == 303
    assert rig.billed("alice") == []


SIGNED_IN_PAGES = (
    "/usage",
    "/invoices",
    "/invoices/inv_1",
    "/invoices/inv_1/print",
    "/playground",
    "/playground/digits",
    "/statements",
    "/payouts",
    "/audit",
    "/runners",
)


async def test_htmx_partials_of_signed_in_pages_need_a_session(rig: Rig) -> None:
    async with rig.browser() as client:
        for cookie in (None, "A" * 43, "not-a-session"):
            sent = {} if cookie is None else {"Cookie": f"{SESSION_COOKIE}={cookie}"}  # sent every time
            for path in SIGNED_IN_PAGES:
                for restore in (False, True):
                    headers = {**sent, "HX-Request": "true"}
                    if restore:
                        headers["HX-History-Restore-Request"] = "true"
                    answer = await client.get(path, headers=headers)
                    if restore:
                        assert answer.status_code == 303, path  # a whole-page request: to the sign-in page
                    else:
                        assert answer.status_code == 401, (path, answer.status_code)
                        assert answer.headers["hx-redirect"] == "/signin?next=" + quote(path, safe="")
                        assert answer.content == b""
                    if cookie is not None:  # an unknown session's cookie is cleared
                        cleared = answer.headers.get("set-cookie", "")
                        assert cleared.startswith((f'{SESSION_COOKIE}=""', f"{SESSION_COOKIE}=;")), (path, cleared)


@pytest.mark.parametrize(
    "path",
    [
        "/models/..%2F..%2Fsettings.py",
        "/models/%2e%2e",
        "/models/digits%2F..%2F..%2F..%2Fpyproject.toml",
        "/models/%2e%2e%2f%2e%2e%2fpyproject.toml",
        "/models/digits?version=..%2F..%2F1.0.0",
        "/invoices/..%2F..%2Fusage",
        "/invoices/%2e%2e%2fprint",
        "/invoices/%2e%2e/print",
        "/invoices/..%5C..%5Cetc%5Cpasswd",
        "/playground/..%2Fdigits",
        "/playground/%2e%2e",
        "/playground/digits%2F..%2Fsentiment",
    ],
)
async def test_path_tricks_in_model_invoice_and_playground_names_find_nothing(rig: Rig, path: str) -> None:
    async with rig.browser() as client:
        await sign_in(client, rig.keys["alice"])
        answer = await client.get(path)
    assert answer.status_code == 404, (path, answer.status_code)
    for leak in ("[project]", "import ", "root:", "model_file", "data-model="):
        assert leak not in answer.text, (path, leak)


def _assert_shown_as_text(page: httpx.Response, where: str) -> None:
    assert page.status_code in (200, 400, 404), (where, page.status_code)
    body = page.text
    for raw in ("<script>alert", "<img src=x", 'onmouseover="alert', "</textarea><script"):
        assert raw not in body, (where, raw)
    scripts = re.findall(r"<script\b[^>]*>", body)
    assert all('src="/static/' in tag for tag in scripts), (where, scripts)
    assert "unsafe-inline" not in page.headers["content-security-policy"]


async def test_markup_in_card_fields_and_query_echoes_is_text_on_every_page(rig: Rig) -> None:
    async with rig.browser() as client:
        pages = {
            "catalogue": await client.get("/"),
            "search": await client.get("/", params={"q": XSS_MODEL}),
            "by license": await client.get("/", params={"license": "MIT " + MARKUP}),
            "model": await client.get(f"/models/{XSS_MODEL}"),
        }
        await sign_in(client, rig.keys["root"])
        pages["playground"] = await client.get("/playground")
        pages["its playground"] = await client.get(f"/playground/{XSS_MODEL}")
        for what in ("catalogue", "model", "playground", "its playground"):
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages[what].text, what  # the text is there, escaped
        assert "&lt;/textarea&gt;&lt;script&gt;" in pages["its playground"].text  # the example, in its textarea
        pages["not found"] = await client.get("/models/" + quote(MARKUP, safe=""))
        for path, params in (
            ("/", {"q": SHORT_MARKUP, "max_price": SHORT_MARKUP, "sort": SHORT_MARKUP, "task": SHORT_MARKUP}),
            ("/usage", {"since": SHORT_MARKUP, "until": SHORT_MARKUP}),
            ("/invoices", {"period": SHORT_MARKUP}),
            ("/statements", {"period": SHORT_MARKUP, "account": SHORT_MARKUP}),
            ("/payouts", {"period": SHORT_MARKUP, "account": SHORT_MARKUP}),
            ("/audit", {"page": SHORT_MARKUP}),
            ("/signin", {"next": SHORT_MARKUP}),
            (f"/models/{XSS_MODEL}", {"version": SHORT_MARKUP}),
        ):
            pages[f"{path} echo"] = await client.get(path, params=params)
    for where, page in pages.items():
        _assert_shown_as_text(page, where)


# -- the playground: billing ---------------------------------------------------------------------------------------


async def test_the_playground_bills_a_call_once_and_a_refused_or_failed_call_never(rig: Rig) -> None:
    async with rig.browser() as alice, rig.browser(("127.0.0.4", 40000)) as broke:
        token = await sign_in(alice, rig.keys["alice"])
        broke_token = await sign_in(broke, rig.keys["broke"])
        partial = await alice.post(
            "/playground/digits", data={"pixels": PIXELS, "csrf_token": token}, headers={"HX-Request": "true"}
        )
        whole = await alice.post("/playground/digits", data={"pixels": PIXELS, "csrf_token": token})
        assert partial.status_code == 200 and whole.status_code == 200
        assert 'class="iu">1<' in partial.text and 'class="iu">1<' in whole.text
        for data in ({"pixels": "1 2 3"}, {"pixels": " ".join(["nan"] * 64)}, {"pixels": " ".join(["0"] * 64)}, {}):
            bad = await alice.post("/playground/digits", data={**data, "csrf_token": token})
            assert bad.status_code == 400, data
        failed = await alice.post(f"/playground/{BROKEN_MODEL}", data={"pixels": PIXELS, "csrf_token": token})
        assert failed.status_code >= 500 and 'class="iu"' not in failed.text
        refused = await broke.post(
            "/playground/digits", data={"pixels": PIXELS, "csrf_token": broke_token}, headers={"HX-Request": "true"}
        )
        assert refused.status_code == 402 and "budget" in refused.text
        head = await alice.head("/playground/digits")
        assert head.status_code == 200
        exposition = await rig.scrape(alice)
    assert rig.billed("alice") == ["digits", "digits"]
    assert rig.billed("broke") == []
    units = {
        frozenset(s.labels.items()): s.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "modelmarket_inference_units"
        for s in family.samples
    }
    assert units == {frozenset({("model", "digits"), ("version", "1.0.0")}): 2.0}, units
    billed_lines = [doc for doc in map(orjson.loads, rig.log_lines()) if doc["iu"] is not None]
    assert [(d["protocol"], d["model"], d["iu"], d["status"]) for d in billed_lines] == [
        ("dashboard", "digits", "1", 200)
    ] * 2


def _wav(payload_bytes: int) -> bytes:
    return b"RIFF" + (payload_bytes + 4).to_bytes(4, "little") + b"WAVE" + b"\0" * payload_bytes


async def test_uploads_over_the_field_limit_not_wav_or_too_many_bill_nothing(rig: Rig) -> None:
    async with rig.browser() as client:
        token = await sign_in(client, rig.keys["alice"])
        headers = {"X-CSRF-Token": token, "HX-Request": "true"}
        path = f"/playground/{AUDIO_MODEL}"
        for files, data, words in (
            ({"audio": ("big.wav", _wav(UPLOAD_MAX_BYTES), "audio/wav")}, None, "larger than"),  # body fits, file not
            ({"audio": ("a.wav", b"#!/bin/sh\nrm -rf /\n", "audio/wav")}, None, "not a WAV file"),
            ([("audio", ("a.wav", _wav(64), "audio/wav"))] * 3, None, "Too many files"),
            (None, {"audio": "RIFF0000WAVE"}, "choose a WAV file"),  # a text field where the file goes
            ({"other": ("a.wav", _wav(64), "audio/wav")}, None, "choose a WAV file"),
        ):
            refused = await client.post(path, files=files, data=data, headers=headers)
            assert refused.status_code == 400 and words in refused.text, (words, refused.text[:300])
        fits = await client.post(path, files={"audio": ("a.wav", _wav(64), "audio/wav")}, headers=headers)
        assert fits.status_code == 200 and 'class="iu"' in fits.text
    assert rig.billed("alice") == [AUDIO_MODEL]


# -- the dashboard: other methods ----------------------------------------------------------------------------------


async def test_other_methods_on_dashboard_routes_change_nothing(rig: Rig) -> None:
    async with rig.browser() as client:
        token = await sign_in(client, rig.keys["root"])
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND"):
            for path in ("/signout", "/audit", "/playground/digits", "/", "/usage", "/signin", "/static/dashboard.css"):
                answer = await client.request(
                    method,
                    path,
                    data={"csrf_token": token, "pixels": PIXELS, "key": rig.keys["alice"]},
                    headers={
                        "X-CSRF-Token": token,
                        "Origin": "http://evil.test",
                        "Access-Control-Request-Method": "POST",
                    },
                )
                assert answer.status_code in (404, 405), (method, path, answer.status_code)
                assert not any(k.lower().startswith("access-control-") for k in answer.headers), (method, path)
                assert "set-cookie" not in answer.headers or f"{SESSION_COOKIE}=" not in answer.headers["set-cookie"]
        for path, status in (("/signout", 405), ("/audit", 200), ("/playground/digits", 200), ("/", 200)):
            head = await client.head(path, headers={"X-CSRF-Token": token})
            assert head.status_code == status, (path, head.status_code)
        assert (await client.get("/usage")).status_code == 200  # still signed in as root
    assert rig.platform.audit.last_full_verification() is None
    assert rig.billed("root") == []
