"""Shared kernel: money, ids, clock, errors and invariant checks. No I/O."""

from modelmarket.core.errors import (
    AlreadyExists,
    Conflict,
    DomainError,
    InvalidInput,
    NotFound,
    NotReady,
    PermissionDenied,
    Unauthenticated,
    ensure,
)
from modelmarket.core.money import quantize_minor

__all__ = [
    "AlreadyExists",
    "Conflict",
    "DomainError",
    "InvalidInput",
    "NotFound",
    "NotReady",
    "PermissionDenied",
    "Unauthenticated",
    "ensure",
    "quantize_minor",
]
