"""OTLP/HTTP export of the gateway's spans: batched in a thread, written straight to protobuf bytes.

Why not the SDK's ``BatchSpanProcessor`` with ``opentelemetry-exporter-otlp-proto-http``: they want a
``ReadableSpan`` per span (~5 us to build, ~4 us more to queue) and their encoder builds a protobuf object per
span, attribute and value (~80 us a span), all in the gateway's process and under its GIL. At three spans a call,
at every call, that was a third of the gateway's CPU (``benchmarks/observability_overhead.py``). Here a finished
span is a tuple (``tracing.SpanRecord``) appended to a bounded queue; a thread writes each batch as an
``ExportTraceServiceRequest`` in a few microseconds a span (attributes repeat, so their encoded bytes are
memoized) and POSTs it. ``tests/unit/test_tracing_pieces.py`` checks that the official protobuf classes read
back exactly what the SDK's own encoder writes for the same spans.

The batching follows the SDK's settings: ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048 spans queued at most; more are dropped,
never waited for), ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512 a request; a full batch is sent at once) and
``OTEL_BSP_SCHEDULE_DELAY`` (ms between sends otherwise; 1000 here). One POST at a time
(``application/x-protobuf``) on a kept-alive connection, bounded by ``timeout_s``; a batch the collector does not
take is dropped and said so in the gateway's log at most once a minute (the endpoint shown without its user,
password or query string), as is a batch the encoder fails on (the thread goes on). What is queued is sent when
the gateway shuts down (``shutdown``: 5 s at most, then the rest is dropped).
"""

from __future__ import annotations

import http.client
import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from modelmarket import __version__
from modelmarket.observability.tracing import SCOPE_NAME, SpanRecord, resource_attributes

log = logging.getLogger(__name__)
WARN_EVERY_S = 60.0
DEFAULT_MAX_QUEUE = 2048
DEFAULT_BATCH = 512
DEFAULT_DELAY_MS = 1000
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_DOUBLE = struct.Struct("<d")
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
"""``SpanFlags``: the parent's remoteness is known / the parent is remote."""
_SMALL = [bytes([n]) for n in range(128)]


def _varint(value: int) -> bytes:
    if 0 <= value < 128:
        return _SMALL[value]
    value &= 0xFFFFFFFFFFFFFFFF  # int64 as two's complement, as protobuf writes a negative int64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes, message)."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """``AnyValue``: string 1, bool 2, int 3, double 4, array 5, kvlist 6, bytes 7 (None: empty)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Mapping):
        return _field(b"\x32", b"".join(_field(b"\x0a", _key_value(str(k), v)) for k, v in value.items()))
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(v)) for v in value))
    raise TypeError(f"an attribute value of type {type(value).__name__} cannot be exported")


def _key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode("utf-8")) + _field(b"\x12", _any_value(value))


_ENCODED: dict[tuple[bytes, str, type, Any], bytes] = {}
"""Attributes already written (most repeat: method, route, model, version, status, currency): the whole field."""
_MEMO_TYPES = frozenset({str, int, float, bool})
ENCODED_MAX = 4096
"""Entries kept at most; the memo starts over when full (unique values such as request ids pass through it)."""
_MEMO_LOCK = threading.Lock()


def _attributes(tag: bytes, attributes: Mapping[str, Any] | None) -> bytes:
    if not attributes:
        return b""
    parts = []
    memo = _ENCODED
    for key, value in attributes.items():
        cls = value.__class__
        if cls in _MEMO_TYPES:  # hashable, and its type is part of the key (True is not 1)
            memo_key = (tag, key, cls, value)
            found = memo.get(memo_key)
            if found is None:
                found = _field(tag, _key_value(key, value))
                with _MEMO_LOCK:
                    if len(memo) >= ENCODED_MAX:
                        memo.clear()
                    memo[memo_key] = found
            parts.append(found)
        else:
            parts.append(_field(tag, _key_value(key, value)))
    return b"".join(parts)


def encode_span(record: SpanRecord) -> bytes:
    """One ``Span`` message (trace and span ids, parent, name, kind, times, attributes, status, flags)."""
    parts = [b"\x0a\x10", record.trace_id.to_bytes(16, "big"), b"\x12\x08", record.span_id.to_bytes(8, "big")]
    if record.parent_id is not None:
        parts += [b"\x22\x08", record.parent_id.to_bytes(8, "big")]
    parts += [
        _field(b"\x2a", record.name.encode("utf-8")),
        b"\x30",
        _varint(record.kind),
        b"\x39",
        _FIXED64.pack(record.start_ns),
        b"\x41",
        _FIXED64.pack(record.end_ns),
        _attributes(b"\x4a", record.attributes),
        b"\x7a\x02\x18\x02" if record.error else b"\x7a\x00",  # Status {code: ERROR} or an empty (UNSET) one
        b"\x85\x01",
        _FIXED32.pack(_HAS_IS_REMOTE | (_IS_REMOTE if record.parent_id is not None and record.parent_remote else 0)),
    ]
    return b"".join(parts)


