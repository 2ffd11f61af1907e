"""SQL store: SQLite (WAL) by default, PostgreSQL by URL. Schema changes go through Alembic migrations."""

from modelmarket.adapters.store.engine import open_store
from modelmarket.adapters.store.uow import SqlStore, SqlUnitOfWork

__all__ = ["SqlStore", "SqlUnitOfWork", "open_store"]
