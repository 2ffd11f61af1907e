"""The unit-of-work port: one transaction over the repositories a service needs, and who serializes writers.

Each context declares the repositories it needs as a ``Protocol`` in its own ``ports.py`` and a unit-of-work
protocol that exposes them (read-only properties, so an adapter's richer unit of work satisfies them all). The
factory below opens one: ``write(...)`` a serialized write transaction, ``read()`` a consistent snapshot.
Services never learn which database they run on: a ``Lock`` names what must not run twice at once, and the
adapter decides how (SQLite's ``BEGIN IMMEDIATE`` already serializes every writer; PostgreSQL takes an advisory
transaction lock).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from enum import StrEnum
from typing import Protocol, TypeVar

U_co = TypeVar("U_co", covariant=True)


class Lock(StrEnum):
    """Named write locks, held until the transaction ends."""

    PUBLISH = "publish"
    """One publish of a given model at a time (keyed by model name)."""
    METERING = "metering"
    """One metering consumer at a time: the second reads the offset the first one moved."""
    PLANS = "plans"
    """Reserved for plan and price changes."""
    ROUTING = "routing"
    """Route and provider changes (a route's revision is read, then written)."""
    LEASES = "leases"
    """Leases of a limit's allowance (keyed by scope): two replicas leasing at once never both pass the check."""
    LAB = "lab"
    """The lab's own rows (keyed by call or experiment): feedback on one call, an experiment's changes."""


class UnitOfWorkFactory(Protocol[U_co]):
    def write(self, lock: Lock | None = None, key: str = "") -> AbstractContextManager[U_co]:
        """A write transaction; commits when the block ends normally, rolls back on an exception."""
        ...

    def read(self) -> AbstractContextManager[U_co]:
        """A read-only snapshot."""
        ...
