"""Domain errors. They carry no transport codes: each edge maps them (see gateway/errors.py)."""

from __future__ import annotations

import math
from typing import Literal


class DomainError(Exception):
    """Base class of every error the platform answers with a message instead of crashing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(DomainError):
    """The caller sent something malformed: a bad manifest field, a wrong tensor shape, a bad period."""


class NotFound(DomainError):
    """A named thing (model, version, account) does not exist."""


class AlreadyExists(DomainError):
    """A create would duplicate something that exists."""


class Conflict(DomainError):
    """The request contradicts stored state (e.g. re-publishing a version with different bytes)."""


class Unauthenticated(DomainError):
    """No credentials, or credentials that do not resolve to an account."""


class PermissionDenied(DomainError):
    """Authenticated, but the account's role does not allow the action."""


class NotReady(DomainError):
    """A dependency (a model runner) is not ready to serve yet."""


class RateLimited(DomainError):
    """More requests in the sliding minute than a key's or an account's ``rpm`` allows; nothing was run or billed."""

    limit = "rpm"

    def __init__(self, message: str, *, scope: Literal["key", "account"], allowed: int, retry_after_s: float) -> None:
        super().__init__(message)
        self.scope = scope
        self.allowed = allowed
        self.retry_after_s = retry_after_s
        """Seconds until the oldest admission in the window leaves it (a new request is then admitted)."""

    @property
    def retry_after_whole_s(self) -> int:
        """``retry_after_s`` as whole seconds, rounded up, at least 1 (what a ``Retry-After`` header carries)."""
        return max(1, math.ceil(round(self.retry_after_s, 3)))


class QuotaExceeded(DomainError):
    """A daily IU quota, a monthly budget or a free plan's grant would be passed; nothing was run or billed.

    ``allowed`` and ``used`` are exact decimal text (IU, or money in ``currency`` for a budget); ``used`` counts
    settled usage plus calls in flight, before this call.
    """

    def __init__(
        self,
        message: str,
        *,
        limit: Literal["iu_per_day", "budget", "grant"],
        scope: Literal["key", "account"],
        allowed: str,
        used: str,
        unit_kind: str | None = None,
        currency: str | None = None,
    ) -> None:
        super().__init__(message)
        self.limit = limit
        self.scope = scope
        self.allowed = allowed
        self.used = used
        self.unit_kind = unit_kind
        """The unit kind of an ``iu_per_day`` or ``grant`` limit; None for a budget."""
        self.currency = currency
        """The currency of a ``budget``; None otherwise."""


class InvariantViolated(Exception):
    """A programmer error: an invariant that must always hold did not. Never caught on money paths."""


def ensure(condition: bool, message: str) -> None:
    """Assert an invariant that must survive ``python -O`` (unlike ``assert``)."""
    if not condition:
        raise InvariantViolated(message)


class MeteringHalted(Exception):
    """The metering consumer met a record that breaks an invariant: it stops and leaves the log as it is.

    Not a DomainError: nothing a caller sent can fix it; an operator must look (the reason says where).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
