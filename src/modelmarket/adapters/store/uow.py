"""The SQL unit of work: one transaction, the repositories of every context on it, and the write locks.

SQLite: every write transaction starts with ``BEGIN IMMEDIATE``, which already serializes writers, so named
locks cost nothing more. PostgreSQL: a named lock is a transaction-scoped advisory lock, released at commit or
rollback; keyed locks (a model's publishes) use the two-integer form so keys of different locks never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text

from modelmarket.adapters.store.repos.accounts import SqlAccountRepository
from modelmarket.adapters.store.repos.audit import SqlAuditRepository
from modelmarket.adapters.store.repos.economy import SqlLedgerRepository, SqlPlanRepository
from modelmarket.adapters.store.repos.gate import SqlGateRepository
from modelmarket.adapters.store.repos.lab import SqlLabRepository
from modelmarket.adapters.store.repos.leases import SqlLeaseRepository
from modelmarket.adapters.store.repos.privacy import SqlPrivacyRepository
from modelmarket.adapters.store.repos.proofs import SqlProofRepository
from modelmarket.adapters.store.repos.registry import SqlRegistryRepository
from modelmarket.adapters.store.repos.routing import SqlRoutingRepository
from modelmarket.adapters.store.repos.sessions import SqlSessionRepository
from modelmarket.adapters.store.repos.usage import SqlUsageRepository
from modelmarket.audit.ports import CheckpointSigner
from modelmarket.core.uow import Lock

ADVISORY_LOCK_IDS: dict[Lock, int] = {
    Lock.PUBLISH: 7042003,
    Lock.METERING: 7042002,
    Lock.PLANS: 7042004,
    Lock.ROUTING: 7042005,
    Lock.LEASES: 7042006,
    Lock.LAB: 7042007,
}
"""PostgreSQL advisory lock ids (the first key of the two-key form for keyed locks). Never reuse a number."""
MIGRATION_LOCK_ID = 7042001
READ_SNAPSHOT = "REPEATABLE READ"


class SqlUnitOfWork:
    def __init__(self, conn: Connection, signer: CheckpointSigner | None = None) -> None:
        self.conn = conn
        self._accounts = SqlAccountRepository(conn)
        self._registry = SqlRegistryRepository(conn)
        self._usage = SqlUsageRepository(conn)
        self._proofs = SqlProofRepository(conn)
        self._audit = SqlAuditRepository(conn, self._proofs, signer)  # an audit append signs a checkpoint
        self._plans = SqlPlanRepository(conn)
        self._ledger = SqlLedgerRepository(conn)
        self._routing = SqlRoutingRepository(conn)
        self._gate = SqlGateRepository(conn)

    @property
    def accounts(self) -> SqlAccountRepository:
        return self._accounts

    @property
    def registry(self) -> SqlRegistryRepository:
        return self._registry

    @property
    def usage(self) -> SqlUsageRepository:
        return self._usage

    @property
    def audit(self) -> SqlAuditRepository:
        return self._audit

    @property
    def plans(self) -> SqlPlanRepository:
        return self._plans

    @property
    def ledger(self) -> SqlLedgerRepository:
        return self._ledger

    @property
    def routing(self) -> SqlRoutingRepository:
        return self._routing

    @property
    def proofs(self) -> SqlProofRepository:
        return self._proofs

    @property
    def gate(self) -> SqlGateRepository:
        return self._gate

    @property
    def privacy(self) -> SqlPrivacyRepository:
        return SqlPrivacyRepository(self.conn)

    @property
    def sessions(self) -> SqlSessionRepository:
        return SqlSessionRepository(self.conn)

    @property
    def leases(self) -> SqlLeaseRepository:
        return SqlLeaseRepository(self.conn)

    @property
    def lab(self) -> SqlLabRepository:
        return SqlLabRepository(self.conn)

    def lock(self, lock: Lock, key: str = "", *, shared: bool = False) -> None:
        """Also take ``lock`` until this transaction ends; ``shared`` (unkeyed only): with other shared holders,
        but not with ``write(lock)``'s exclusive one. Metering partitions each hold ``Lock.METERING`` shared plus
        their own key, so they run in parallel while every ``write(Lock.METERING)`` still excludes them all.
        SQLite's writer already excludes every other writer: nothing to take."""
        if self.conn.dialect.name != "postgresql":
            return
        if shared and key:
            raise ValueError("a shared lock is unkeyed")
        lock_id = ADVISORY_LOCK_IDS[lock]
        if shared:
            self.conn.execute(text("SELECT pg_advisory_xact_lock_shared(:a)"), {"a": lock_id})
        elif key:
            self.conn.execute(text("SELECT pg_advisory_xact_lock(:a, hashtext(:k))"), {"a": lock_id, "k": key})
        else:
            self.conn.execute(text("SELECT pg_advisory_xact_lock(:a)"), {"a": lock_id})


class SqlStore:
    """The store: opens units of work on SQLite or PostgreSQL (``UnitOfWorkFactory[SqlUnitOfWork]``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.signer: CheckpointSigner | None = None
        """Signs the audit tree's checkpoints as records are appended (set by ``bootstrap``; None: unsigned)."""
        self.on_audited_commit: Callable[[], None] | None = None
        """Called after a write transaction that appended an audit record has committed (set by ``bootstrap``: the
        change feed, which tells the gateway replicas to look at the audit chain). Must not raise."""

    @property
    def url(self) -> str:
        """The URL this store uses, password included (for a child process that must open the same store)."""
        return self.engine.url.render_as_string(hide_password=False)

    @contextmanager
    def write(self, lock: Lock | None = None, key: str = "") -> Iterator[SqlUnitOfWork]:
        with self.engine.connect().execution_options(mm_write=True) as conn, conn.begin():
            if lock is not None and conn.dialect.name == "postgresql":
                lock_id = ADVISORY_LOCK_IDS[lock]
                if key:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:a, hashtext(:k))"), {"a": lock_id, "k": key})
                else:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:a)"), {"a": lock_id})
            uow = SqlUnitOfWork(conn, self.signer)
            yield uow
        if uow.audit.appended and self.on_audited_commit is not None:
            self.on_audited_commit()

    @contextmanager
    def read(self) -> Iterator[SqlUnitOfWork]:
        """A consistent snapshot: SQLite's deferred transaction is one; PostgreSQL needs REPEATABLE READ (READ
        COMMITTED would take a new snapshot per statement, so a catalogue load could see a version whose model
        it did not see)."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level=READ_SNAPSHOT)
            with conn.begin():
                yield SqlUnitOfWork(conn)

    def dispose(self) -> None:
        self.engine.dispose()