class Encoder:
    """Writes ``ExportTraceServiceRequest`` bodies: the spans of the gateway's resource, then its runners'."""

    def __init__(self, instance_id: str | None = None) -> None:
        scope = _field(b"\x0a", _field(b"\x0a", SCOPE_NAME.encode()) + _field(b"\x12", __version__.encode()))
        self._heads = tuple(
            (_field(b"\x0a", _attributes(b"\x0a", attributes)), scope)
            for attributes in resource_attributes(instance_id)
        )

    def request(self, records: Iterable[SpanRecord]) -> bytes:
        spans: tuple[list[bytes], list[bytes]] = ([], [])
        for record in records:
            spans[record.runner].append(_field(b"\x12", encode_span(record)))
        out = []
        for (resource, scope), encoded in zip(self._heads, spans, strict=True):
            if encoded:
                scope_spans = _field(b"\x12", scope + b"".join(encoded))
                out.append(_field(b"\x0a", resource + scope_spans))
        return b"".join(out)


def shown_endpoint(endpoint: str) -> str:
    """``endpoint`` without what may be a secret (user and password, query string, fragment)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # not a port number
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class OtlpHttpClient:
    """POSTs request bodies to an OTLP/HTTP traces endpoint (``http(s)://host:port/v1/traces``)."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "MODELMARKET_OTLP_ENDPOINT is not an http(s) URL with a host (e.g. http://127.0.0.1:4318/v1/traces)"
            )
        self.endpoint = endpoint
        self.shown = shown_endpoint(endpoint)
        """The endpoint as the gateway's log may show it: no user, password or query string."""
        self.timeout_s = timeout_s
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/v1/traces") + (f"?{parts.query}" if parts.query else "")
        self._headers = {"Content-Type": "application/x-protobuf", **(headers or {})}
        self._conn: http.client.HTTPConnection | None = None

    def _once(self, body: bytes) -> int:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._conn = kind(self._host, self._port, timeout=self.timeout_s)
        try:
            self._conn.request("POST", self._path, body, self._headers)
            answer = self._conn.getresponse()
            answer.read()
            return answer.status
        except (OSError, http.client.HTTPException):
            self.close()
            raise

    def post(self, body: bytes) -> str | None:
        """None once the collector took ``body``; else why not."""
        try:
            try:
                status = self._once(body)
            except (OSError, http.client.HTTPException):  # a kept-alive connection the collector closed: once more
                status = self._once(body)
        except (OSError, http.client.HTTPException) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


class OtlpExport:
    """The ``tracing.SpanSink`` that sends spans in batches over OTLP/HTTP (see the module's docstring)."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0, *, instance_id: str | None = None) -> None:
        self.client = OtlpHttpClient(endpoint, timeout_s)
        self.encoder = Encoder(instance_id)
        self.max_queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE)
        self.batch = min(_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", DEFAULT_BATCH), self.max_queue)
        self.delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY_MS) / 1000
        self.dropped = 0
        """Spans dropped because the queue was full or the collector did not take them."""
        self._queue: deque[SpanRecord] = deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._warned_at = -WARN_EVERY_S
        self._start_lock = threading.Lock()

    def add(self, record: SpanRecord) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue or self._stopping:
            self.dropped += 1
            return
        queue.append(record)
        if self._thread is None:
            self._start()
        if len(queue) >= self.batch:
            self._wake.set()

    def _start(self) -> None:
        with self._start_lock:  # started on the first span: a gateway that traces nothing runs no thread
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="otlp export", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.delay_s)
            self._wake.clear()
            self._drain()
        self._drain()  # what was queued before the stop

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(self.batch, len(queue)))]
            try:
                why = self.client.post(self.encoder.request(batch))
            except Exception as exc:  # a span the encoder cannot write must not end the export thread
                why = f"{type(exc).__name__} while encoding or sending"
            if why is not None:
                self._failed(len(batch), why)

    def _failed(self, count: int, why: str) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("%d spans were not exported to %s (%s); they are dropped", count, self.client.shown, why)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Send what is queued and stop, waiting ``timeout_s`` at most: the export thread sends the last batches
        (a collector that does not answer in time cannot hold the gateway's exit; those spans are dropped)."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is None:  # nothing was ever queued
            return
        thread.join(timeout_s)
        if thread.is_alive():
            left = len(self._queue)
            self.dropped += left
            log.warning(
                "the span export to %s did not end within %g s; %d queued spans are dropped",
                self.client.shown,
                timeout_s,
                left,
            )
        else:
            self.client.close()
