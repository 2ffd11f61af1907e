"""Which engines the integration and e2e suites run on.

By default the embedded ones: SQLite, the embedded event log, blobs under the home. With `MM_TEST_ENGINES=real`
(`make test` runs those suites a second time so), every platform a test makes, in process or in a subprocess,
runs on real servers started once per test session (per xdist worker) on loopback: PostgreSQL (a database per
home, `{home_id}`), NATS JetStream (a namespace per home, two partitions) and SeaweedFS's S3 (one bucket; blobs
are content-addressed, so homes share it). The session fixture `engines` (tests/conftest.py) sets the
`MODELMARKET_` variables below in the worker's environment; subprocesses inherit them through `clean_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REAL = os.environ.get("MM_TEST_ENGINES", "") == "real"
"""Whether this run is on the real engines."""

ENGINE_NAMES = frozenset(
    {
        "MODELMARKET_DATABASE_URL",
        "MODELMARKET_BUS_URL",
        "MODELMARKET_BUS_NAMESPACE",
        "MODELMARKET_BUS_PARTITIONS",
        "MODELMARKET_BLOB_URL",
        "MODELMARKET_S3_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    }
)
"""The variables that choose the engines: kept when a test strips the developer's MODELMARKET_ settings."""


def clean_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) without MODELMARKET_ settings, except the engines' (on the real
    engines, a subprocess must use the same servers as the test)."""
    source = os.environ if environ is None else environ
    return {k: v for k, v in source.items() if not k.startswith("MODELMARKET_") or (REAL and k in ENGINE_NAMES)}


def clone_home_store(src_home: Path, dest_home: Path) -> None:
    """On the real engines, give the copy of a home a copy of its PostgreSQL database (`CREATE DATABASE ...
    TEMPLATE`; nothing may be connected to the source). The embedded store is a file: copied with the folder."""
    if not REAL:
        return
    import psycopg
    from psycopg import sql
    from sqlalchemy import make_url

    from modelmarket.settings import Settings

    src, dest = Settings(home=src_home), Settings(home=dest_home)
    assert src.database_url and dest.database_url, "MODELMARKET_DATABASE_URL is not set on the real engines"
    url = make_url(src.database_url)
    admin = f"host={url.host} port={url.port} user={url.username} dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(make_url(dest.database_url).database or ""), sql.Identifier(url.database or "")
            )
        )


def developer_setting(name: str) -> bool:
    """A MODELMARKET_ variable of the developer's that a test removes; on the real engines, not the engines'."""
    return name.startswith("MODELMARKET_") and not (REAL and name in ENGINE_NAMES)


def append_to_log(platform: Any, events: Sequence[tuple[str, bytes]]) -> None:
    """Append (log id, encoded usage event) pairs to ``platform``'s own event log, as the gateway does: the embedded
    log, or JetStream on the real engines, each event to its account's partition."""
    from modelmarket.adapters.bus.partitioned import account_of

    metering = platform.metering
    metering.append([(account_of(payload) if metering.partitions > 1 else "", i, payload) for i, payload in events])


def store_rows(home: Path, query: str, **params: Any) -> list[tuple[Any, ...]]:
    """The rows of ``query`` (SQL with ``:name`` parameters) on the home's store: its SQLite file, or on the real
    engines its PostgreSQL database."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from modelmarket.settings import Settings

    engine = create_engine(Settings(home=home).resolved_database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query), params)]
    finally:
        engine.dispose()


def store_execute(home: Path, statement: str, **params: Any) -> int:
    """Run ``statement`` on the home's store and commit (a test tampering with the store behind the platform);
    returns how many rows it changed."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    from modelmarket.settings import Settings

    engine = create_engine(Settings(home=home).resolved_database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            return int(conn.execute(text(statement), params).rowcount)
    finally:
        engine.dispose()


def store_dump(home: Path) -> str:
    """Every row of every table of the home's store, as text (what someone with the database would see)."""
    from sqlalchemy import MetaData, create_engine
    from sqlalchemy.pool import NullPool

    from modelmarket.settings import Settings

    engine = create_engine(Settings(home=home).resolved_database_url, poolclass=NullPool)
    try:
        meta = MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return "\n".join(repr(tuple(row)) for table in meta.sorted_tables for row in conn.execute(table.select()))
    finally:
        engine.dispose()


def log_payloads(home: Path) -> list[bytes]:
    """Every record's payload in the home's event log, all partitions (the embedded log or JetStream)."""
    from modelmarket.bootstrap import bootstrap
    from modelmarket.settings import Settings

    platform = bootstrap(Settings(home=home))
    try:
        payloads: list[bytes] = []
        for partition in range(platform.metering.partitions):
            log = platform.metering.log_config.open_log(partition, consumer=None)
            try:
                offset = 0
                while batch := log.read(offset, 1000):
                    payloads += [r.payload for r in batch]
                    offset = batch[-1].offset
            finally:
                log.close()
        return payloads
    finally:
        platform.close()


def blob_files(home: Path) -> list[str]:
    """The names of the artifact files this home holds: its blob store, or on S3 its local cache by digest."""
    return sorted(p.name for folder in ("blobs", "cache/blobs") for p in (home / folder).rglob("*") if p.is_file())
