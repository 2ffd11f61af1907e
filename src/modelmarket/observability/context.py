"""What one request did, gathered as it is served and read once when it ends (metrics, the request log, spans).

The edge (``gateway/app.py``) opens a :class:`CallInfo` per HTTP request and keeps it in a context variable; the
parts that learn something about the call (authentication: the account; the planes: model, version, IU, cost,
tokens) note it there with :func:`note`. Nothing here reads a clock beyond the start and the end, and nothing
holds a key, a prompt or an output: only names, ids and figures.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

_CURRENT: ContextVar[CallInfo | None] = ContextVar("modelmarket_call", default=None)


@dataclass(slots=True)
class CallInfo:
    method: str
    path: str
    """The path as asked, without its query string (a model's name is in it; never a key or an input)."""
    protocol: str
    """``oip``, ``openai``, ``api``, ``dashboard``, ``metrics``, ``health`` or ``other``."""
    started: float
    """``time.perf_counter()`` when the request arrived."""
    status: int = 0
    account_id: str | None = None
    key_id: str | None = None
    model: str | None = None
    version: str | None = None
    request_id: str | None = None
    iu: str | None = None
    """The call's Inference Units as the answer states them (decimal text)."""
    cost: str | None = None
    currency: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    operation: str | None = None
    """The GenAI operation of an OpenAI call: ``chat``, ``text_completion``, ``embeddings``, ``transcription``."""
    error_type: str | None = None
    """The class name of the error the request ended with (``RateLimited``, ``Unauthenticated``, ...)."""
    trace_id: str | None = None
    span_id: str | None = None
    ended: float | None = None
    extra: dict[str, Any] | None = None
    """Anything a part wants carried to the spans (small figures only)."""

    @property
    def duration_s(self) -> float:
        return (self.ended if self.ended is not None else time.perf_counter()) - self.started

    @property
    def billed(self) -> bool:
        return self.iu is not None and 200 <= self.status < 300


def protocol_of(path: str) -> str:
    if path.startswith("/v2/models/"):
        return "oip"
    if path.startswith("/v2/health") or path == "/v2" or path.startswith("/v2/"):
        return "health"
    if path.startswith("/v1/"):
        return "openai"
    if path.startswith("/api/"):
        return "api"
    if path == "/metrics":
        return "metrics"
    return "dashboard"


def begin(method: str, path: str) -> tuple[CallInfo, Token[CallInfo | None]]:
    info = CallInfo(method=method, path=path, protocol=protocol_of(path), started=time.perf_counter())
    return info, _CURRENT.set(info)


def end(token: Token[CallInfo | None]) -> None:
    _CURRENT.reset(token)


def current() -> CallInfo | None:
    return _CURRENT.get()


def note(**fields: Any) -> None:
    """Set fields of the current request's :class:`CallInfo` (nothing when there is none, as in a CLI)."""
    info = _CURRENT.get()
    if info is None:
        return
    for name, value in fields.items():
        setattr(info, name, value)


def note_answer_headers(info: CallInfo, headers: list[tuple[bytes, bytes]] | Any) -> None:
    """Read what an answer's own headers say about the call: request id, route (``model@version``), IU, cost."""
    for raw_name, raw_value in headers:
        name = raw_name.lower() if isinstance(raw_name, bytes) else raw_name
        if name == b"x-request-id":
            info.request_id = raw_value.decode("latin-1")
        elif name == b"x-modelmarket-route":  # "model@version", or "route->model@version" for a route's call
            model, _, version = raw_value.decode("latin-1").rpartition("->")[2].partition("@")
            if info.model is None:
                info.model = model
            if version and info.version is None:
                info.version = version
        elif name == b"x-modelmarket-iu":
            info.iu = raw_value.decode("latin-1")
        elif name == b"x-modelmarket-cost":
            amount, _, currency = raw_value.decode("latin-1").partition(" ")
            info.cost, info.currency = amount, currency or None
