"""SQL store: SQLite (WAL) by default, PostgreSQL by URL. Schema changes go through Alembic migrations."""

from modelmarket.adapters.store.engine import Store, open_store

__all__ = ["Store", "open_store"]
