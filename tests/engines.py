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
from collections.abc import Mapping
from pathlib import Path

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
