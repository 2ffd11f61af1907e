"""The gateway's guard on its HTTP/1.1 connections: a bounded request head, a deadline for the head and one for
the body. Runners do not use it (only the gateway reaches them, over a private Unix socket).

It is uvicorn's httptools protocol with a few lines around the parser, passed to uvicorn as ``http=`` (uvicorn
takes a protocol class there as well as a name). The request head is bounded by counting the raw bytes received
while a head is incomplete, *before* they reach the parser: llhttp sets no bound of its own, and httptools joins a
header value's pieces with ``+=``, so a 64 MB header used to be read and copied in full before the app ever saw
the request. A head past ``max_head_bytes`` is answered 431 once that many of its bytes were parsed (a head that
begins in the middle of a read, after another request's body, may get the rest of that read as well).

Deadlines are one timer per connection at most, armed only while something is incomplete: from the connection's
start (or a later request's first chunk) until its headers are complete, then from the headers until the end of
the body. A request that arrives whole in one read arms no timer at all, so the hot path pays a few attribute
checks. After a refusal the connection is closed gracefully: the answer, then our FIN, then whatever the client
still sends is dropped unparsed for at most ``LINGER_S`` (so the client reads the answer instead of a reset).

One route is paced instead: a package upload (``POST /api/packages``, up to ``MODELMARKET_MAX_PACKAGE_BYTES``) may
take longer than the body timeout as long as it keeps moving: when its deadline comes, it gets another body
timeout if at least ``UPLOAD_MIN_BYTES_PER_S`` for that whole time arrived meanwhile and the gateway has not
answered yet. A stalled or trickled upload is cut at the body timeout like any other request.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from modelmarket.core.errors import ensure
from modelmarket.gateway.api_packages import UPLOAD_PATH
from modelmarket.settings import Settings

__all__ = [
    "LINGER_S",
    "UPLOAD_MIN_BYTES_PER_S",
    "GuardedHttpProtocol",
    "HttpLimits",
    "gateway_http_options",
    "guarded_protocol",
]

LINGER_S = 1.0
"""After a refusal, how long the client's further bytes are read and dropped before the socket is closed."""
UPLOAD_MIN_BYTES_PER_S = 32 * 1024
"""The slowest a package upload may arrive (measured over each body timeout) and still outlive the body timeout."""

# Where the connection is in its current request. IDLE: between requests (nothing of the next one parsed yet).
_IDLE, _HEAD, _BODY, _CLOSING = 0, 1, 2, 3


