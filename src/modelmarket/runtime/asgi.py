"""Minimal ASGI helpers shared by the runner and the gateway's hot path (no framework on the hot path), and the
one uvicorn configuration both serve with."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from modelmarket.core.errors import InvalidInput

if TYPE_CHECKING:
    import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON = b"application/json"


class BodyTooLarge(Exception):
    pass


class BodyIncomplete(InvalidInput):
    """The connection ended before the whole request body arrived (the client went away, or the gateway's body
    timeout closed it). Nothing must act on the part that did arrive; nobody is left to read an answer."""


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, at most ``limit`` bytes (else ``BodyTooLarge``); ``BodyIncomplete`` if the
    connection ends first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyIncomplete(f"the request body ended after {size} bytes: the connection was closed")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"request body is larger than the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra_headers:
        headers.extend(extra_headers)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


KEEP_ALIVE_S = 300
"""How long an idle keep-alive connection stays open. Long, because the gateway's pool keeps connections to each
runner: a runner closing them sooner would make the next call on each one pay for a reconnect."""


def uvicorn_config(app: Any, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration of every server the platform runs (gateway and runners).

    httptools and uvloop (measured fastest), no access log (every call is already a usage event or an error
    answer), lifespan on (startup loads the app's state before the first request), no ``Server`` header, no
    proxy headers (nothing sits in front of us that we trust). ``overrides`` are passed through to uvicorn: the
    gateway's public listener passes ``gateway.http_guard.gateway_http_options`` (its guarded protocol class as
    ``http``, its own ``timeout_keep_alive``); runners keep these defaults.
    """
    import uvicorn

    settings: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "on",
        "http": "httptools",
        "loop": "uvloop",
        "timeout_keep_alive": KEEP_ALIVE_S,
        "proxy_headers": False,
        "server_header": False,
    }
    settings.update(overrides)
    return uvicorn.Config(app, **settings)


def serve_asgi(app: Any, sockets: Sequence[socket.socket], **overrides: Any) -> None:
    """Serve ``app`` on already-listening ``sockets`` until SIGTERM/SIGINT (uvicorn's graceful shutdown)."""
    import uvicorn

    uvicorn.Server(uvicorn_config(app, **overrides)).run(sockets=list(sockets))
