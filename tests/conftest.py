"""Shared fixtures: a throwaway PostgreSQL server and a freshly migrated store on SQLite or PostgreSQL."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from modelmarket.adapters.store import SqlStore, open_store
from modelmarket.demo import build_packages

PG_START_TIMEOUT_S = 60
PG_STOP_TIMEOUT_S = 30
PG_USER = "postgres"


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str

    @property
    def admin_conninfo(self) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname=postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{dbname}"


def _pg_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _version_key(initdb: str) -> tuple[int, str]:
    version = Path(initdb).parent.parent.name
    return (int(version) if version.isdigit() else -1, version)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_pg_user() -> list[str]:
    """initdb refuses to run as root: as root, run the server tools as the postgres user."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        pytest.skip("running as root needs runuser to start PostgreSQL as the postgres user")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root needs a 'postgres' user to start PostgreSQL (make test installs it)")
    return ["runuser", "-u", "postgres", "--"]


def _run(cmd: list[str], timeout_s: float) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _wait_ready(server: PostgresServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(server.admin_conninfo, connect_timeout=2):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port in a temp dir, stopped at the end of the session."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found; `make test` installs Debian postgresql")
    prefix = _as_pg_user()
    # as root the postgres user must reach the dir, so it goes under /tmp rather than a private TMPDIR
    base = Path(tempfile.mkdtemp(prefix="mm-pg-", dir="/tmp" if prefix else None))
    data, sockets, log = base / "data", base / "sock", base / "server.log"
    sockets.mkdir()
    if prefix:
        for path in (base, sockets):
            shutil.chown(path, user="postgres", group="postgres")
    server = PostgresServer(host="127.0.0.1", port=_free_port(), user=PG_USER)
    pg_ctl = [*prefix, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = [*prefix, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER]
        _run([*initdb, "-E", "UTF8", "--no-locale", "--no-sync"], timeout_s=PG_START_TIMEOUT_S)
        options = (
            f"-p {server.port} -k {sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        start = [*pg_ctl, "-l", str(log), "-o", options, "-w", "-t", str(PG_START_TIMEOUT_S), "start"]
        try:
            _run(start, timeout_s=PG_START_TIMEOUT_S + 10)
        except RuntimeError as exc:
            server_log = log.read_text(errors="replace")[-4000:] if log.exists() else "(no server log)"
            raise RuntimeError(f"{exc}\nserver log:\n{server_log}") from None
        _wait_ready(server, PG_START_TIMEOUT_S)
        yield server
    finally:
        _stop_pg(pg_ctl, data)
        shutil.rmtree(base, ignore_errors=True)


def _stop_pg(pg_ctl: list[str], data: Path) -> None:
    if not (data / "postmaster.pid").exists():
        return
    try:
        _run([*pg_ctl, "-m", "fast", "-w", "-t", str(PG_STOP_TIMEOUT_S), "stop"], PG_STOP_TIMEOUT_S + 10)
    except (RuntimeError, subprocess.TimeoutExpired):
        _run([*pg_ctl, "-m", "immediate", "-w", "-t", str(PG_STOP_TIMEOUT_S), "stop"], PG_STOP_TIMEOUT_S + 10)


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
    assert [p.name for p in packages] == ["digits", "sentiment", "speech-to-text"]
    return out
