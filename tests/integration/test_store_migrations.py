"""A store written by a pre-release schema is refused by name, never mistaken for the current one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from modelmarket.adapters.store import open_store
from modelmarket.core.errors import InvalidInput


@pytest.mark.parametrize("old_revision", ["0001", "0002", "0003"])
def test_a_pre_release_revision_is_refused_with_a_clear_message(tmp_path: Path, old_revision: str) -> None:
    db = tmp_path / "modelmarket.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.execute("INSERT INTO alembic_version VALUES (?)", (old_revision,))
    with pytest.raises(InvalidInput, match=f"revision '{old_revision}'.*pre-release"):
        open_store(f"sqlite:///{db}")


def test_a_new_store_is_at_the_head_revision(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'modelmarket.db'}")
    with store.read() as uow:
        head = uow.conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    store.dispose()
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from modelmarket.adapters.store.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    expected = ScriptDirectory.from_config(cfg).get_current_head()
    assert expected is not None and expected >= "m0005"
    assert head == expected


def test_the_migrations_create_exactly_the_schema_module(tmp_path: Path) -> None:
    """What the migrations build and what ``schema.py`` declares never drift apart (tables, columns, indexes)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from modelmarket.adapters.store.schema import metadata

    store = open_store(f"sqlite:///{tmp_path / 'modelmarket.db'}")
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        store.dispose()
    assert [
        d for d in diff if not (isinstance(d, tuple) and d[0] == "remove_table" and d[1].name == "alembic_version")
    ] == []
