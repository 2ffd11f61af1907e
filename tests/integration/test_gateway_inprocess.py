"""The gateway in-process: the ASGI edge and the data plane over httpx.ASGITransport, with a fake runner pool,
a list-backed event writer, in-memory stores and a pinned clock. No subprocess, no socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from fakes import FakeBlobStore, FakeRuntimes, FakeStore
from modelmarket.accounts import AccountService
from modelmarket.core.ids import RequestIds
from modelmarket.gateway.api import PUBLIC_ROUTES, ApiContext, build_router
from modelmarket.gateway.app import GatewayApp, GatewayParts
from modelmarket.gateway.auth import authenticate
from modelmarket.gateway.dataplane import DataPlane
from modelmarket.gateway.state import GatewayState
from modelmarket.metering import MeteringService, UsageEvent, UsageService
from modelmarket.metering.ports import EventLogFull, KeptAnswer, KeyLookup
from modelmarket.registry import CatalogueLoader, RegistryService, VersionRecord

T0 = datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)
PIXELS = {"name": "pixels", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * 8}
pytestmark = pytest.mark.anyio
MASK = {"name": "mask", "shape": [5], "datatype": "INT64", "data": [1, 2, 3, 4, 5]}


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class FakeAnswer:
    status: int
    body: bytes
    headers: dict[bytes, bytes] = field(default_factory=lambda: {b"content-type": b"application/json"})


@dataclass
class FakeRunners:
    answer: FakeAnswer = field(default_factory=lambda: FakeAnswer(200, b'{"outputs": []}'))
    calls: list[tuple[str, bytes]] = field(default_factory=list)
    ready: bool = True
    preloaded: set[str] = field(default_factory=set)

    async def pool_for(self, version: VersionRecord) -> FakeRunners:
        return self

    async def request(self, method: str, path: str, body: bytes = b"", headers: Any = None) -> FakeAnswer:
        self.calls.append((path, body))
        return self.answer

    def is_ready(self, version: VersionRecord) -> bool:
        return self.ready

    def preloaded_ready(self) -> bool:
        return self.ready

    def not_ready_reasons(self) -> list[str]:
        return ["runner for m@1.0.0 is hung"]

    def start_monitor(self) -> None: ...

    async def stop(self) -> None: ...


class ListWriter:
    """The event log as a list (with the answers kept beside events), surviving a "restart" of the data plane."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []
        self.kept: dict[str, KeptAnswer] = {}
        self.full = False

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def lookup(self, event_id: str) -> KeyLookup:
        return KeyLookup(any(e.id == event_id for e in self.events), self.kept.get(event_id))

    def append(self, event_id: str, payload: bytes, kept: KeptAnswer | None = None) -> asyncio.Future[None]:
        if self.full:
            raise EventLogFull("usage event log is at its queue bound; try again shortly")
        if not any(e.id == event_id for e in self.events):
            self.events.append(UsageEvent.decode(payload))
            if kept is not None:
                self.kept[event_id] = kept
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


@dataclass
class Rig:
    client: httpx.AsyncClient
    runners: FakeRunners
    writer: ListWriter
    key: str
    health: dict[str, str | None]
    plane: DataPlane


def _package(root: Path) -> Path:
    root.mkdir()
    (root / "model.onnx").write_bytes(b"not really onnx: the runner is fake")
    (root / "modelmarket.yaml").write_text(
        "name: m\nversion: 1.0.0\ntask: t\nmodality: image\nruntime: onnx\nprovider: acme\nlicense: MIT\n"
        "artifacts: [{path: model.onnx}]\n"
        "inputs: [{name: pixels, datatype: FP32, shape: [-1, 4]}, {name: mask, datatype: INT64, shape: [-1]}]\n"
        "outputs: [{name: label, datatype: INT64, shape: [-1]}]\n"
        "pricing: {unit: image, price_per_iu: '0.001', currency: USD}\ncard: {summary: s}\n"
    )
    return root


@pytest.fixture()
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = FakeStore()
    accounts = AccountService(store, lambda: T0)
    accounts.create("acme", "provider")
    accounts.create("c", "consumer")
    key = accounts.issue_key("c").secret
    RegistryService(store, FakeBlobStore(tmp_path), lambda: T0, FakeRuntimes()).publish(_package(tmp_path / "pkg"))
    state = GatewayState(accounts.key_index, CatalogueLoader(store).load, refresh_s=60)
    runners, writer = FakeRunners(), ListWriter()
    health: dict[str, str | None] = {"metering": None}
    plane = DataPlane(
        state,
        runners,
        writer,
        lambda: T0,
        source="modelmarket/test",
        max_request_bytes=1 << 20,
        request_ids=RequestIds("req_"),
        health_checks=(lambda: health["metering"],),
        max_kept_answer_bytes=64,
    )
    usage = UsageService(store, MeteringService(store, lambda: _EmptyLog(), lambda: T0))

    async def auth(request: Any) -> Any:
        return await authenticate(state, request.scope)

    api = build_router(ApiContext(lambda: state.catalogue, usage), auth)
    app = GatewayApp(GatewayParts(plane, state, api, writer, runners, None, 1 << 20, preload=False))
    await app.startup()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield Rig(client, runners, writer, key, health, plane)
    await app.shutdown()


