"""The pieces of tracing and of the request log, without a server: trace context parsing, the runner's span header
and the gateway's checks of it, sampling, the request log's lines, rotation and file modes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import stat
import threading
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
    RUNNER_ATTRIBUTES,
    SANDBOXES,
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
        ("/v2/models/digits", "oip", "/v2/models/{model}"),
        ("/v2/models/digits/versions/1.0.0", "oip", "/v2/models/{model}/versions/{version}"),
        ("/v2/models/digits/versions/1.0.0/ready", "oip", "/v2/models/{model}/versions/{version}/ready"),
        ("/v1/whatever-a-caller-typed", "openai", None),
        ("/api/usage", "api", None),
        ("/v2/health/ready", "health", "/v2/health/ready"),
        ("/metrics", "metrics", "/metrics"),
        # Segments a caller chose are never copied into a route:
        ("/v2/models/digits/my-secret-prompt", "oip", None),
        ("/v2/models/digits/infer/my-secret-prompt", "oip", None),
        ("/v2/models/digits/versions/1.0.0/my-secret-prompt", "oip", None),
        ("/v2/models/digits/versions/1.0.0/infer/my-secret-prompt", "oip", None),
        ("/v2/models/digits/versions", "oip", None),
        ("/v2/health/my-secret-prompt", "health", None),
        ("/metrics/my-secret-prompt", "metrics", None),
    ],
)
def test_routes_have_low_cardinality(path: str, protocol: str, route: str | None) -> None:
    assert route_of(path, protocol) == route


def test_a_path_off_the_known_routes_names_no_route_in_its_span() -> None:
    exporter = InMemorySpanExporter()
    _observed(GatewayTracing(SimpleSpanProcessor(exporter), 1.0), _scope("/v2/models/digits/my-secret-prompt"))
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST" and "http.route" not in (span.attributes or {})


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
    assert found is not None and found.status == "unset"
    assert found.attributes == {
        "process.pid": os.getpid(),
        "http.response.status_code": 200,
        "modelmarket.runtime": "onnx",
        "modelmarket.sandbox": "process",
    }
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


def test_the_sandboxes_a_runner_may_name_are_the_serving_profiles() -> None:
    from typing import get_args

    from modelmarket.registry.serving import Profile

    assert set(get_args(Profile)) == SANDBOXES


SMUGGLED = "the secret prompt"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("user.prompt", SMUGGLED),  # an unknown attribute
        ("modelmarket.runtime", SMUGGLED),  # not an installed runtime
        ("modelmarket.sandbox", SMUGGLED),  # not a sandbox profile
        ("error.type", SMUGGLED),  # not a status code
        ("http.response.status_code", 7_000_000),  # not a status code
        ("process.pid", 2**40),  # not a pid
        ("process.pid", True),  # not even an int
    ],
)
def test_a_runner_attribute_outside_its_allowed_values_is_dropped(key: str, value: Any) -> None:
    doc = json.loads(_runner_header(VALID, 500))
    doc["attributes"][key] = value
    now = time.time_ns()
    found = decode_runner_span(orjson.dumps(doc), TRACE, PARENT, (now - 10**9, now))
    assert found is not None and set(found.attributes) == RUNNER_ATTRIBUTES - {key}  # the others are kept


def test_a_runner_cannot_put_text_of_its_own_in_the_trace() -> None:
    """Name, method, route, model and version of the runner's span are the gateway's own, whatever it sent."""
    exporter = InMemorySpanExporter()
    tracing = GatewayTracing(SimpleSpanProcessor(exporter), 1.0)

    def call() -> None:
        made = client_call("digits", "1.0.0", "/v2/models/{model}/versions/{version}/infer")
        assert made is not None
        doc = json.loads(_runner_header(made.traceparent))
        doc["name"] = f"POST {SMUGGLED}"
        for key in ("http.route", "http.request.method", "modelmarket.model", "modelmarket.version"):
            doc["attributes"][key] = SMUGGLED
        made.end(200, {SPAN_HEADER: orjson.dumps(doc)})

    _observed(tracing, _scope(), call)
    client, runner, _server = exporter.get_finished_spans()
    assert runner.resource.attributes["service.name"] == RUNNER_SERVICE
    assert runner.name == client.name == "POST /v2/models/{model}/versions/{version}/infer"
    attributes = dict(runner.attributes or {})
    assert attributes["http.route"] == "/v2/models/{model}/versions/{version}/infer"
    assert attributes["http.request.method"] == "POST"
    assert (attributes["modelmarket.model"], attributes["modelmarket.version"]) == ("digits", "1.0.0")
    assert attributes["modelmarket.runtime"] == "onnx" and attributes["http.response.status_code"] == 200
    assert SMUGGLED not in repr(attributes)


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


def test_close_writes_what_is_queued_with_private_modes(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    log = RequestLog(RotatingFile(logs / "requests.log", 10_000, 2))
    for n in range(3):
        log.finish(_info(trace_id=f"{n:032x}"))
    log.close()
    lines = (logs / "requests.log").read_text().splitlines()
    assert [json.loads(line)["trace_id"] for line in lines] == [f"{n:032x}" for n in range(3)]
    assert stat.S_IMODE((logs / "requests.log").stat().st_mode) == 0o600
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700
    log.finish(_info())  # after close: dropped and counted, never written
    assert log.dropped == 1 and len((logs / "requests.log").read_text().splitlines()) == 3


class GatedFile(RotatingFile):
    """A log file whose writes wait for ``gate``, and that records which thread wrote."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, 1_000_000, 1)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.writers: set[str] = set()

    def write_lines(self, lines: list[bytes]) -> None:
        self.writers.add(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(30)
        super().write_lines(lines)


def test_lines_are_written_by_the_writer_thread_and_a_full_queue_drops_instead_of_waiting(tmp_path: Path) -> None:
    file = GatedFile(tmp_path / "requests.log")
    log = RequestLog(file, max_pending=2)
    log.finish(_info(request_id="r0"))
    assert file.entered.wait(30)  # the writer took r0 and is stuck on the disk
    for n in range(1, 5):
        log.finish(_info(request_id=f"r{n}"))  # r1 and r2 fill the queue, r3 and r4 are dropped
    assert log.dropped == 2
    file.gate.set()
    log.close()
    written = [json.loads(line)["request_id"] for line in file.path.read_text().splitlines()]
    assert written == ["r0", "r1", "r2"]
    assert file.writers == {"request log"}  # never the thread that finished the requests


def test_a_stderr_nobody_reads_never_blocks_a_request_nor_the_exit(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:  # fill the pipe: the next write to it blocks
            os.write(write_end, b"x" * 65536)
    os.set_blocking(write_end, True)
    stderr = os.fdopen(write_end, "wb")
    log = RequestLog(None, stderr, max_pending=100)
    try:
        for n in range(1_000):
            log.finish(_info(request_id=f"r{n}"))
        assert log.dropped >= 800  # the writer holds one batch, the queue another: the rest is dropped
        log.close(timeout_s=0.2)  # the writer is stuck on the pipe: close gives up instead of waiting
        log.finish(_info())
        assert log._thread is not None and log._thread.is_alive()
    finally:
        os.set_blocking(read_end, False)
        while log._thread is not None and log._thread.is_alive():  # let the stuck writer finish
            with contextlib.suppress(BlockingIOError):
                os.read(read_end, 1 << 20)
            log._thread.join(0.01)
        os.close(read_end)
        stderr.close()


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


def _numbered(first: int, count: int, pad: int = 30) -> list[bytes]:
    return [f'{{"n":{n},"pad":"{"x" * pad}"}}\n'.encode() for n in range(first, first + count)]


def _numbers(*paths: Path) -> list[int]:
    return [json.loads(line)["n"] for p in paths if p.exists() for line in p.read_text().splitlines()]


@pytest.mark.parametrize("how", ["deleted", "moved"])
def test_a_log_deleted_or_moved_away_is_opened_again_at_its_path(tmp_path: Path, how: str) -> None:
    path = tmp_path / "logs" / "requests.log"
    rotating = RotatingFile(path, 10_000, 2)
    rotating.write_lines(_numbered(0, 2))
    if how == "deleted":
        path.unlink()
    else:  # as logrotate does (its "create" mode)
        path.rename(path.with_name("requests.log-20260301"))
    rotating.write_lines(_numbered(2, 2))
    rotating.close()
    assert _numbers(path) == [2, 3]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if how == "moved":
        assert _numbers(path.with_name("requests.log-20260301")) == [0, 1]


def test_a_deleted_log_folder_is_made_again(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "requests.log"
    rotating = RotatingFile(path, 10_000, 2)
    shutil.rmtree(path.parent)
    rotating.write_lines(_numbered(0, 1))
    rotating.close()
    assert _numbers(path) == [0] and stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_rotation_that_fails_leaves_the_log_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "requests.log"
    rotating = RotatingFile(path, 100, 2)
    rotating.write_lines(_numbered(0, 2))  # 42 bytes each: the next line rotates

    def refuse(source: Any, target: Any) -> None:
        raise PermissionError(13, "Permission denied", str(source))

    with monkeypatch.context() as patched, caplog.at_level(logging.WARNING):
        patched.setattr(os, "replace", refuse)
        rotating.write_lines(_numbered(2, 1))
    assert "could not be rotated" in caplog.text
    assert _numbers(path) == [0, 1, 2]  # written on, unrotated
    rotating.write_lines(_numbered(3, 1))  # the next rotation works
    rotating.close()
    assert _numbers(path.with_name("requests.log.1"), path) == [0, 1, 2, 3]
    assert _numbers(path) == [3]


def test_two_writers_sharing_one_file_rotate_it_in_turn_and_lose_nothing(tmp_path: Path) -> None:
    """Two gateways on one home: each sees the other's lines in the size, and a writer that finds the file
    rotated by the other writes on to the new one instead of rotating it again."""
    path = tmp_path / "requests.log"
    backups = 40
    first, second = RotatingFile(path, 200, backups), RotatingFile(path, 200, backups)
    for n in range(0, 60, 2):
        first.write_lines(_numbered(n, 1))
        second.write_lines(_numbered(n + 1, 1))
    first.close()
    second.close()
    files = [path.with_name(f"requests.log.{i}") for i in range(backups, 0, -1)] + [path]
    assert _numbers(*files) == list(range(60))  # every line once, in order, across the files
    kept = [p for p in files if p.exists()]
    assert all(p.stat().st_size <= 200 for p in kept)
    assert len(kept) == 15  # 4 lines of ~42 bytes a file: each rotation made once, none of a file just rotated


# -- OTLP encoding ------------------------------------------------------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.records: list[SpanRecord] = []
        self.shut_down_within: float | None = None

    def add(self, record: SpanRecord) -> None:
        self.records.append(record)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        self.shut_down_within = timeout_s


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


def test_an_encoder_error_drops_its_batch_and_the_export_thread_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    receiver = _Receiver()
    good = _records_of_a_traced_call()[0]
    bad = good._replace(attributes={"modelmarket.model": object()})  # a value the encoder cannot write
    try:
        export = OtlpExport(receiver.url, timeout_s=5)
        export.batch = 1  # each span its own batch, sent at once
        with caplog.at_level(logging.WARNING):
            export.add(bad)
            export.add(good)
            export.shutdown()
    finally:
        receiver.close()
    assert len(receiver.bodies) == 1 and export.dropped == 1  # the good span still went out
    assert "TypeError" in caplog.text


def test_the_endpoint_is_logged_without_its_credentials_or_query(caplog: pytest.LogCaptureFixture) -> None:
    receiver = _Receiver(status=503)
    host, port = "127.0.0.1", receiver.server.server_address[1]
    try:
        export = OtlpExport(f"http://user:pa55word@{host}:{port}/v1/traces?token=t0ken#frag", timeout_s=5)
        with caplog.at_level(logging.WARNING):
            export.add(_records_of_a_traced_call()[0])
            export.shutdown()
    finally:
        receiver.close()
    assert export.dropped == 1 and receiver.paths == ["/v1/traces?token=t0ken"]  # the query is still sent
    assert f"to http://{host}:{port}/v1/traces (HTTP 503)" in caplog.text
    for secret in ("user", "pa55word", "t0ken", "frag"):
        assert secret not in caplog.text


def test_shutdown_waits_a_bounded_time_for_a_collector_that_never_answers() -> None:
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # connections are taken into the backlog, never answered
    try:
        export = OtlpExport(f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces", timeout_s=60)
        export.add(_records_of_a_traced_call()[0])
        export.shutdown(timeout_s=0.2)  # returns although the export thread is still waiting for an answer
        assert export._thread is not None and export._thread.is_alive()
    finally:
        silent.close()
    if export._thread is not None:
        export._thread.join(60)


def test_closing_observability_writes_the_log_and_shuts_the_tracer_down(tmp_path: Path) -> None:
    sink = ListSink()
    tracing = GatewayTracing(sink, 1.0)
    log = RequestLog(RotatingFile(tmp_path / "requests.log", 10_000, 1))
    obs = Observability((tracing, IncomingTrace(), log))  # IncomingTrace has nothing to close
    _observed(tracing, _scope())
    log.finish(_info(request_id="last"))
    obs.close(timeout_s=3)
    assert [json.loads(line)["request_id"] for line in (tmp_path / "requests.log").read_text().splitlines()] == ["last"]
    assert sink.shut_down_within is not None and 0 < sink.shut_down_within <= 3


class _Receiver:
    """An OTLP/HTTP receiver answering ``status`` to every POST, keeping the bodies and paths it got."""

    def __init__(self, status: int = 200) -> None:
        from http.server import BaseHTTPRequestHandler, HTTPServer

        self.bodies: list[bytes] = []
        self.paths: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                outer.paths.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
