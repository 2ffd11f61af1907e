"""Helpers for the hostile tests: a liveness probe that runs beside a hostile request, raw HTTP on loopback, error
checks and request bodies."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import statistics
import struct
import threading
import time
import wave
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

LIVE_BUDGET_S = 2.0
"""How long /v2/health/live may take while a hostile request is in flight (generous: the target is 100 ms, but the
machine is shared; the measured latency is printed)."""
PROBE_PAUSE_S = 0.02
MAX_PROBES = 2_000
RAW_TIMEOUT_S = 20.0


# -- liveness while a hostile request is in flight -------------------------------------------------------------


class LiveProbe:
    """``GET /v2/health/live`` in a loop on its own thread for as long as the ``with`` block runs.

    On a clean exit it checks that every probe answered 200 ``{"live": true}`` within ``LIVE_BUDGET_S`` and prints
    the measured latencies (shown with ``pytest -s`` or ``-rP``).
    """

    def __init__(self, url: str, what: str) -> None:
        self.url = url
        self.what = what
        self.latencies_s: list[float] = []
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"live probe: {what}", daemon=True)

    def __enter__(self) -> LiveProbe:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=LIVE_BUDGET_S + 10)
        if exc_type is None:
            self.check()

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=LIVE_BUDGET_S + 3) as http:
                for _ in range(MAX_PROBES):
                    started = time.perf_counter()
                    try:
                        r = http.get("/v2/health/live")
                    except httpx.HTTPError as exc:
                        self.problems.append(f"{type(exc).__name__}: {exc}")
                    else:
                        self.latencies_s.append(time.perf_counter() - started)
                        if r.status_code != 200 or r.json() != {"live": True}:
                            self.problems.append(f"{r.status_code} {r.text[:200]}")
                    if self._stop.wait(PROBE_PAUSE_S):
                        return
        except Exception as exc:  # never let the probe thread die with an unhandled exception
            self.problems.append(f"probe failed: {type(exc).__name__}: {exc}")

    @property
    def worst_ms(self) -> float:
        return max(self.latencies_s) * 1000

    def check(self) -> None:
        assert not self.problems, f"/v2/health/live failed during {self.what}: {self.problems[:3]}"
        assert self.latencies_s, f"/v2/health/live was never probed during {self.what}"
        median_ms = statistics.median(self.latencies_s) * 1000
        print(
            f"[live] {self.what}: {len(self.latencies_s)} probes in flight, "
            f"median {median_ms:.1f} ms, worst {self.worst_ms:.1f} ms"
        )
        assert self.worst_ms < LIVE_BUDGET_S * 1000, f"/v2/health/live took {self.worst_ms:.0f} ms during {self.what}"


# -- error answers -----------------------------------------------------------------------------------------------


def assert_error(status: int, content_type: str | None, body: bytes, expected: int, *words: str) -> str:
    """The answer is ``expected`` with a JSON body ``{"error": "..."}`` whose message holds every one of ``words``."""
    assert status == expected, f"expected {expected}, got {status}: {body[:300]!r}"
    assert (content_type or "").startswith("application/json"), f"content type {content_type!r}: {body[:200]!r}"
    doc = json.loads(body)
    assert isinstance(doc, dict) and list(doc) == ["error"], f"not an error body: {doc!r}"
    message = doc["error"]
    assert isinstance(message, str) and message, doc
    for word in words:
        assert word in message, f"{word!r} not in the error {message!r}"
    return message


def assert_error_response(r: httpx.Response, expected: int, *words: str) -> str:
    return assert_error(r.status_code, r.headers.get("content-type"), r.content, expected, *words)


# -- raw HTTP on loopback ----------------------------------------------------------------------------------------


@dataclass
class RawAnswer:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    closed: bool = False
    """The server closed the connection (EOF or reset) before or after answering."""
    elapsed_s: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)

    def assert_error(self, expected: int, *words: str) -> str:
        return assert_error(self.status or 0, self.headers.get("content-type"), self.body, expected, *words)


def http_request(method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    """An HTTP/1.1 request exactly as written (no path normalisation), asking the server to close afterwards."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _parse(data: bytes) -> tuple[int, dict[str, str], bytes, int | None] | None:
    """(status, headers, body so far, content length) once the head has arrived, else None."""
    head, sep, rest = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    return status, headers, rest, int(length) if length is not None else None


