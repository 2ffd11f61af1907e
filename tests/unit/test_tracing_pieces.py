"""The pieces of tracing and of the request log, without a server: trace context parsing, the runner's span header
and the gateway's checks of it, sampling, the request log's lines, rotation and file modes."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from modelmarket.observability import Observability
from modelmarket.observability.context import CallInfo, current
from modelmarket.observability.logs import RequestLog, RotatingFile, log_line
from modelmarket.observability.otlp import Encoder, OtlpExport, _any_value
from modelmarket.observability.runner_spans import (
    SPAN_HEADER,
    SPAN_HEADER_MAX_BYTES,
    RunnerSpans,
    decode_runner_span,
    format_traceparent,
    parse_traceparent,
)
from modelmarket.observability.tracing import (
    RUNNER_SERVICE,
    GatewayTracing,
    IncomingTrace,
    ProcessorSink,
    SpanRecord,
    client_call,
    current_trace,
    route_of,
)

TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT = 0x00F067AA0BA902B7
VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _scope(path: str = "/v2/models/digits/infer", traceparent: bytes | None = None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if traceparent is not None:
        headers.append((b"traceparent", traceparent))
    return {"type": "http", "method": "POST", "path": path, "headers": headers}


# -- trace context ------------------------------------------------------------------------------------------------


def test_a_valid_traceparent_is_parsed_with_its_sampled_flag() -> None:
    assert parse_traceparent(VALID) == (TRACE, PARENT, True)
    assert parse_traceparent(VALID[:-2] + b"00") == (TRACE, PARENT, False)
    assert parse_traceparent(format_traceparent(TRACE, PARENT)) == (TRACE, PARENT, True)


@pytest.mark.parametrize(
    "raw",
    [
        None,
        b"",
        VALID + b"0",  # too long
        VALID.upper(),  # hex must be lower case
        b"01" + VALID[2:],  # an unknown version is not followed
        b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01",  # all-zero trace id
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-" + b"0" * 16 + b"-01",  # all-zero span id
        VALID.replace(b"-", b"_"),
    ],
)
def test_anything_else_is_no_trace_context(raw: bytes | None) -> None:
    assert parse_traceparent(raw) is None


@pytest.mark.parametrize(
    ("path", "protocol", "route"),
    [
        ("/v2/models/digits/infer", "oip", "/v2/models/{model}/infer"),
        ("/v2/models/digits/versions/1.0.0/infer", "oip", "/v2/models/{model}/versions/{version}/infer"),
        ("/v2/models/digits/ready", "oip", "/v2/models/{model}/ready"),
        ("/v1/chat/completions", "openai", "/v1/chat/completions"),
        ("/v1/whatever-a-caller-typed", "openai", None),
        ("/api/usage", "api", None),
        ("/v2/health/ready", "health", "/v2/health/ready"),
    ],
)
def test_routes_have_low_cardinality(path: str, protocol: str, route: str | None) -> None:
    assert route_of(path, protocol) == route


# -- the gateway's spans ------------------------------------------------------------------------------------------


def _observed(tracing: Any, scope: dict[str, Any], during: Any = None, status: int = 200) -> tuple[CallInfo, Any]:
    obs = Observability((tracing,))
    info, token = obs.begin(scope)
    result = during() if during is not None else None
    info.status = status
    obs.finish(info, token)
    return info, result


def test_sampling_follows_the_ratio_for_new_traces_and_the_caller_for_its_own() -> None:
    exporter = InMemorySpanExporter()
    never = GatewayTracing(SimpleSpanProcessor(exporter), 0.0)
    info, _ = _observed(never, _scope())
    assert exporter.get_finished_spans() == () and info.trace_id is None
    info, _ = _observed(never, _scope(traceparent=VALID))  # the caller records its trace: so do we
    (span,) = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == PARENT and info.trace_id == f"{TRACE:032x}"
    exporter.clear()
    always = GatewayTracing(SimpleSpanProcessor(exporter), 1.0)
    info, _ = _observed(always, _scope(traceparent=VALID[:-2] + b"00"))  # the caller does not: neither do we
    assert exporter.get_finished_spans() == () and info.trace_id == f"{TRACE:032x}" and info.span_id is None
    for _ in range(3):
        _observed(always, _scope())
    assert len({s.context.trace_id for s in exporter.get_finished_spans()}) == 3  # three new traces


def test_a_client_call_exists_only_inside_a_traced_request() -> None:
    exporter = InMemorySpanExporter()
    tracing = GatewayTracing(SimpleSpanProcessor(exporter), 1.0)
    assert client_call("digits", "1.0.0", "/v2/models/{model}/infer") is None and current_trace() is None

    def call() -> Any:
        made = client_call("digits", "1.0.0", "/v2/models/{model}/infer")
        assert made is not None and current_trace() is not None
        made.end(503, {})
        return made

    info, made = _observed(tracing, _scope(), call)
    assert current_trace() is None and current() is None  # both reset when the request ended
    client, server = exporter.get_finished_spans()
    assert client.kind is SpanKind.CLIENT and server.kind is SpanKind.SERVER
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert parse_traceparent(made.traceparent) == (server.context.trace_id, client.context.span_id, True)
    assert client.attributes is not None and client.attributes["error.type"] == "503"
    assert info.trace_id == f"{server.context.trace_id:032x}"


def test_an_upstream_provider_is_not_sent_the_platforms_trace() -> None:
    tracing = GatewayTracing(SimpleSpanProcessor(InMemorySpanExporter()), 1.0)
    _, made = _observed(tracing, _scope(), lambda: client_call("chat", "1", "/v1/chat/completions", "openai-co"))
    assert made is not None and made.propagate is False


def test_without_an_exporter_trace_ids_are_kept_and_no_client_span_is_made() -> None:
    info, made = _observed(
        GatewayTracing(None, 1.0), _scope(), lambda: client_call("digits", "1", "/v2/models/{model}/infer")
    )
    assert made is None and info.trace_id is not None and info.span_id is not None


def test_with_tracing_off_an_incoming_trace_id_still_names_the_call() -> None:
    info, _ = _observed(IncomingTrace(), _scope(traceparent=VALID))
    assert info.trace_id == f"{TRACE:032x}"
    info, _ = _observed(IncomingTrace(), _scope(traceparent=b"garbage"))
    assert info.trace_id is None


def test_the_server_span_names_the_call_and_never_its_key() -> None:
    exporter = InMemorySpanExporter()
    tracing = GatewayTracing(SimpleSpanProcessor(exporter), 1.0)
    scope = _scope("/v1/chat/completions")
    scope["headers"].append((b"authorization", b"Bearer mm_secret_key"))

    def served() -> None:
        info = current()
        assert info is not None
        info.model, info.version, info.operation, info.tokens_in, info.tokens_out = "llm", "1.0.0", "chat", 12, 3
        info.iu, info.cost, info.currency, info.account_id = "0.015", "0.0002", "USD", "acct_1"

    _observed(tracing, scope, served, status=502)
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert span.name == "POST /v1/chat/completions"
    assert attributes["gen_ai.operation.name"] == "chat" and attributes["gen_ai.request.model"] == "llm"
    assert attributes["gen_ai.usage.input_tokens"] == 12 and attributes["gen_ai.usage.output_tokens"] == 3
    assert attributes["http.response.status_code"] == 502 and attributes["error.type"] == "502"
    assert not span.status.is_ok
    assert "mm_secret_key" not in repr(attributes)


# -- the runner's span --------------------------------------------------------------------------------------------


def _runner_header(traceparent: bytes, status: int = 200) -> bytes:
    spans = RunnerSpans("digits", "1.0.0", "onnx", "process")
    span = spans.start(traceparent, "POST", "/v2/models/{model}/infer")
    assert span is not None
    return spans.finish(span, status)


def test_the_runners_span_travels_in_a_header_the_gateway_accepts() -> None:
    before = time.time_ns()
    raw = _runner_header(VALID)
    after = time.time_ns()
    assert len(raw) <= SPAN_HEADER_MAX_BYTES
    found = decode_runner_span(raw, TRACE, PARENT, (before, after))
    assert found is not None
    assert found.name == "POST /v2/models/{model}/infer" and found.status == "unset"
    assert found.attributes["process.pid"] == os.getpid() and found.attributes["modelmarket.model"] == "digits"
    assert before <= found.start_ns <= found.end_ns <= after


def test_an_unsampled_or_malformed_traceparent_gets_no_runner_span() -> None:
    spans = RunnerSpans("digits", "1.0.0", "onnx", "process")
    assert spans.start(VALID[:-2] + b"00", "POST", "/v2/models/{model}/infer") is None
    assert spans.start(b"not a traceparent", "POST", "/v2/models/{model}/infer") is None


def test_a_failed_runner_call_is_an_error_span() -> None:
    now = time.time_ns()
    found = decode_runner_span(_runner_header(VALID, 500), TRACE, PARENT, (now, time.time_ns()))
    assert found is not None and found.status == "error" and found.attributes["error.type"] == "500"


def _doctored(**changes: Any) -> bytes:
    doc = json.loads(_runner_header(VALID))
    doc.update(changes)
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_doctored(trace="1" * 32), "another trace"),
        (_doctored(parent="1" * 16), "another parent"),
        (_doctored(span="0" * 16), "a zero span id"),
        (_doctored(span=f"{PARENT:016x}"), "its own parent"),
        (_doctored(span="XYZ"), "a malformed span id"),
        (_doctored(start=1, end=2), "times outside the call"),
        (_doctored(end=1), "an end before its start"),
        (_doctored(name="x" * 500), "an overlong name"),
        (_doctored(status="splendid"), "an unknown status"),
        (_doctored(start="now"), "a time that is not a number"),
        (b"{" + b" " * SPAN_HEADER_MAX_BYTES + b"}", "an oversized header"),
        (b"not json", "not JSON"),
        (b"[]", "not an object"),
    ],
)
def test_the_gateway_never_trusts_a_runners_span_blindly(raw: bytes, why: str) -> None:
    now = time.time_ns()
    assert decode_runner_span(raw, TRACE, PARENT, (now - 10**9, now)) is None, why


def test_unknown_or_oversized_runner_attributes_are_dropped() -> None:
    doc = json.loads(_runner_header(VALID))
    doc["attributes"].update({"user.prompt": "secret text", "modelmarket.runtime": "x" * 500})
    now = time.time_ns()
    found = decode_runner_span(orjson.dumps(doc), TRACE, PARENT, (now - 10**9, now))
    assert found is not None
    assert "user.prompt" not in found.attributes and "modelmarket.runtime" not in found.attributes
    assert found.attributes["modelmarket.model"] == "digits"


def test_a_checked_runner_span_is_exported_as_the_runners_service() -> None:
    exporter = InMemorySpanExporter()
    tracing = GatewayTracing(SimpleSpanProcessor(exporter), 1.0)

    def call() -> None:
        made = client_call("digits", "1.0.0", "/v2/models/{model}/infer")
        assert made is not None
        made.end(200, {SPAN_HEADER: _runner_header(made.traceparent)})

    _observed(tracing, _scope(), call)
    client, runner, _server = exporter.get_finished_spans()  # in the order they ended
    assert runner.resource.attributes["service.name"] == RUNNER_SERVICE
    assert runner.parent is not None and runner.parent.span_id == client.context.span_id
    assert runner.context.trace_id == client.context.trace_id


# -- the request log ----------------------------------------------------------------------------------------------


def _info(**fields: Any) -> CallInfo:
    info = CallInfo("POST", "/v2/models/digits/infer", "oip", time.perf_counter() - 0.0123, status=200)
    for name, value in fields.items():
        setattr(info, name, value)
    info.ended = info.started + 0.0123
    return info


def test_a_log_line_holds_the_calls_figures() -> None:
    line = log_line(_info(model="digits", version="1.0.0", iu="1", cost="0.001", currency="USD"), "T")
    assert line["level"] == "info" and line["status"] == 200 and line["latency_ms"] == pytest.approx(12.3)
    assert (line["model"], line["version"], line["iu"], line["cost"], line["currency"]) == (
        "digits",
        "1.0.0",
        "1",
        "0.001",
        "USD",
    )
    assert log_line(_info(status=429), "T")["level"] == "warning"
    assert log_line(_info(status=500), "T")["level"] == "error"


def test_the_log_is_written_once_outside_an_event_loop_with_private_modes(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    log = RequestLog(RotatingFile(logs / "requests.log", 10_000, 2))
    log.finish(_info(trace_id="a" * 32))
    lines = (logs / "requests.log").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["trace_id"] == "a" * 32
    assert stat.S_IMODE((logs / "requests.log").stat().st_mode) == 0o600
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    log.close()


def test_rotation_keeps_whole_lines_and_the_last_backups(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    rotating = RotatingFile(path, 100, 2)
    lines = [f'{{"n":{i},"pad":"{"x" * 30}"}}\n'.encode() for i in range(10)]  # 42 bytes each: 2 per file
    rotating.write_lines(lines[:3])
    rotating.write_lines(lines[3:])
    rotating.close()
    kept = [path.with_name("requests.log.2"), path.with_name("requests.log.1"), path]
    assert not path.with_name("requests.log.3").exists()
    numbers = [json.loads(line)["n"] for p in kept for line in p.read_text().splitlines()]
    assert numbers == [4, 5, 6, 7, 8, 9]  # the oldest dropped, none split, none repeated
    assert all(p.stat().st_size <= 100 for p in kept)


def test_no_backups_means_the_file_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "requests.log"
    rotating = RotatingFile(path, 50, 0)
    rotating.write_lines([b"a" * 30 + b"\n", b"b" * 30 + b"\n"])
    rotating.close()
    assert path.read_bytes() == b"b" * 30 + b"\n" and list(tmp_path.iterdir()) == [path]


# -- OTLP encoding ------------------------------------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.records: list[SpanRecord] = []

    def add(self, record: SpanRecord) -> None:
        self.records.append(record)

    def shutdown(self) -> None:
        pass


def _records_of_a_traced_call() -> list[SpanRecord]:
    sink = ListSink()
    tracing = GatewayTracing(sink, 1.0, instance_id="gw-7")

    def call() -> None:
        info = current()
        assert info is not None
        info.model, info.iu, info.tokens_in, info.operation = "digits", "1.5", -3, "chat"  # a negative int64 too
        made = client_call("digits", "1.0.0", "/v2/models/{model}/infer")
        assert made is not None
        made.end(500, {SPAN_HEADER: _runner_header(made.traceparent, 500)})

    _observed(tracing, _scope(traceparent=VALID), call, status=502)
    assert len(sink.records) == 3
    return sink.records


def test_the_otlp_writer_says_exactly_what_the_sdks_encoder_says() -> None:
    from google.protobuf.json_format import MessageToDict
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    records = _records_of_a_traced_call()
    exporter = InMemorySpanExporter()
    as_sdk = ProcessorSink(SimpleSpanProcessor(exporter), instance_id="gw-7")
    for record in records:
        as_sdk.add(record)
    ours = ExportTraceServiceRequest.FromString(Encoder("gw-7").request(records))
    theirs = ExportTraceServiceRequest.FromString(encode_spans(exporter.get_finished_spans()).SerializeToString())

    def canonical(message: Any) -> list[Any]:  # groups in a stable order: by service, then by span name
        doc = MessageToDict(message)["resourceSpans"]
        for group in doc:
            for scope in group["scopeSpans"]:
                scope["spans"].sort(key=lambda s: s["name"])
        return sorted(doc, key=lambda g: json.dumps(g["resource"], sort_keys=True))

    assert canonical(ours) == canonical(theirs)
    services = {
        kv.value.string_value: len(group.scope_spans[0].spans)
        for group in ours.resource_spans
        for kv in group.resource.attributes
        if kv.key == "service.name"
    }
    assert services == {"modelmarket-gateway": 2, "modelmarket-runner": 1}
    statuses = [span.status.code for group in ours.resource_spans for span in group.scope_spans[0].spans]
    assert statuses == [2, 2, 2]  # every span of that failed call is an error


def test_any_value_kinds_round_trip() -> None:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    for value, field, expected in (
        ("é", "string_value", "é"),
        (True, "bool_value", True),
        (-(2**63), "int_value", -(2**63)),
        (2.5, "double_value", 2.5),
        (b"\x00\x01", "bytes_value", b"\x00\x01"),
    ):
        parsed = AnyValue.FromString(_any_value(value))
        assert parsed.WhichOneof("value") == field and getattr(parsed, field) == expected
    array = AnyValue.FromString(_any_value(["a", 1]))
    assert [v.string_value or v.int_value for v in array.array_value.values] == ["a", 1]


def test_the_exporter_posts_batches_of_protobuf_and_counts_what_a_collector_refuses() -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    received: list[tuple[str, str, bytes]] = []
    answers = [200, 503]

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(answers.pop(0))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    records = _records_of_a_traced_call()
    try:
        export = OtlpExport(f"http://127.0.0.1:{server.server_address[1]}/v1/traces", timeout_s=5)
        export.batch = 3  # a full batch is sent at once
        for record in records:
            export.add(record)
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(received) == 1 and export.dropped == 0
        for record in records[:2]:
            export.add(record)
        export.shutdown()  # what is queued is sent: the collector refuses it (503)
    finally:
        server.shutdown()
        server.server_close()
    assert len(received) == 2 and export.dropped == 2
    path, ctype, body = received[0]
    assert path == "/v1/traces" and ctype == "application/x-protobuf"
    decoded = ExportTraceServiceRequest.FromString(body)
    assert sum(len(g.scope_spans[0].spans) for g in decoded.resource_spans) == 3
    export.add(records[0])  # after shutdown: dropped, never queued
    assert export.dropped == 3


def test_a_full_queue_drops_spans_instead_of_waiting() -> None:
    export = OtlpExport("http://127.0.0.1:9/v1/traces", timeout_s=0.1)
    export.max_queue, export.batch, export.delay_s = 2, 100, 60.0
    for record in _records_of_a_traced_call():
        export.add(record)
    assert export.dropped == 1
    export._stopping = True  # nothing to send to: do not try
    export.shutdown()


def test_an_endpoint_that_is_not_an_http_url_is_refused() -> None:
    with pytest.raises(ValueError, match="MODELMARKET_OTLP_ENDPOINT"):
        OtlpExport("127.0.0.1:4318")
