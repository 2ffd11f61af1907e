"""The one table that maps domain errors to HTTP status codes (edges translate; the core knows no HTTP)."""

from __future__ import annotations

from modelmarket.adapters.bus import EventLogFull
from modelmarket.core.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    NotReady,
    PermissionDenied,
    Unauthenticated,
)
from modelmarket.runtime.asgi import BodyTooLarge

STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInput, 400),
    (Unauthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (AlreadyExists, 409),
    (Conflict, 409),
    (BodyTooLarge, 413),
    (NotReady, 503),
    (EventLogFull, 503),
)


def status_for(exc: Exception) -> int | None:
    for cls, status in STATUS_BY_ERROR:
        if isinstance(exc, cls):
            return status
    return None
