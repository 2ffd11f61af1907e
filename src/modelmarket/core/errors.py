"""Domain errors. They carry no transport codes: each edge maps them (see gateway/errors.py)."""

from __future__ import annotations


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
