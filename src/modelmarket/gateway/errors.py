"""The one table that maps every error to an HTTP status (edges translate; the core knows no HTTP)."""

from __future__ import annotations

import math

from modelmarket.core.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    MeteringHalted,
    NotFound,
    NotReady,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
)
from modelmarket.gateway.attempts import ModelFailed, UpstreamBusy
from modelmarket.gateway.dataplane import IdempotencyKeyReused
from modelmarket.gateway.pipeline import PipelineStepFailed
from modelmarket.metering.ports import EventLogFull
from modelmarket.routing import RouteUnavailable
from modelmarket.runtime.asgi import BodyTooLarge
from modelmarket.runtime.pool import RunnerTimeout
from modelmarket.runtime.supervisor import RunnerBrokeOff, SandboxLimit

RETRY_AFTER_S = 1
"""What a 503 for an overloaded event log tells the client to wait before retrying."""

STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInput, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (AlreadyExists, 409),
    (Conflict, 409),
    (IdempotencyKeyReused, 422),
    (QuotaExceeded, 402),
    (RateLimited, 429),
    (UpstreamBusy, 429),
    (BodyTooLarge, 413),
    (ModelFailed, 502),
    (SandboxLimit, 502),
    (RunnerBrokeOff, 502),
    (PipelineStepFailed, 502),
    (RunnerTimeout, 504),
    (NotReady, 503),
    (EventLogFull, 503),
    (MeteringHalted, 503),
)

EXTRA_HEADERS: dict[type[Exception], list[tuple[bytes, bytes]]] = {
    EventLogFull: [(b"retry-after", str(RETRY_AFTER_S).encode())],
    NotReady: [(b"retry-after", str(RETRY_AFTER_S).encode())],
    MeteringHalted: [(b"retry-after", str(RETRY_AFTER_S).encode())],
}


def status_for(exc: Exception) -> int | None:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return None


def headers_for(exc: Exception) -> list[tuple[bytes, bytes]]:
    if isinstance(exc, RateLimited):
        return [(b"retry-after", str(exc.retry_after_whole_s).encode())]
    if isinstance(exc, UpstreamBusy) and exc.retry_after and exc.retry_after.isdigit():
        return [(b"retry-after", exc.retry_after.encode())]
    if isinstance(exc, RouteUnavailable):  # every circuit is open: come back when the first cooldown ends
        return [(b"retry-after", str(max(1, math.ceil(exc.retry_after_s))).encode())]
    for cls, headers in EXTRA_HEADERS.items():
        if isinstance(exc, cls):
            return headers
    return []


def message_for(exc: Exception) -> str:
    if isinstance(exc, MeteringHalted):
        return f"metering is halted: {exc.reason}"
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else str(exc)


def extra_fields_for(exc: Exception) -> dict[str, object]:
    """JSON fields an error body carries beside ``"error"`` (the limit that refused a call); usually none."""
    if isinstance(exc, RateLimited):
        return {
            "limit": exc.limit,
            "scope": exc.scope,
            "allowed": exc.allowed,
            "retry_after_s": exc.retry_after_whole_s,
        }
    if isinstance(exc, QuotaExceeded):
        fields: dict[str, object] = {"limit": exc.limit, "scope": exc.scope}
        if exc.unit_kind is not None:
            fields["unit_kind"] = exc.unit_kind
        if exc.currency is not None:
            fields["currency"] = exc.currency
        return fields | {"allowed": exc.allowed, "used": exc.used}
    return {}
