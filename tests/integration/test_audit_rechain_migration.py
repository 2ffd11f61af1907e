"""Migration 0002 on SQLite and PostgreSQL: a legacy-hashed audit chain is checked, then re-sealed with RFC 8785.

The legacy hashes here are computed with ``json.dumps`` in the test itself, as the code before the switch did,
so the test does not trust ``legacy_record_hash`` to describe the old scheme.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import rfc8785
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy import table as sa_table
from sqlalchemy.sql import column

from modelmarket.adapters.store.engine import MIGRATIONS_DIR, create_store_engine, migrate
from modelmarket.audit.records import GENESIS_HASH, AuditRecord, check_link
from modelmarket.core.errors import Conflict

RECHAIN_REVISION = "m0002"
BEFORE_RECHAIN = "m0001"
TRICKY_SEQ = 3
"""The record whose payload keys sort differently by code point (legacy) and by UTF-16 code unit (RFC 8785)."""
EMOJI_PATH, DALET_PATH = "weights/\U0001f600.onnx", "weights/\ufb33.onnx"

AUDIT_COLUMNS = ("seq", "occurred_at", "actor", "action", "subject", "payload_json", "prev_hash", "hash")
audit_log = sa_table("audit_log", *(column(name) for name in AUDIT_COLUMNS))


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def _run(engine: Engine, action: str, target: str) -> None:
    """Run alembic on one connection inside one transaction, as ``engine.migrate`` does."""
    cfg = _config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, target)


def _batch_rows() -> int:
    script = ScriptDirectory.from_config(_config()).get_revision(RECHAIN_REVISION)
    assert script is not None
    return int(script.module.RESEAL_BATCH_ROWS)


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _postgres_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    server = request.getfixturevalue("pg_server")
    dbname = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    engine = create_store_engine(server.url(dbname))
    try:
        yield engine
    finally:
        engine.dispose()
        with psycopg.connect(server.admin_conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine_before_rechain(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database migrated to revision 0001, whose audit chain is still hashed with the legacy scheme."""
    if request.param == "sqlite":
        engine = create_store_engine(f"sqlite:///{tmp_path / 'modelmarket.db'}")
        try:
            _run(engine, "upgrade", BEFORE_RECHAIN)
            yield engine
        finally:
            engine.dispose()
        return
    with _postgres_engine(request) as pg_engine:
        _run(pg_engine, "upgrade", BEFORE_RECHAIN)
        yield pg_engine


def _legacy_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _document(row: dict[str, Any], payload: object) -> dict[str, Any]:
    fields = {name: row[name] for name in AUDIT_COLUMNS if name not in ("payload_json", "hash")}
    return {**fields, "payload": payload}


def _payload(seq: int) -> dict[str, Any]:
    payload: dict[str, Any] = {"index": seq, "price_per_iu": "0.0125", "note": "grün ✓\n", "from": None}
    if seq == TRICKY_SEQ:
        payload["artifacts"] = {EMOJI_PATH: "1" * 64, DALET_PATH: "2" * 64}
    return payload


def _legacy_chain(n: int, payload_of: Any = _payload) -> list[dict[str, Any]]:
    rows, prev_hash = [], GENESIS_HASH
    for seq in range(1, n + 1):
        row: dict[str, Any] = {
            "seq": seq,
            "occurred_at": f"2026-01-31T00:00:00.{seq:06d}+00:00",
            "actor": "operator:alice",
            "action": "model.published",
            "subject": f"digits@1.{seq}.0",
            "prev_hash": prev_hash,
        }
        payload = payload_of(seq)
        row["payload_json"] = _legacy_json(payload)
        row["hash"] = hashlib.sha256(_legacy_json(_document(row, payload)).encode("utf-8")).hexdigest()
        rows.append(row)
        prev_hash = row["hash"]
    return rows


