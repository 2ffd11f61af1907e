"""Alembic environment: migrations run on the connection the caller passes in ``config.attributes``."""

from alembic import context

from modelmarket.adapters.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic path is supported
    raise RuntimeError("run migrations through modelmarket.adapters.store.engine.migrate()")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
