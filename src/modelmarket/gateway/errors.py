"""The one table that maps every error to an HTTP status (edges translate; the core knows no HTTP)."""

from __future__ import annotations

from modelmarket.core.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    MeteringHalted,
    NotFound,
    NotReady,
    PermissionDenied,
    Unauthenticated,
)
from modelmarket.gateway.dataplane import IdempotencyKeyReused, ModelFailed
from modelmarket.metering.ports import EventLogFull
from modelmarket.runtime.asgi import BodyTooLarge
from modelmarket.runtime.pool import RunnerTimeout

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
    (BodyTooLarge, 413),
    (ModelFailed, 502),
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
    for cls, headers in EXTRA_HEADERS.items():
        if isinstance(exc, cls):
            return headers
    return []


def message_for(exc: Exception) -> str:
    if isinstance(exc, MeteringHalted):
        return f"metering is halted: {exc.reason}"
    message = getattr(exc, "message", None)
    return message if isinstance(message, str) else str(exc)