class _EmptyLog:
    def read(self, after_offset: int, limit: int) -> list[Any]:
        return []

    def last_offset(self) -> int:
        return 0

    def close(self) -> None: ...


def _infer(rig: Rig, inputs: list[dict[str, Any]], **headers: str) -> Any:
    return rig.client.post(
        "/v2/models/m/infer",
        content=orjson.dumps({"inputs": inputs}),
        headers={"Authorization": f"Bearer {rig.key}", **headers},
    )


async def test_a_served_call_is_billed_once_at_the_pinned_time_counting_the_first_declared_input(rig: Rig) -> None:
    response = await _infer(rig, [MASK, PIXELS])  # the client sends `mask` first; images count on `pixels`
    assert response.status_code == 200, response.text
    (event,) = rig.writer.events
    assert (event.time, event.quantity, event.model) == (T0, 2, "m")
    assert response.headers["x-request-id"] == event.id
    assert rig.runners.calls[0][0] == "/v2/models/m/versions/1.0.0/infer"


@pytest.mark.parametrize(("runner_status", "expected"), [(400, 400), (413, 413), (500, 502)])
async def test_a_failed_call_is_never_billed(rig: Rig, runner_status: int, expected: int) -> None:
    rig.runners.answer = FakeAnswer(runner_status, b'{"error": "model says no"}')
    response = await _infer(rig, [PIXELS, MASK])
    assert response.status_code == expected
    assert "model says no" in response.json()["error"]
    assert rig.writer.events == []


async def test_bad_input_is_refused_before_the_runner(rig: Rig) -> None:
    bad = {**PIXELS, "shape": [2, 5], "data": [0.0] * 10}
    response = await _infer(rig, [bad, MASK])
    assert response.status_code == 400 and "pixels" in response.json()["error"]
    assert rig.runners.calls == [] and rig.writer.events == []


async def test_a_full_event_log_is_503_with_retry_after_and_unbilled(rig: Rig) -> None:
    rig.writer.full = True
    response = await _infer(rig, [PIXELS, MASK])
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "queue bound" in response.json()["error"]


async def test_health_answers_json_bodies_and_readiness_names_what_is_wrong(rig: Rig) -> None:
    live = await rig.client.get("/v2/health/live")
    assert (live.status_code, live.json()) == (200, {"live": True})
    ready = await rig.client.get("/v2/health/ready")
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    rig.health["metering"] = "metering stopped: the log was truncated"
    rig.runners.ready = False
    not_ready = await rig.client.get("/v2/health/ready")
    assert not_ready.status_code == 400 and not_ready.json()["ready"] is False
    assert "truncated" in not_ready.json()["error"] and "hung" in not_ready.json()["error"]


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 8_000_000,  # 8 MB
        "00-" + "0" * 32 + "-" + "b" * 16 + "-01",  # all-zero trace id
        "zz-" + "a" * 32 + "-" + "b" * 16 + "-01",
        "garbage",
    ],
)
async def test_an_invalid_traceparent_is_never_copied_into_the_event(rig: Rig, traceparent: str) -> None:
    response = await _infer(rig, [PIXELS, MASK], traceparent=traceparent)
    assert response.status_code == 200
    assert rig.writer.events[0].trace_id is None
    assert len(rig.writer.events[0].encode()) < 2000


