"""A test-controlled HTTP proxy in front of an OpenAI-compatible server: it forwards every request, or makes it
fail, slow down or answer 429, as the test says at any moment.

Modes (``proxy.mode``, set from the test's thread at any time):

- ``ok``: forward the request to the upstream and relay its answer (a ``text/event-stream`` answer is relayed
  piece by piece as it comes);
- ``fail``: answer 500 with an OpenAI error object, without forwarding;
- ``slow``: wait ``delay_s``, then forward; a client that hangs up meanwhile is not forwarded (as a real server
  stops the work of a caller who went away);
- ``busy``: answer 429 with an OpenAI error object and ``Retry-After: retry_after_s``, without forwarding.

The proxy counts what it received (``requests``), what it forwarded (``forwarded``) and keeps what it saw of each
request (``seen``): the path, the model the body named, the Authorization header and the usage the upstream
reported. It runs uvicorn with a tiny ASGI app on 127.0.0.1 (a free port) in a background thread.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import uvicorn

Mode = Literal["ok", "fail", "slow", "busy"]
MODES: tuple[str, ...] = ("ok", "fail", "slow", "busy")
FAILURE_MESSAGE = "chaos proxy: injected failure"
BUSY_MESSAGE = "chaos proxy: too many requests"
UPSTREAM_TIMEOUT_S = 120.0
START_TIMEOUT_S = 30.0
_HOP_BY_HOP = {b"connection", b"content-length", b"transfer-encoding", b"keep-alive", b"date", b"server"}


@dataclass(slots=True)
class Seen:
    """One request as the proxy received it, and what became of it (filled in before the answer is sent, so a
    client that has its answer finds it complete)."""

    path: str
    model: str | None
    authorization: str | None
    mode: str
    status: int | None = None
    """The status the proxy answered (None: the client hung up before it answered)."""
    usage: dict[str, Any] | None = None
    """The ``usage`` object of the upstream's JSON answer (not for streams)."""


class ChaosProxy:
    def __init__(self, upstream_url: str, name: str = "proxy") -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.name = name
        self.mode: Mode = "ok"
        self.delay_s = 1.0
        """How long ``slow`` waits before forwarding."""
        self.retry_after_s = 7
        """What ``busy`` says in ``Retry-After``."""
        self.requests = 0
        self.forwarded = 0
        self.in_flight = 0
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._client: httpx.AsyncClient | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(self, lifespan="off", log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=f"chaos-{name}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control (from the test's thread) --------------------------------------------------------------------------

    def start(self) -> ChaosProxy:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"chaos proxy {self.name} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def set(self, mode: Mode, delay_s: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if delay_s is not None:
            self.delay_s = delay_s
        self.mode = mode

    def wait_idle(self, timeout_s: float = 30) -> None:
        """Wait until no request is being handled (a slowed one finished or was dropped)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight:
            if time.monotonic() > deadline:
                raise AssertionError(f"chaos proxy {self.name}: {self.in_flight} request(s) still in flight")
            time.sleep(0.02)

    # -- the server (its own thread and event loop) ----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT_S)
        try:
            await self._server.serve(sockets=[self._sock])
        finally:
            await self._client.aclose()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        headers = dict(scope["headers"])
        seen = Seen(scope["path"], _model_of(body), _text(headers.get(b"authorization")), self.mode)
        with self._lock:
            self.requests += 1
            self.in_flight += 1
            self.seen.append(seen)
        try:
            await self._answer(scope, receive, send, body, headers, seen)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _answer(
        self, scope: dict[str, Any], receive: Any, send: Any, body: bytes, headers: dict[bytes, bytes], seen: Seen
    ) -> None:
        if seen.mode == "fail":
            seen.status = 500
            await _send_json(send, 500, _error(FAILURE_MESSAGE, "server_error"))
        elif seen.mode == "busy":
            seen.status = 429
            extra = [(b"retry-after", str(self.retry_after_s).encode())]
            await _send_json(send, 429, _error(BUSY_MESSAGE, "rate_limit_error", "rate_limit_exceeded"), extra)
        elif seen.mode != "slow" or await _wait_unless_gone(receive, self.delay_s):
            await self._forward(scope, send, body, headers, seen)
        # else: the caller hung up while we were "working": nothing to forward, nothing to answer

    async def _forward(
        self, scope: dict[str, Any], send: Any, body: bytes, headers: dict[bytes, bytes], seen: Seen
    ) -> None:
        assert self._client is not None
        url = self.upstream_url + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        out = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers.items() if k not in _HOP_BY_HOP}
        out.pop("host", None)
        request = self._client.build_request(scope["method"], url, content=body, headers=out)
        response = await self._client.send(request, stream=True)
        with self._lock:
            self.forwarded += 1
        try:
            answer_headers = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in response.headers.multi_items()
                if k.encode("latin-1").lower() not in _HOP_BY_HOP
            ]
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                seen.status = response.status_code
                await send({"type": "http.response.start", "status": response.status_code, "headers": answer_headers})
                async for piece in response.aiter_raw():
                    await send({"type": "http.response.body", "body": piece, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            content = await response.aread()
        finally:
            await response.aclose()
        answer_headers.append((b"content-length", str(len(content)).encode()))
        seen.status, seen.usage = response.status_code, _usage_of(content)
        await send({"type": "http.response.start", "status": response.status_code, "headers": answer_headers})
        await send({"type": "http.response.body", "body": content})


# -- helpers ------------------------------------------------------------------------------------------------------


async def _read_body(receive: Any) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        parts.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(parts)


async def _wait_unless_gone(receive: Any, delay_s: float) -> bool:
    """Wait ``delay_s``; False as soon as the client hangs up (the next ``receive`` after the body is a
    disconnect)."""
    try:
        async with asyncio.timeout(delay_s):
            while (await receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        return True
    return False


async def _send_json(send: Any, status: int, doc: dict[str, Any], extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps(doc).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _model_of(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    model = doc.get("model") if isinstance(doc, dict) else None
    return model if isinstance(model, str) else None


def _usage_of(content: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(content)
    except ValueError:
        return None
    usage = doc.get("usage") if isinstance(doc, dict) else None
    return usage if isinstance(usage, dict) else None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")
