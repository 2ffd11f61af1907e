"""OpenTelemetry traces of the gateway's requests, carried into the runners with the W3C ``traceparent`` header.

Three spans per traced call of a model:

- the gateway's SERVER span (``GatewayTracing``, a request observer): its parent is the caller's span when the
  request came with a valid ``traceparent``, otherwise it starts a trace (sampled at ``trace_sample_ratio``);
- the gateway's CLIENT span around the call to the runner (``client_call``, opened by the data plane where it
  forwards the call), whose id goes to the runner in ``traceparent``;
- the runner's SERVER span (``RunnerSpans``), made in the runner process (its parent read from the W3C
  ``traceparent`` the gateway sent). A runner has no network (it may run under bubblewrap or gVisor), so it
  cannot export: it returns the finished span in the ``x-modelmarket-span`` answer header, and the gateway checks
  it (size, ids, times, attribute names) before it hands it to its own exporter as a span of service
  ``modelmarket-runner``. A runner is never trusted blindly: it may run a provider's code.

Spans are not made with the SDK's tracer: on the hot path a finished span is a tuple (``SpanRecord``) handed to
a sink, and ``otlp.py`` batches and writes them as OTLP protobuf in its own thread. Measured on the reference
machine, the SDK's tracer costs ~38 us per span, its ``ReadableSpan`` and ``BatchSpanProcessor`` ~10 us, its OTLP
encoder ~80 us, against a few microseconds here; at three spans a call that was most of the cost of tracing.
Tests (and anyone wiring an SDK span processor in code) get real SDK spans through ``ProcessorSink``.

Nothing here holds a key, a query string, an input or an output: only names, ids, status codes and figures.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Mapping, MutableMapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, cast

from modelmarket import __version__
from modelmarket.observability.context import CallInfo
from modelmarket.observability.runner_spans import (
    SPAN_HEADER,
    TRACEPARENT,
    decode_runner_span,
    format_traceparent,
    parse_traceparent,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

__all__ = [
    "SPAN_HEADER",
    "TRACEPARENT",
    "ClientCall",
    "GatewayTracing",
    "IncomingTrace",
    "ProcessorSink",
    "SpanRecord",
    "SpanSink",
    "client_call",
    "current_trace",
    "gateway_tracing",
    "resource_attributes",
    "route_of",
]

GATEWAY_SERVICE = "modelmarket-gateway"
RUNNER_SERVICE = "modelmarket-runner"
SCOPE_NAME = "modelmarket"
_OPENAI_ROUTES = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/audio/transcriptions", "/v1/models"}
)
_HEALTH_ROUTES = frozenset({"/v2", "/v2/", "/v2/health/live", "/v2/health/ready"})


# -- the request's trace context (its W3C parsing: runner_spans.py) ------------------------------------------


def _incoming(scope: MutableMapping[str, Any]) -> bytes | None:
    for name, value in scope["headers"]:
        if name == TRACEPARENT:
            return bytes(value)
    return None


_OIP_TAILS = {"": "", "ready": "/ready", "infer": "/infer"}
"""What may follow ``/v2/models/{model}`` (or ``.../versions/{version}``) in a route; any other tail has none."""


def route_of(path: str, protocol: str) -> str | None:
    """The low-cardinality route of a path (``/v2/models/{model}/infer``), None where there is none to name.

    Only fixed text reaches the route (and the span's name): the model and version become ``{model}`` and
    ``{version}``, and a path whose other segments are not one of the gateway's own routes gets None, whatever a
    caller typed in it."""
    if protocol == "oip":
        parts = path.split("/")  # '', 'v2', 'models', name, ...
        if len(parts) >= 6 and parts[4] == "versions":
            tail = _OIP_TAILS.get("/".join(parts[6:]))
            return None if tail is None else "/v2/models/{model}/versions/{version}" + tail
        tail = _OIP_TAILS.get("/".join(parts[4:]))
        return None if tail is None else "/v2/models/{model}" + tail
    if protocol == "openai":
        return path if path in _OPENAI_ROUTES else None
    if protocol == "health":
        return path if path in _HEALTH_ROUTES else None
    if protocol == "metrics":
        return "/metrics" if path == "/metrics" else None
    return None


# -- the gateway ------------------------------------------------------------------------------------------------


class SpanRecord(NamedTuple):
    """A finished span as the gateway hands it to its sink: plain values, no SDK object on the hot path."""

    runner: bool
    """The runner's span (service ``modelmarket-runner``), else the gateway's own."""
    kind: int
    """OTLP ``SpanKind``: ``SERVER`` (2) or ``CLIENT`` (3)."""
    name: str
    trace_id: int
    span_id: int
    parent_id: int | None
    parent_remote: bool
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: bool
    """Status ERROR (else UNSET)."""


SERVER, CLIENT = 2, 3
CLOSE_TIMEOUT_S = 5.0
"""How long the gateway's exit waits, at most, for its queued spans to be sent."""


class SpanSink(Protocol):
    """Where finished spans go: ``otlp.OtlpExport`` (batched OTLP/HTTP), or ``ProcessorSink`` (any SDK processor)."""

    def add(self, record: SpanRecord) -> None: ...

    def shutdown(self, timeout_s: float = ...) -> None:
        """Send what is queued, waiting ``timeout_s`` at most, and stop."""


def resource_attributes(instance_id: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The OpenTelemetry resources of the gateway's spans and of its runners' spans."""
    gateway: dict[str, Any] = {"service.name": GATEWAY_SERVICE, "service.version": __version__}
    if instance_id:
        gateway["service.instance.id"] = instance_id
    gateway["process.pid"] = os.getpid()
    return gateway, {"service.name": RUNNER_SERVICE, "service.version": __version__}


class ProcessorSink:
    """Each record as the SDK's ``ReadableSpan``, handed to an SDK span processor (a test's in-memory exporter
    behind a ``SimpleSpanProcessor``, or any processor an operator wires in code)."""

    def __init__(self, processor: SpanProcessor, instance_id: str | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        self.processor = processor
        gateway, runner = resource_attributes(instance_id)
        self._resources = (Resource(gateway), Resource(runner))
        self._scope = InstrumentationScope(SCOPE_NAME, __version__)
        self._readable, self._context = ReadableSpan, SpanContext
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._kinds = {SERVER: SpanKind.SERVER, CLIENT: SpanKind.CLIENT}
        self._statuses = (Status(StatusCode.UNSET), Status(StatusCode.ERROR))

    def add(self, record: SpanRecord) -> None:
        context = self._context(record.trace_id, record.span_id, False, self._sampled)
        parent = None
        if record.parent_id is not None:
            parent = self._context(record.trace_id, record.parent_id, record.parent_remote, self._sampled)
        span = self._readable(
            record.name,
            context,
            parent,
            self._resources[record.runner],
            record.attributes,
            kind=self._kinds[record.kind],
            status=self._statuses[record.error],
            start_time=record.start_ns,
            end_time=record.end_ns,
            instrumentation_scope=self._scope,
        )
        self.processor.on_end(span)

    def shutdown(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        self.processor.force_flush(round(timeout_s * 1000))
        self.processor.shutdown()


@dataclass(slots=True)
class _Active:
    """The sampled trace of the request being served (in a context variable while it is)."""

    tracing: GatewayTracing
    trace_id: int
    span_id: int
    parent_id: int | None
    start_ns: int
    route: str | None
    token: Token[_Active | None] | None = None


_ACTIVE: ContextVar[_Active | None] = ContextVar("modelmarket_trace", default=None)


class GatewayTracing:
    """The request observer that makes the gateway's spans and hands every finished one to ``sink`` (batched
    OTLP/HTTP export, or an SDK span processor such as a test's in-memory one, wrapped in ``ProcessorSink``).
    ``sink=None``: trace context only (ids in the request log and the usage events; nothing built or sent)."""

    def __init__(
        self,
        sink: SpanSink | SpanProcessor | None,
        sample_ratio: float = 1.0,
        *,
        instance_id: str | None = None,
        randbits: Any = None,
    ) -> None:
        if sink is not None and not hasattr(sink, "add"):
            sink = ProcessorSink(sink, instance_id)
        self.sink = cast("SpanSink | None", sink)
        self.sample_bound = round(min(max(sample_ratio, 0.0), 1.0) * (1 << 64))
        """A new trace is sampled when the low 64 bits of its id are below this (as ``TraceIdRatioBased``)."""
        self._randbits = randbits or random.getrandbits

    # -- the request observer ---------------------------------------------------------------------------------
    def start(self, info: CallInfo, scope: MutableMapping[str, Any]) -> None:
        incoming = parse_traceparent(_incoming(scope))
        if incoming is not None:
            trace_id, parent_id, sampled = incoming
        else:
            trace_id, parent_id = self._new_id(128), None
            sampled = (trace_id & 0xFFFFFFFFFFFFFFFF) < self.sample_bound
        if not sampled:  # the caller's trace is not recorded: its id still names the call (log, usage event)
            info.trace_id = f"{trace_id:032x}" if incoming is not None else None
            return
        span_id = self._new_id(64)
        info.trace_id, info.span_id = f"{trace_id:032x}", f"{span_id:016x}"
        active = _Active(self, trace_id, span_id, parent_id, time.time_ns(), route_of(info.path, info.protocol))
        active.token = _ACTIVE.set(active)

    def finish(self, info: CallInfo) -> None:
        active = _ACTIVE.get()
        if active is None or active.tracing is not self:
            return
        if active.token is not None:
            _ACTIVE.reset(active.token)
        if self.sink is None:
            return
        route = active.route
        self.sink.add(
            SpanRecord(
                False,
                SERVER,
                f"{info.method} {route}" if route else info.method,
                active.trace_id,
                active.span_id,
                active.parent_id,
                True,
                active.start_ns,
                time.time_ns(),
                _server_attributes(info, route),
                info.status >= 500 or info.status == 0,
            )
        )

    def _new_id(self, bits: int) -> int:
        while True:
            value: int = self._randbits(bits)
            if value:
                return value

    def runner_span(self, raw: bytes, call: ClientCall, end_ns: int) -> bool:
        """Export the runner's span of header ``raw`` if it checks out (``decode_runner_span``): a child of client
        span ``call`` in its trace, times within the call (give or take ``CLOCK_SLACK_NS``). Its name, method,
        route, model and version are the client span's own; of the runner's attributes only the checked ones."""
        active = call.active
        found = decode_runner_span(raw, active.trace_id, call.span_id, (call.start_ns, end_ns))
        if found is None or self.sink is None:
            return False
        own = call.attributes
        attributes: dict[str, Any] = {
            "http.request.method": own["http.request.method"],
            "http.route": own["url.template"],
            "modelmarket.model": own["modelmarket.model"],
            "modelmarket.version": own["modelmarket.version"],
            **found.attributes,
        }
        self.sink.add(
            SpanRecord(
                True,
                SERVER,
                call.name,
                active.trace_id,
                found.span_id,
                call.span_id,
                True,
                found.start_ns,
                found.end_ns,
                attributes,
                found.status == "error",
            )
        )
        return True

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Export what is queued and stop the exporter's thread, waiting ``timeout_s`` at most (the gateway's
        shutdown: ``Observability.close``); spans still queued then are dropped."""
        if self.sink is not None:
            self.sink.shutdown(timeout_s)


def _server_attributes(info: CallInfo, route: str | None) -> dict[str, Any]:
    """HTTP server semantic conventions, the GenAI ones for an OpenAI call, and the platform's own figures."""
    attributes: dict[str, Any] = {
        "http.request.method": info.method,
        "url.path": info.path,
        "url.scheme": "http",
        "http.response.status_code": info.status,
        "modelmarket.protocol": info.protocol,
    }
    if route is not None:
        attributes["http.route"] = route
    if info.error_type is not None:
        attributes["error.type"] = info.error_type
    elif info.status >= 500 or info.status == 0:
        attributes["error.type"] = str(info.status) if info.status else "incomplete"
    for key, value in (
        ("modelmarket.model", info.model),
        ("modelmarket.version", info.version),
        ("modelmarket.request_id", info.request_id),
        ("modelmarket.account_id", info.account_id),
        ("modelmarket.iu", info.iu),
        ("modelmarket.cost", info.cost),
        ("modelmarket.currency", info.currency),
    ):
        if value is not None:
            attributes[key] = value
    if info.operation is not None:
        attributes["gen_ai.operation.name"] = info.operation
        if info.model is not None:
            attributes["gen_ai.request.model"] = info.model
        if info.tokens_in is not None:
            attributes["gen_ai.usage.input_tokens"] = info.tokens_in
        if info.tokens_out is not None:
            attributes["gen_ai.usage.output_tokens"] = info.tokens_out
    return attributes


class ClientCall:
    """The gateway's CLIENT span around one call to a runner (or a provider's server)."""

    __slots__ = ("active", "attributes", "name", "propagate", "span_id", "start_ns")

    def __init__(self, active: _Active, name: str, attributes: dict[str, Any], propagate: bool) -> None:
        self.active = active
        self.name = name
        self.attributes = attributes
        self.propagate = propagate
        self.span_id = active.tracing._new_id(64)
        self.start_ns = time.time_ns()

    @property
    def traceparent(self) -> bytes:
        """The header that makes the runner's span a child of this one."""
        return format_traceparent(self.active.trace_id, self.span_id)

    def end(self, status: int | None, headers: Mapping[bytes, bytes] | None = None, error: str | None = None) -> None:
        """The call ended: with the runner's answer (``status``, its ``headers``), or with ``error``."""
        end_ns = time.time_ns()
        active = self.active
        attributes = self.attributes
        if status is not None:
            attributes["http.response.status_code"] = status
        failed = error is not None or status is None or status >= 500
        if error is not None:
            attributes["error.type"] = error
        elif failed:
            attributes["error.type"] = str(status)
        sink = active.tracing.sink
        if sink is None:
            return
        sink.add(
            SpanRecord(
                False,
                CLIENT,
                self.name,
                active.trace_id,
                self.span_id,
                active.span_id,
                False,
                self.start_ns,
                end_ns,
                attributes,
                failed,
            )
        )
        raw = headers.get(SPAN_HEADER) if headers is not None and self.propagate else None
        if raw is not None:
            active.tracing.runner_span(raw, self, end_ns)


def client_call(model: str, version: str, route: str, upstream: str | None = None) -> ClientCall | None:
    """The CLIENT span of a call to the runner of ``model@version`` (or to provider ``upstream``) on ``route``,
    when the request being served is traced; None otherwise (then nothing is sent and nothing costs).

    Send ``traceparent`` to our own runners only: a provider's server gets no trace ids of the platform's."""
    active = _ACTIVE.get()
    if active is None or active.tracing.sink is None:
        return None
    attributes: dict[str, Any] = {
        "http.request.method": "POST",
        "url.template": route,
        "modelmarket.model": model,
        "modelmarket.version": version,
        "server.address": upstream or RUNNER_SERVICE,
    }
    return ClientCall(active, f"POST {route}", attributes, propagate=upstream is None)


def current_trace() -> tuple[str, str] | None:
    """(trace id, span id) of the traced request being served, as hex."""
    active = _ACTIVE.get()
    return None if active is None else (f"{active.trace_id:032x}", f"{active.span_id:016x}")


class IncomingTrace:
    """With tracing off: the request observer that only reads an incoming ``traceparent``, so that the request
    log (and the usage event) still name the caller's trace. No span is made and nothing is sent on."""

    def start(self, info: CallInfo, scope: MutableMapping[str, Any]) -> None:
        incoming = parse_traceparent(_incoming(scope))
        if incoming is not None:
            info.trace_id = f"{incoming[0]:032x}"

    def finish(self, info: CallInfo) -> None:
        return None


def gateway_tracing(
    endpoint: str | None, sample_ratio: float, instance_id: str | None = None, timeout_s: float = 10.0
) -> GatewayTracing:
    """The gateway's tracing as settings ask: spans exported over OTLP/HTTP to ``endpoint`` in batches (a
    bounded queue: spans beyond it are dropped, never waited for), or trace context only without an endpoint."""
    sink = None
    if endpoint:
        from modelmarket.observability.otlp import OtlpExport

        sink = OtlpExport(endpoint, timeout_s, instance_id=instance_id)
    tracing = GatewayTracing(sink, sample_ratio, instance_id=instance_id)
    if sink is not None:
        import atexit

        atexit.register(tracing.close)
    return tracing
