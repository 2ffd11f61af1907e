"""The W3C trace context and the runner's side of a traced call: its span, carried back to the gateway in a header.

A runner has no network (it may run under bubblewrap or gVisor), so it cannot export its span: it returns it,
finished, in the ``x-modelmarket-span`` answer header (compact JSON), and the gateway (``tracing.py``) checks it
before exporting it. The runner imports this module only: no OpenTelemetry package, nothing slow at its start.
"""

from __future__ import annotations

import functools
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson

TRACEPARENT = b"traceparent"
SPAN_HEADER = b"x-modelmarket-span"
"""The runner's finished span, compact JSON, on the answer to a call that carried a sampled ``traceparent``."""
SPAN_HEADER_MAX_BYTES = 2048
"""A longer span header is dropped unread."""
CLOCK_SLACK_NS = 5_000_000_000
"""How far outside the gateway's own client span a runner's span may start or end (clocks of one machine; a
gVisor sandbox reads the host's clock through its own layer) before it is dropped as implausible."""
SANDBOXES = frozenset({"inprocess", "process", "bwrap", "gvisor"})
"""The values of ``modelmarket.sandbox`` a runner's span may carry (``registry/serving.Profile``)."""
RUNNER_ATTRIBUTES = frozenset(
    {"http.response.status_code", "error.type", "process.pid", "modelmarket.runtime", "modelmarket.sandbox"}
)
"""The only attributes of a runner's span the gateway takes from it, each checked against the values it may have
(a status code, a pid, an installed runtime, a sandbox profile); anything else a runner sends is dropped. The
span's name, ``http.request.method``, ``http.route``, ``modelmarket.model`` and ``modelmarket.version`` are the
gateway's own, from the client span that made the call (``tracing.ClientCall``): nothing a runner writes there
reaches a trace."""
_PID_MAX = 1 << 22
"""Linux's largest ``pid_max``."""
_ERROR_TYPE_RE = re.compile(r"[1-5][0-9]{2}")
_TRACEPARENT_RE = re.compile(rb"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_HEX16_RE = re.compile(r"[0-9a-f]{16}")
_STATUSES = ("unset", "ok", "error")


def parse_traceparent(raw: bytes | None) -> tuple[int, int, bool] | None:
    """(trace id, parent span id, sampled) of a valid version-00 ``traceparent``; None for anything else (absent,
    malformed, all-zero ids), which then counts as no trace context at all."""
    if raw is None or len(raw) != 55:
        return None
    match = _TRACEPARENT_RE.fullmatch(raw)
    if match is None:
        return None
    trace_id, span_id = int(match.group(1), 16), int(match.group(2), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(int(match.group(3), 16) & 1)


def format_traceparent(trace_id: int, span_id: int, sampled: bool = True) -> bytes:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}".encode()


@dataclass(frozen=True, slots=True)
class RunnerSpan:
    """What the gateway takes from a runner's span header: ids, times, status and the checked attributes."""

    span_id: int
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, str | int]


def decode_runner_span(raw: bytes, trace_id: int, parent_id: int, window_ns: tuple[int, int]) -> RunnerSpan | None:
    """The runner's span of header ``raw`` if it is well-formed and belongs where it claims: trace ``trace_id``,
    parent ``parent_id`` (the client span that called it), times within ``window_ns`` (+- ``CLOCK_SLACK_NS``).
    Only ``RUNNER_ATTRIBUTES`` with a value they may have are kept (``runner_attributes``); the runner's span name
    is not read. A malformed header is dropped as a whole."""
    if len(raw) > SPAN_HEADER_MAX_BYTES:
        return None
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    span, start, end = doc.get("span"), doc.get("start"), doc.get("end")
    status = doc.get("status", "unset")
    if doc.get("trace") != f"{trace_id:032x}" or doc.get("parent") != f"{parent_id:016x}":
        return None
    if not isinstance(span, str) or not _HEX16_RE.fullmatch(span) or int(span, 16) in (0, parent_id):
        return None
    if status not in _STATUSES:
        return None
    if start.__class__ is not int or end.__class__ is not int:  # never a bool, a float or a string
        return None
    if not window_ns[0] - CLOCK_SLACK_NS <= start <= end <= window_ns[1] + CLOCK_SLACK_NS:
        return None
    given = doc.get("attributes")
    attributes = runner_attributes(given) if given.__class__ is dict else {}
    return RunnerSpan(int(span, 16), start, end, status, attributes)


