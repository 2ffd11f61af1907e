"""Shared fixtures: a throwaway PostgreSQL server and a freshly migrated store on SQLite or PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from modelmarket.adapters.store import SqlStore, open_store
from modelmarket.demo import build_packages
from pgserver import PostgresServer, PostgresUnavailable, find_pg_tools, running_postgres


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port in a temp dir, stopped at the end of the session."""
    try:
        tools = find_pg_tools()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with running_postgres(tools) as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A freshly migrated store: SQLite in tmp_path, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        sqlite_store = open_store(f"sqlite:///{tmp_path / 'modelmarket.db'}")
        try:
            yield sqlite_store
        finally:
            sqlite_store.dispose()
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    dbname = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    pg_store = open_store(server.url(dbname))
    try:
        yield pg_store
    finally:
        pg_store.dispose()
        with psycopg.connect(server.admin_conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model packages, built once per session. Read-only: copy a package before changing it."""
    out = tmp_path_factory.mktemp("demo")
    packages = build_packages(out, progress=lambda _: None)
    assert [p.name for p in packages] == [
        "digits",
        "sentiment",
        "speech-to-text",
        "smollm2-135m-instruct",
        "all-minilm-l6-v2",
        "credit-approval",
        "credit-approval-biased",
        "voice-sentiment",
    ]
    return out
