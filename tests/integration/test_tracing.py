"""Traces across the gateway -> runner process boundary: a gateway built in the test process (``bootstrap_gateway``)
with tracing on and an in-memory span exporter, calling `digits` in a real runner process; and a real gateway
process exporting over OTLP/HTTP to a receiver in the test.

The runner's span is made in the runner (its ``process.pid`` is not ours), travels back in the
``x-modelmarket-span`` header and is exported by the gateway as a span of service ``modelmarket-runner``, child of
the gateway's CLIENT span, itself a child of the gateway's SERVER span, whose parent is the caller's span."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from tests.e2e.conftest import Cli, EnvCli, Gateway, start_gateway, stop_gateway

from engines import log_payloads
from modelmarket.bootstrap import bootstrap
from modelmarket.demo._digits import build_digits
from modelmarket.gateway.app import GatewayApp
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.observability import Observability
from modelmarket.observability.tracing import GATEWAY_SERVICE, RUNNER_SERVICE, GatewayTracing
from modelmarket.settings import Settings

pytestmark = pytest.mark.anyio
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Published:
    home: Path
    key: str
    body: bytes


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    """A home with `digits` published through the CLI (the gate's test policy) and a consumer's key."""
    root = tmp_path_factory.mktemp("tracing")
    package = build_digits(root / "packages" / "digits", root / "examples", lambda _: None)
    cli = Cli(root / "home")
    cli.run("accounts", "create", "demo-provider", "--role", "provider")
    cli.run("publish", str(package))
    return Published(cli.home, cli.new_consumer("caller"), (root / "examples" / "digit.json").read_bytes())


@dataclass
class Rig:
    client: httpx.AsyncClient
    exporter: InMemorySpanExporter
    app: GatewayApp
    published: Published

    async def infer(self, traceparent: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.published.key}", "Content-Type": "application/json"}
        if traceparent is not None:
            headers["traceparent"] = traceparent
        response = await self.client.post("/v2/models/digits/infer", content=self.published.body, headers=headers)
        assert response.status_code == 200, response.text
        return response


@pytest.fixture()
async def rig(published: Published) -> AsyncIterator[Rig]:
    platform = bootstrap(Settings(home=published.home, tracing=True))
    parts = bootstrap_gateway(platform, preload=False, metering_child=False)
    exporter = InMemorySpanExporter()
    parts.observability = Observability((GatewayTracing(SimpleSpanProcessor(exporter), 1.0),))
    app = GatewayApp(parts)
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=60) as client:
            yield Rig(client, exporter, app, published)
    finally:
        await app.shutdown()
        platform.close()


def _spans(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    """The spans of the one call made: the gateway's server and client spans and the runner's span, by role."""
    found: dict[str, ReadableSpan] = {}
    for span in exporter.get_finished_spans():
        service = span.resource.attributes["service.name"]
        role = (
            "runner" if service == RUNNER_SERVICE else {SpanKind.SERVER: "server", SpanKind.CLIENT: "client"}[span.kind]
        )
        assert role not in found, f"two {role} spans for one call"
        found[role] = span
    assert set(found) == {"server", "client", "runner"}, found
    return found


def _ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _parent(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


def _event_trace_ids(home: Path) -> list[str | None]:
    return [json.loads(payload)["data"]["trace_id"] for payload in log_payloads(home)]


async def test_the_runners_span_made_in_its_own_process_is_a_child_of_the_gateways_call(rig: Rig) -> None:
    await rig.infer(f"00-{CALLER_TRACE}-{CALLER_SPAN}-01")
    spans = _spans(rig.exporter)
    server, client, runner = spans["server"], spans["client"], spans["runner"]

    assert {_ids(s)[0] for s in spans.values()} == {CALLER_TRACE}  # one trace: the caller's
    assert _parent(server) == CALLER_SPAN and server.parent is not None and server.parent.is_remote
    assert _parent(client) == _ids(server)[1]
    assert _parent(runner) == _ids(client)[1]  # the link across the process boundary

    # The runner's span was made in the runner process, and exported by the gateway as the runner's service.
    runner_pid = runner.attributes["process.pid"]
    assert isinstance(runner_pid, int) and runner_pid not in (0, os.getpid())
    assert runner.resource.attributes["service.name"] == RUNNER_SERVICE
    assert server.resource.attributes["service.name"] == GATEWAY_SERVICE
    assert server.resource.attributes["process.pid"] == os.getpid()
    assert runner.attributes["modelmarket.model"] == "digits"
    assert runner.attributes["http.response.status_code"] == 200
    assert runner.kind is SpanKind.SERVER and client.kind is SpanKind.CLIENT and server.kind is SpanKind.SERVER

    # Times nest: the runner's span inside the client span, inside the server span.
    assert server.start_time <= client.start_time <= runner.start_time  # type: ignore[operator]
    assert runner.end_time <= client.end_time <= server.end_time  # type: ignore[operator]

    # Semantic-convention attributes of the gateway's span; no key anywhere.
    attributes = dict(server.attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.path"] == "/v2/models/digits/infer"
    assert attributes["http.route"] == "/v2/models/{model}/infer"
    assert attributes["http.response.status_code"] == 200
    assert attributes["modelmarket.model"] == "digits" and attributes["modelmarket.version"]
    assert attributes["modelmarket.iu"] and attributes["modelmarket.currency"]
    assert server.name == "POST /v2/models/{model}/infer"
    for span in spans.values():
        assert rig.published.key not in repr(dict(span.attributes or {}))
    # The usage event names the caller's trace.
    assert _event_trace_ids(rig.published.home)[-1] == CALLER_TRACE


async def test_without_a_traceparent_the_gateway_starts_the_trace_and_the_event_carries_it(rig: Rig) -> None:
    await rig.infer()
    spans = _spans(rig.exporter)
    server, client, runner = spans["server"], spans["client"], spans["runner"]
    trace_id = _ids(server)[0]
    assert server.parent is None  # a root span
    assert {_ids(s)[0] for s in spans.values()} == {trace_id} and trace_id != CALLER_TRACE
    assert _parent(client) == _ids(server)[1]
    assert _parent(runner) == _ids(client)[1]
    assert _event_trace_ids(rig.published.home)[-1] == trace_id


async def test_a_caller_that_does_not_record_its_trace_gets_no_spans_but_keeps_its_trace_id(rig: Rig) -> None:
    unsampled = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"
    await rig.infer(unsampled)
    assert rig.exporter.get_finished_spans() == ()
    assert _event_trace_ids(rig.published.home)[-1] == CALLER_TRACE


async def test_a_malformed_traceparent_is_not_followed(rig: Rig) -> None:
    await rig.infer(f"00-{CALLER_TRACE.upper()}-{CALLER_SPAN}-01")  # upper-case hex is not W3C
    server = _spans(rig.exporter)["server"]
    assert server.parent is None and _ids(server)[0] != CALLER_TRACE.lower()


class _Receiver(BaseHTTPRequestHandler):
    """A tiny OTLP/HTTP traces receiver: every export decoded with the official protobuf classes."""

    protocol_version = "HTTP/1.1"
    received: list[ExportTraceServiceRequest]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf":
            self.received.append(ExportTraceServiceRequest.FromString(body))
            self.send_response(200)
        else:
            self.send_response(400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _exported(received: list[ExportTraceServiceRequest], trace: str) -> dict[str, tuple[str, Any]]:
    """The spans of ``trace`` received so far: {span id: (service name, span)}."""
    found = {}
    for request in list(received):
        for group in request.resource_spans:
            service = next(kv.value.string_value for kv in group.resource.attributes if kv.key == "service.name")
            for scope in group.scope_spans:
                for span in scope.spans:
                    if span.trace_id.hex() == trace:
                        found[span.span_id.hex()] = (service, span)
    return found


def _receiver() -> tuple[ThreadingHTTPServer, list[ExportTraceServiceRequest]]:
    received: list[ExportTraceServiceRequest] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, name="otlp receiver", daemon=True).start()
    return server, received


def _traced_gateway(published: Published, server: ThreadingHTTPServer, delay_ms: int) -> Gateway:
    cli = EnvCli(
        published.home,
        extra_env={
            "MODELMARKET_TRACING": "true",
            "MODELMARKET_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}/v1/traces",
            "OTEL_BSP_SCHEDULE_DELAY": str(delay_ms),  # the SDK's batch delay, in ms
        },
    )
    return start_gateway(cli, models=("digits",))


def test_a_real_gateway_exports_the_trace_across_processes_over_otlp(published: Published) -> None:
    server, received = _receiver()
    gateway = _traced_gateway(published, server, delay_ms=100)  # export soon
    try:
        headers = {"Authorization": f"Bearer {published.key}", "Content-Type": "application/json"}
        headers["traceparent"] = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
        answer = httpx.post(f"{gateway.url}/v2/models/digits/infer", content=published.body, headers=headers)
        assert answer.status_code == 200, answer.text
        deadline = time.monotonic() + 30
        while len(spans := _exported(received, CALLER_TRACE)) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop_gateway(gateway)
        server.shutdown()
        server.server_close()
    by_role = {(service, span.kind): (span_id, span) for span_id, (service, span) in spans.items()}
    server_id, server_span = by_role[("modelmarket-gateway", Span.SPAN_KIND_SERVER)]
    client_id, client_span = by_role[("modelmarket-gateway", Span.SPAN_KIND_CLIENT)]
    _, runner_span = by_role[("modelmarket-runner", Span.SPAN_KIND_SERVER)]
    assert len(spans) == 3
    assert server_span.parent_span_id.hex() == CALLER_SPAN
    assert client_span.parent_span_id.hex() == server_id
    assert runner_span.parent_span_id.hex() == client_id  # made in the runner, exported by the gateway
    runner_pid = next(kv.value.int_value for kv in runner_span.attributes if kv.key == "process.pid")
    assert runner_pid not in (0, os.getpid(), gateway.proc.pid)


def test_a_gateway_stopped_by_sigterm_writes_its_last_log_lines_and_sends_its_queued_spans(
    published: Published,
) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process ends without ``atexit``: the log's
    queued lines and the exporter's queued spans are written out by the gateway's shutdown itself."""
    server, received = _receiver()
    gateway = _traced_gateway(published, server, delay_ms=600_000)  # no timed export: only the exit sends
    try:
        headers = {"Authorization": f"Bearer {published.key}", "Content-Type": "application/json"}
        request_ids = []
        with httpx.Client(base_url=gateway.url, timeout=60) as http:
            for n in range(5):
                headers["traceparent"] = f"00-{CALLER_TRACE[:-1]}{n}-{CALLER_SPAN}-01"
                answer = http.post("/v2/models/digits/infer", content=published.body, headers=headers)
                assert answer.status_code == 200, answer.text
                request_ids.append(answer.headers["x-request-id"])
        assert _exported(received, f"{CALLER_TRACE[:-1]}4") == {}  # nothing sent yet
        gateway.proc.send_signal(signal.SIGTERM)
        gateway.proc.wait(timeout=60)
    finally:
        if gateway.proc.poll() is None:
            gateway.proc.kill()
            gateway.proc.wait(timeout=10)
        server.shutdown()
        server.server_close()
    assert gateway.proc.returncode == -signal.SIGTERM  # killed by the signal: no atexit ran
    logged = {json.loads(line)["request_id"] for line in (published.home / "logs" / "requests.log").open()}
    assert set(request_ids) <= logged
    for n in range(5):
        spans = _exported(received, f"{CALLER_TRACE[:-1]}{n}")
        assert len(spans) == 3, n  # the gateway's server and client spans and the runner's