def _insert(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with engine.begin() as conn:
        conn.execute(insert(audit_log), rows)


def _stored(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(select(audit_log).order_by(audit_log.c.seq))]


def test_upgrade_reseals_a_legacy_chain_with_rfc8785(engine_before_rechain: Engine) -> None:
    n = _batch_rows() + 5  # the check and the re-seal both cross a batch boundary
    legacy = _legacy_chain(n)
    _insert(engine_before_rechain, legacy)

    migrate(engine_before_rechain)

    stored = _stored(engine_before_rechain)
    assert [row["seq"] for row in stored] == list(range(1, n + 1))
    prev_hash = GENESIS_HASH
    for row in stored:
        payload = json.loads(row["payload_json"])
        assert payload == _payload(row["seq"])
        assert row["payload_json"] == rfc8785.dumps(payload).decode("utf-8")
        assert row["prev_hash"] == prev_hash
        assert row["hash"] == hashlib.sha256(rfc8785.dumps(_document(row, payload))).hexdigest()
        record = AuditRecord(**{**{k: v for k, v in row.items() if k != "payload_json"}, "payload": payload})
        assert check_link(record, row["seq"], prev_hash) is None
        prev_hash = row["hash"]
    # Before the record whose keys sort differently the two serializations are the same bytes, so only it and
    # the records chained after it get new hashes; its payload_json is rewritten in RFC 8785 key order.
    changed = [old["seq"] for old, new in zip(legacy, stored, strict=True) if old["hash"] != new["hash"]]
    assert changed == list(range(TRICKY_SEQ, n + 1))
    rewritten = [
        old["seq"] for old, new in zip(legacy, stored, strict=True) if old["payload_json"] != new["payload_json"]
    ]
    assert rewritten == [TRICKY_SEQ]
    assert stored[TRICKY_SEQ - 1]["payload_json"].index(EMOJI_PATH) < stored[TRICKY_SEQ - 1]["payload_json"].index(
        DALET_PATH
    )
    assert _revision(engine_before_rechain) == ScriptDirectory.from_config(_config()).get_current_head()


def _edit_payload(engine: Engine, seq: int) -> None:
    with engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.seq == seq).values(payload_json='{"index":-1}'))


def _drop(engine: Engine, seq: int) -> None:
    with engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.seq == seq))


@pytest.mark.parametrize(("tamper", "what"), [(_edit_payload, "was edited"), (_drop, "missing")])
def test_upgrade_refuses_a_broken_legacy_chain_and_changes_nothing(
    engine_before_rechain: Engine, tamper: Any, what: str
) -> None:
    broken_seq = _batch_rows() + 2  # in the second batch: the whole chain is checked before anything is written
    _insert(engine_before_rechain, _legacy_chain(broken_seq + 3))
    tamper(engine_before_rechain, broken_seq)
    before = _stored(engine_before_rechain)

    with pytest.raises(Conflict, match=rf"broken at seq {broken_seq}\b.*{what}") as failure:
        migrate(engine_before_rechain)

    assert "would hide the tampering" in failure.value.message
    assert _stored(engine_before_rechain) == before
    assert _revision(engine_before_rechain) == BEFORE_RECHAIN


def test_upgrade_refuses_a_legacy_float_and_changes_nothing(engine_before_rechain: Engine) -> None:
    """The legacy scheme let floats in; RFC 8785 payloads refuse them, so such a chain needs an operator."""
    _insert(engine_before_rechain, _legacy_chain(4, lambda seq: {"ratio": 0.5} if seq == 2 else _payload(seq)))
    before = _stored(engine_before_rechain)

    with pytest.raises(Conflict, match=r"seq 2 .*cannot be sealed with the RFC 8785 hash.*no floats"):
        migrate(engine_before_rechain)

    assert _stored(engine_before_rechain) == before
    assert _revision(engine_before_rechain) == BEFORE_RECHAIN


def test_upgrade_of_an_empty_chain_and_downgrade_restore_the_legacy_hashes(engine_before_rechain: Engine) -> None:
    migrate(engine_before_rechain)  # nothing to re-seal yet
    legacy = _legacy_chain(6)
    _run(engine_before_rechain, "downgrade", BEFORE_RECHAIN)
    _insert(engine_before_rechain, legacy)
    migrate(engine_before_rechain)
    assert _stored(engine_before_rechain) != legacy

    _run(engine_before_rechain, "downgrade", BEFORE_RECHAIN)

    assert _stored(engine_before_rechain) == legacy