def raw_request(hostport: str, data: bytes, timeout_s: float = RAW_TIMEOUT_S) -> RawAnswer:
    """Send ``data`` on a fresh connection (from a thread, so an answer sent before the server read it all is still
    seen) and read one answer, until it is complete, the server closes, or ``timeout_s`` passes."""
    host, port = hostport.rsplit(":", 1)
    started = time.monotonic()
    sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    sender = threading.Thread(target=_send_quietly, args=(sock, data), daemon=True)
    sender.start()
    received = b""
    closed = False
    deadline = started + timeout_s
    try:
        while time.monotonic() < deadline:
            parsed = _parse(received)
            if parsed is not None and parsed[3] is not None and len(parsed[2]) >= parsed[3]:
                break
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(timeout=5)
        sock.close()
    elapsed = time.monotonic() - started
    parsed = _parse(received)
    if parsed is None:
        return RawAnswer(None, closed=closed, elapsed_s=elapsed)
    status, headers, body, length = parsed
    return RawAnswer(status, headers, body[:length] if length is not None else body, closed, elapsed)


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server stopped reading (it answered, or closed): the reader sees which
        sock.sendall(data)


# -- request bodies ----------------------------------------------------------------------------------------------


def digits_body(rows: int = 1, value: float = 3.0) -> dict[str, Any]:
    data = [[value] * 64 for _ in range(rows)]
    return {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [rows, 64], "data": data}]}


def sentiment_body(texts: list[str]) -> dict[str, Any]:
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}


def bytes_elements(items: list[bytes]) -> bytes:
    """BYTES elements in the binary tensor extension: each a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def binary_request(name: str, datatype: str, shape: list[Any], data: bytes, size: Any = None) -> tuple[bytes, int]:
    """A binary-extension request body with one input (``binary_data_size`` defaults to ``len(data)``) and the
    value of its Inference-Header-Content-Length."""
    doc = {
        "inputs": [
            {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(data) if size is None else size},
            }
        ]
    }
    header = json.dumps(doc).encode()
    return header + data, len(header)


def silent_wav(seconds: float, rate_hz: int = 16_000) -> bytes:
    """A 16-bit mono PCM WAV file of silence lasting ``seconds``."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(b"\0\0" * round(seconds * rate_hz))
    return out.getvalue()


# -- OpenAI error objects (the /v1 edge) -------------------------------------------------------------------------

ANY_PARAM: Any = object()
"""``assert_openai_error(..., param=ANY_PARAM)``: do not check the error object's ``param``."""
OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error"}
MAX_ERROR_MESSAGE_CHARS = 1_000
"""An error message longer than this echoes the caller's input back instead of naming the problem."""


def assert_openai_error(r: httpx.Response, expected: int, *words: str, param: Any = ANY_PARAM) -> dict[str, Any]:
    """The answer is ``expected`` with a JSON OpenAI error object ``{"error": {"message", "type", "param",
    "code"}}`` whose message holds every one of ``words`` and is short; with ``param`` (a name, or None for none)
    the object names exactly that parameter. Returns the inner object."""
    body = r.content
    assert r.status_code == expected, f"expected {expected}, got {r.status_code}: {body[:300]!r}"
    content_type = r.headers.get("content-type") or ""
    assert content_type.startswith("application/json"), f"content type {content_type!r}: {body[:200]!r}"
    doc = json.loads(body)
    assert isinstance(doc, dict) and list(doc) == ["error"], f"not an OpenAI error object: {doc!r}"
    error = doc["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, error
    message = error["message"]
    assert isinstance(message, str) and message, error
    assert len(message) <= MAX_ERROR_MESSAGE_CHARS, f"the error echoes the input back: {message[:300]!r}..."
    if expected in OPENAI_ERROR_TYPES:
        assert error["type"] == OPENAI_ERROR_TYPES[expected], error
    if param is not ANY_PARAM:
        assert error["param"] == param, f"param {error['param']!r}, expected {param!r}: {message!r}"
    for word in words:
        assert word in message, f"{word!r} not in the error {message!r}"
    return error
