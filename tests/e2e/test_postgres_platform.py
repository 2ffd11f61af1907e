"""The whole platform on PostgreSQL by URL: publish, serve, call, meter, invoice, audit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql
from tests.conftest import PostgresServer
from tests.e2e.conftest import COLD_START_S, Cli, billing_period_for_test, start_gateway, stop_gateway

from modelmarket.core.money import round_minor

pytestmark = pytest.mark.postgres


@pytest.fixture()
def pg_cli(pg_server: PostgresServer, tmp_path: Path) -> Iterator[Cli]:
    dbname = f"e2e_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    yield Cli(tmp_path / "home", database_url=pg_server.url(dbname))
    with psycopg.connect(pg_server.admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


def test_platform_runs_on_postgres(pg_cli: Cli, pg_server: PostgresServer) -> None:
    period = billing_period_for_test()  # every call below falls in this month
    pg_cli.run("demo", "--build-only", timeout_s=300)
    assert not (pg_cli.home / "modelmarket.db").exists()  # the store is PostgreSQL, not the embedded SQLite
    key = pg_cli.new_consumer("pg-user")
    gateway = start_gateway(pg_cli)
    try:
        body = (pg_cli.home / "demo" / "examples" / "sentiment.json").read_bytes()
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=gateway.url, headers=auth, timeout=COLD_START_S) as http:
            for _ in range(3):
                r = http.post("/v2/models/sentiment/infer", content=body)
                assert r.status_code == 200, r.text
            usage = http.get("/api/usage").json()
    finally:
        stop_gateway(gateway)
    assert usage["total_events"] == 3
    assert usage["models"][0]["unit_kind"] == "tokens_1k"
    with psycopg.connect(pg_cli.database_url.replace("postgresql+psycopg", "postgresql")) as conn:  # type: ignore[union-attr]
        rows = conn.execute("SELECT COUNT(*) FROM usage_events").fetchone()
        models = conn.execute("SELECT name FROM models ORDER BY name").fetchall()
    assert rows == (3,)
    assert [m[0] for m in models] == [
        "all-minilm-l6-v2",
        "credit-approval",  # credit-approval-biased was blocked by the publish gate: no model row
        "digits",
        "digits-mlp",
        "sentiment",
        "smollm2-135m-instruct",
        "speech-to-text",
        "voice-sentiment",
    ]
    [invoice] = pg_cli.json("invoice", "pg-user", "--period", period)["invoices"]
    [line] = invoice["lines"]  # rated at the list price: the exact amount is the usage's, rounded once
    assert invoice["events"] == line["events"] == 3 and line["model"] == "sentiment"
    assert Fraction(line["amount_exact"]) == Fraction(usage["total_amount"])
    assert Decimal(invoice["total"]) == Decimal(line["amount"]) == round_minor(Fraction(usage["total_amount"]), "USD")
    assert pg_cli.run("audit", "verify").stdout.startswith("OK")
