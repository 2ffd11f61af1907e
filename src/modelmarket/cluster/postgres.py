"""A throwaway PostgreSQL server: initdb + pg_ctl on a free loopback port in a temp dir, stopped afterwards.

Used by the ``pg_server`` fixture (tests/conftest.py), the benchmarks and ``modelmarket cluster``. As root, initdb
refuses to run, so the server tools run as the ``postgres`` user (through ``runuser``).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from modelmarket.cluster.engine import free_port

PG_START_TIMEOUT_S = 60
PG_STOP_TIMEOUT_S = 30
PG_USER = "postgres"


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server tools (or, as root, runuser and a postgres user) are missing: the caller skips."""


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


@dataclass(frozen=True)
class PostgresTools:
    bindir: Path
    prefix: list[str]
    """What runs each server tool: empty, or ``runuser -u postgres --`` as root."""


def find_pg_tools() -> PostgresTools:
    """The server binaries and how to run them; raises ``PostgresUnavailable`` saying what is missing."""
    bindir = _pg_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL binaries (initdb, pg_ctl) not found; `make test` installs Debian postgresql"
        )
    return PostgresTools(bindir, _as_pg_user())


def _pg_bindir() -> Path | None:
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _version_key(initdb: str) -> tuple[int, str]:
    version = Path(initdb).parent.parent.name
    return (int(version) if version.isdigit() else -1, version)


def _as_pg_user() -> list[str]:
    """initdb refuses to run as root: as root, run the server tools as the postgres user."""
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root needs runuser to start PostgreSQL as the postgres user")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root needs a 'postgres' user to start PostgreSQL (make test installs it)"
        ) from None
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


@contextmanager
def running_postgres(tools: PostgresTools) -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port in a temp dir (fsync off), stopped and removed on exit."""
    prefix = tools.prefix
    # as root the postgres user must reach the dir, so it goes under /tmp rather than a private TMPDIR
    base = Path(tempfile.mkdtemp(prefix="mm-pg-", dir="/tmp" if prefix else None))
    data, sockets, log = base / "data", base / "sock", base / "server.log"
    sockets.mkdir()
    if prefix:
        for path in (base, sockets):
            shutil.chown(path, user="postgres", group="postgres")
    server = PostgresServer(host="127.0.0.1", port=free_port(), user=PG_USER)
    pg_ctl = [*prefix, str(tools.bindir / "pg_ctl"), "-D", str(data)]
    try:
        initdb = [*prefix, str(tools.bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER]
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
