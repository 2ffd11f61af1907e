"""Engine setup (SQLite WAL / PostgreSQL) and migrations; ``open_store`` returns the migrated ``SqlStore``."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from modelmarket.adapters.store.uow import MIGRATION_LOCK_ID, SqlStore
from modelmarket.core.errors import InvalidInput

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself, so writers can take the lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("mm_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_store_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine, lock_dir: Path | None = None) -> None:
    """Bring the schema to the newest migration. Safe to call from several processes at once."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _migration_lock(engine, lock_dir), engine.begin() as conn:
        cfg.attributes["connection"] = conn
        _check_known_revision(conn, ScriptDirectory.from_config(cfg))
        try:
            command.upgrade(cfg, "head")
        except CommandError as exc:
            raise InvalidInput(f"cannot migrate the store: {exc}") from None


def _check_known_revision(conn: Connection, scripts: ScriptDirectory) -> None:
    """A store written by a pre-release schema names a revision that no longer exists: say so plainly."""
    if not conn.dialect.has_table(conn, "alembic_version"):
        return
    current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    known = {s.revision for s in scripts.walk_revisions()}
    if current is not None and current not in known:
        raise InvalidInput(
            f"the store at {conn.engine.url.render_as_string(hide_password=True)} has schema revision "
            f"{current!r}, which this version does not know (a pre-release schema): start from a new "
            "MODELMARKET_HOME or database"
        )


@contextmanager
def _migration_lock(engine: Engine, lock_dir: Path | None) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:lock_id)"), {"lock_id": MIGRATION_LOCK_ID})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:lock_id)"), {"lock_id": MIGRATION_LOCK_ID})
                conn.commit()
        return
    if lock_dir is None:
        yield
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / "migrate.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def open_store(url: str, lock_dir: Path | None = None, create: bool = False) -> SqlStore:
    """Open (and migrate) the store at ``url``; with ``create``, a PostgreSQL database that does not exist yet is
    created first (`MODELMARKET_DATABASE_URL` with `{home_id}`: a database per home on one server)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif create:
        _create_database(url)
    engine = create_store_engine(url)
    migrate(engine, lock_dir)
    return SqlStore(engine)


def _create_database(url: str) -> None:
    """CREATE DATABASE for ``url``'s database unless it exists, through the server's `postgres` database (two
    processes creating it at once: the loser finds it made)."""
    parsed = make_url(url)
    name = parsed.database or ""
    if not name.replace("_", "").isalnum():
        raise InvalidInput(f"MODELMARKET_DATABASE_URL: cannot create database {name!r} (letters, digits and _ only)")
    exists = text("SELECT 1 FROM pg_database WHERE datname = :n")
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            if conn.execute(exists, {"n": name}).first():
                return
            try:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            except DBAPIError:
                if not conn.execute(exists, {"n": name}).first():
                    raise
    finally:
        admin.dispose()