async def test_a_valid_traceparent_is_kept(rig: Rig) -> None:
    await _infer(rig, [PIXELS, MASK], traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    assert rig.writer.events[0].trace_id == "a" * 32


@pytest.mark.parametrize("path", ["/v2/models/m%2F..", "/v2/models/m/versions//infer", "/v2/models/m/versions/"])
async def test_odd_model_paths_do_not_resolve(rig: Rig, path: str) -> None:
    response = await rig.client.post(path, content=b"{}", headers={"Authorization": f"Bearer {rig.key}"})
    assert response.status_code == 404
    assert rig.writer.events == []


async def test_api_requires_a_key_on_every_route_not_listed_public(rig: Rig) -> None:
    router_paths = {route.path for route in rig.client._transport.app.parts.api.routes}  # type: ignore[attr-defined]
    for path in sorted(router_paths - PUBLIC_ROUTES):
        response = await rig.client.get(path.replace("{name}", "m").replace("{ref}", "1.0.0"))
        assert response.status_code == 401, path
    for path in sorted(PUBLIC_ROUTES):
        response = await rig.client.get(path.replace("{name}", "m").replace("{ref}", "1.0.0"))
        assert response.status_code == 200, path
    assert (await rig.client.get("/api/nothing")).status_code == 404
    assert (await rig.client.post("/api/models")).status_code == 405


async def test_usage_dates_must_exist(rig: Rig) -> None:
    auth = {"Authorization": f"Bearer {rig.key}"}
    bad = await rig.client.get("/api/usage", params={"since": "2026-02-30"}, headers=auth)
    assert bad.status_code == 400 and "since" in bad.json()["error"]
    good = await rig.client.get("/api/usage", params={"since": "2026-01-01"}, headers=auth)
    assert good.status_code == 200 and good.json()["account"] == "c"


async def test_models_list_is_semver_sorted_in_one_shape(rig: Rig) -> None:
    doc = (await rig.client.get("/api/models")).json()
    assert doc["total"] == 1
    assert doc["models"][0]["pricing"] == {"unit": "image", "price_per_iu": "0.001", "currency": "USD"}


# -- Idempotency-Key ----------------------------------------------------------------------------------------
async def test_a_retry_with_the_same_key_gets_the_same_answer_and_is_not_billed_again(rig: Rig) -> None:
    first = await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-1"})
    rig.runners.answer = FakeAnswer(200, b'{"outputs": ["different"]}')  # a second run would answer otherwise
    again = await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.content == first.content and again.headers["idempotency-replayed"] == "true"
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert len(rig.writer.events) == 1 and len(rig.runners.calls) == 1


async def test_the_same_key_for_another_request_is_refused_unbilled(rig: Rig) -> None:
    await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-2"})
    other = {**MASK, "data": [9, 9, 9, 9, 9]}
    response = await _infer(rig, [PIXELS, other], **{"Idempotency-Key": "k-2"})
    assert response.status_code == 422 and "Idempotency-Key" in response.json()["error"]
    assert len(rig.writer.events) == 1


async def test_concurrent_calls_with_one_key_run_the_model_once(rig: Rig) -> None:
    answers = await asyncio.gather(*[_infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-3"}) for _ in range(5)])
    assert [a.status_code for a in answers] == [200] * 5
    assert len({a.content for a in answers}) == 1
    assert len(rig.writer.events) == 1 and len(rig.runners.calls) == 1


async def test_a_failed_call_with_a_key_can_be_retried_and_is_billed_once(rig: Rig) -> None:
    rig.runners.answer = FakeAnswer(500, b'{"error": "boom"}')
    assert (await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-4"})).status_code == 502
    rig.runners.answer = FakeAnswer(200, b'{"outputs": []}')
    assert (await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-4"})).status_code == 200
    assert (await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-4"})).status_code == 200
    assert len(rig.writer.events) == 1 and len(rig.runners.calls) == 2


async def test_after_a_restart_the_kept_answer_is_replayed_from_the_log(rig: Rig) -> None:
    first = await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-5"})
    rig.plane._in_flight.clear()  # a new process knows only what the log kept
    again = await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-5"})
    assert again.content == first.content and len(rig.writer.events) == 1


async def test_an_answer_too_large_to_keep_is_served_once_and_a_retry_gets_409(rig: Rig) -> None:
    rig.runners.answer = FakeAnswer(200, b'{"outputs": ["' + b"x" * 100 + b'"]}')  # over the rig's 64-byte bound
    assert (await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-6"})).status_code == 200
    retry = await _infer(rig, [PIXELS, MASK], **{"Idempotency-Key": "k-6"})
    assert retry.status_code == 409 and "no longer kept" in retry.json()["error"]
    assert len(rig.writer.events) == 1 and len(rig.runners.calls) == 1


@pytest.mark.parametrize("key", ["", "has space", "x" * 201, "caf\u00e9"])
async def test_a_malformed_key_is_refused(rig: Rig, key: str) -> None:
    response = await rig.client.post(
        "/v2/models/m/infer",
        content=orjson.dumps({"inputs": [PIXELS, MASK]}),
        headers=[("Authorization", f"Bearer {rig.key}"), ("Idempotency-Key", key.encode())],
    )
    assert response.status_code == 400 and "Idempotency-Key" in response.json()["error"]
    assert rig.writer.events == []