def runner_attributes(given: dict[str, Any]) -> dict[str, str | int]:
    """The attributes of a runner's span the gateway keeps: a status code (100-599), a pid, ``error.type`` as a
    status code, an installed runtime's name, a known sandbox profile. Any other key or value is dropped."""
    kept: dict[str, str | int] = {}
    status, pid = given.get("http.response.status_code"), given.get("process.pid")
    if status.__class__ is int and 100 <= status <= 599:
        kept["http.response.status_code"] = status
    if pid.__class__ is int and 0 < pid <= _PID_MAX:
        kept["process.pid"] = pid
    error = given.get("error.type")
    if error.__class__ is str and _ERROR_TYPE_RE.fullmatch(error):
        kept["error.type"] = error
    runtime, sandbox = given.get("modelmarket.runtime"), given.get("modelmarket.sandbox")
    if runtime.__class__ is str and runtime in _installed_runtimes():
        kept["modelmarket.runtime"] = runtime
    if sandbox.__class__ is str and sandbox in SANDBOXES:
        kept["modelmarket.sandbox"] = sandbox
    return kept


@functools.cache
def _installed_runtimes() -> frozenset[str]:
    """The runtimes installed here (the entry points a runner loads its runtime from), read once, on the gateway:
    a runner imports nothing of the plug-in machinery for its spans."""
    from modelmarket.runtime.plugins import available_runtimes

    return frozenset(available_runtimes())


@dataclass(slots=True)
class _RunnerCall:
    trace_id: int
    parent_id: int
    span_id: int
    name: str
    start_ns: int
    attributes: dict[str, str | int]


class RunnerSpans:
    """The runner's side: one span per call that came with a sampled ``traceparent`` (a valid W3C one: its trace
    and parent are read from it), ended when the answer's head is sent and returned in ``SPAN_HEADER``.

    The span is written directly, not through the OpenTelemetry SDK's tracer: that costs ~70 us of the runner's
    CPU per call against ~7 us here (measured on the reference machine; a `digits` call costs the runner a few
    hundred), and the runner has nothing to export it with anyway. So the runner never imports the SDK, and a
    call without ``traceparent``, or with an unsampled one, costs nothing but the header lookup."""

    def __init__(self, model: str, version: str, runtime: str, sandbox: str, randbits: Any = None) -> None:
        self.attributes: dict[str, str | int] = {
            "modelmarket.model": model,
            "modelmarket.version": version,
            "modelmarket.runtime": runtime,
            "modelmarket.sandbox": sandbox,
            "process.pid": os.getpid(),
        }
        self._randbits = randbits or random.getrandbits

    def start(self, traceparent: bytes, method: str, route: str) -> _RunnerCall | None:
        """The span of a call with ``traceparent``; None when there is none to make (absent, malformed, or a
        trace its caller does not record)."""
        parsed = parse_traceparent(traceparent)
        if parsed is None or not parsed[2]:
            return None
        span_id = 0
        while span_id in (0, parsed[1]):
            span_id = self._randbits(64)
        attributes = {**self.attributes, "http.request.method": method, "http.route": route}
        return _RunnerCall(parsed[0], parsed[1], span_id, f"{method} {route}", time.time_ns(), attributes)

    def finish(self, span: _RunnerCall, status: int) -> bytes:
        """End ``span`` with the answer's ``status``: the value of its ``SPAN_HEADER``."""
        end_ns = time.time_ns()
        span.attributes["http.response.status_code"] = status
        failed = status >= 500
        if failed:
            span.attributes["error.type"] = str(status)
        doc = {
            "trace": f"{span.trace_id:032x}",
            "span": f"{span.span_id:016x}",
            "parent": f"{span.parent_id:016x}",
            "name": span.name,
            "start": span.start_ns,
            "end": end_ns,
            "status": "error" if failed else "unset",
            "attributes": span.attributes,
        }
        return orjson.dumps(doc)