@dataclass(frozen=True)
class HttpLimits:
    max_head_bytes: int
    """Most bytes of one request's head (request line and headers); past it: 431."""
    header_timeout_s: float
    """Time from the connection's start, or from a later request's first bytes, to the end of its head; then 408."""
    body_timeout_s: float
    """Time from the end of a request's head to the end of its body; then 408."""
    upload_path: str | None = None
    """``POST`` to this path is paced (see the module docstring) rather than cut at ``body_timeout_s``."""
    upload_min_bytes_per_s: int = UPLOAD_MIN_BYTES_PER_S

    @property
    def upload_floor_bytes(self) -> int:
        """What an upload must send in one body timeout to be given another."""
        return max(1, int(self.upload_min_bytes_per_s * self.body_timeout_s))

    def __post_init__(self) -> None:
        ensure(self.max_head_bytes > 0, f"max_head_bytes must be positive, got {self.max_head_bytes}")
        ensure(self.header_timeout_s > 0, f"header_timeout_s must be positive, got {self.header_timeout_s}")
        ensure(self.body_timeout_s > 0, f"body_timeout_s must be positive, got {self.body_timeout_s}")


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guard. Use ``guarded_protocol(limits)``: it binds the limits."""

    limits: ClassVar[HttpLimits]
    # Slots, not the instance dict: uvicorn's protocol already has 28 attributes, and past 30 CPython 3.11 stops
    # sharing the dict's keys, which slows every attribute access of uvicorn's own code too (measured under
    # valgrind: about 2,800 more instructions per request).
    __slots__ = ("_deadline", "_head_bytes", "_max_head_bytes", "_phase", "_upload_floor", "_window_bytes")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_head_bytes = self.limits.max_head_bytes
        self._head_bytes = 0  # bytes received since the last complete head, counted while no body is being read
        self._phase = _IDLE
        self._deadline: asyncio.TimerHandle | None = None
        self._upload_floor = 0  # > 0 while the body of a paced upload is read: bytes it owes per body timeout
        self._window_bytes = 0  # body bytes of that upload received since its deadline was last armed

    # -- asyncio protocol -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    # The four methods called on every request call the base class directly: cheaper than super() on 3.11.
    def data_received(self, data: bytes) -> None:
        if self._phase != _BODY:  # head bytes: bounded before the parser sees them
            room = self._max_head_bytes - self._head_bytes
            if len(data) > room:
                self._receive_past_budget(data, room)
                return
            self._head_bytes += len(data)
        elif self._upload_floor:
            self._window_bytes += len(data)
        HttpToolsProtocol.data_received(self, data)
        if self._phase and self._deadline is None:  # a request is incomplete (_IDLE is 0): it gets a deadline
            self._arm_deadline()

    def handle_websocket_upgrade(self) -> None:
        self._cancel_deadline()  # the connection leaves this protocol for the websocket one
        self._phase = _CLOSING
        super().handle_websocket_upgrade()

    # -- parser callbacks -----------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._phase = _HEAD
        HttpToolsProtocol.on_message_begin(self)

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._head_bytes = 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        HttpToolsProtocol.on_headers_complete(self)
        scope = self.scope
        if scope.get("path") == self.limits.upload_path and scope["method"] == "POST":
            self._upload_floor = self.limits.upload_floor_bytes
            self._window_bytes = 0

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        self._upload_floor = 0
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        HttpToolsProtocol.on_message_complete(self)

    # -- the guard ------------------------------------------------------------------------------------------
    def _receive_past_budget(self, data: bytes, room: int) -> None:
        """``data`` is longer than what the current head may still use: parse only that much of it. If the head
        completed inside it, go on with the rest as usual (a body, or pipelined requests); if not, it is too big.
        """
        if self._phase == _CLOSING:
            return  # refused already: drop it unparsed
        self._head_bytes = self._max_head_bytes  # on_headers_complete resets it: that is how we know
        if room > 0:
            super().data_received(data[:room])
        if self._phase == _CLOSING or self.transport.is_closing():
            return  # a parse error (answered 400 by uvicorn) or a websocket upgrade
        if self._head_bytes == self._max_head_bytes:
            limit = self._max_head_bytes
            self._refuse(431, f"request line and headers are larger than the limit of {limit} bytes")
            return
        self.data_received(data[room:])

    def _arm_deadline(self) -> None:
        if self._phase == _HEAD:
            self._deadline = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)
        elif self._phase == _BODY:
            self._deadline = self.loop.call_later(self.limits.body_timeout_s, self._body_timed_out)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self._phase not in (_IDLE, _HEAD) or self.transport.is_closing():
            return
        if self.flow.read_paused:  # we stopped reading (an earlier request is being answered): not the client's time
            self._arm_deadline()
            return
        timeout = self.limits.header_timeout_s
        self._refuse(408, f"the request line and headers did not arrive within {timeout:g} s")

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self._phase != _BODY or self.transport.is_closing():
            return
        if self.pipeline or self.flow.read_paused:
            # We are the ones not reading: an earlier request on this connection is still being answered, or the
            # app has not taken the body buffered so far. That time is not the client's.
            self._arm_deadline()
            return
        cycle = self.cycle
        if self._upload_floor and self._window_bytes >= self._upload_floor and not cycle.response_started:
            self._window_bytes = 0  # a paced upload that keeps moving: another body timeout
            self._arm_deadline()
            return
        if not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() answers http.disconnect; its sends are dropped
            cycle.message_event.set()
        if cycle.response_started:  # it answered (or began to) without the whole body: nothing more to say
            self._stop_reading()
            self._linger_close()
        else:
            self._refuse(408, f"the request body did not arrive within {self.limits.body_timeout_s:g} s")

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser refuses (no request line, a bad Content-Length, both a length and chunked
        framing) is answered like every other error: JSON naming the problem, then the connection closes."""
        self._refuse(400, f"malformed HTTP request: {msg.removesuffix('.')}")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with ``{"error": message}`` and close; read nothing more of this connection."""
        self._stop_reading()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.disconnected:
            # An earlier request's answer is still being written (pipelining): do not cut into it; close after it.
            cycle.keep_alive = False
            return
        body = orjson.dumps({"error": message})
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self._linger_close()

    def _stop_reading(self) -> None:
        """Nothing more of this connection is parsed: every further byte goes to _receive_past_budget, dropped."""
        self._cancel_deadline()
        self._phase = _CLOSING
        self._head_bytes = self._max_head_bytes

    def _linger_close(self) -> None:
        """Our FIN after what was written, then close once the client closes or ``LINGER_S`` has passed."""
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_S, transport.close)
        else:
            transport.close()


def guarded_protocol(limits: HttpLimits) -> type[GuardedHttpProtocol]:
    """The guarded protocol class with ``limits`` bound, to pass to uvicorn as ``http=``."""

    class BoundGuardedHttpProtocol(GuardedHttpProtocol):
        pass

    BoundGuardedHttpProtocol.limits = limits
    return BoundGuardedHttpProtocol


def gateway_http_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options of the gateway's public listener: ``serve_asgi(app, sockets, **gateway_http_options(s))``."""
    limits = HttpLimits(
        max_head_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        upload_path=UPLOAD_PATH,
    )
    # No websocket routes exist: refuse upgrades rather than hand the connection to a websocket implementation.
    return {"http": guarded_protocol(limits), "timeout_keep_alive": settings.keep_alive_s, "ws": "none"}
