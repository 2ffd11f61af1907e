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


# -- a persistent server: `modelmarket cluster` keeps its PostgreSQL under HOME/cluster/postgres --

PG_PID_FILE = "postmaster.pid"


@dataclass(frozen=True)
class PersistentPostgres:
    """A PostgreSQL server whose data outlives it: ``base/data`` (initdb once), sockets in ``base/sock``, the
    server's log at ``log``. Unlike ``running_postgres`` it keeps fsync on: a cluster's data is meant to last."""

    tools: PostgresTools
    base: Path
    port: int
    log: Path

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def server(self) -> PostgresServer:
        return PostgresServer(host="127.0.0.1", port=self.port, user=PG_USER)

    @property
    def pg_ctl(self) -> list[str]:
        return [*self.tools.prefix, str(self.tools.bindir / "pg_ctl"), "-D", str(self.data)]

    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def pid(self) -> int | None:
        """The postmaster's pid from its pid file (None when it is not running or left no file)."""
        try:
            first = (self.data / PG_PID_FILE).read_text().split("\n", 1)[0].strip()
        except OSError:
            return None
        return int(first) if first.isdigit() else None

    def start(self) -> PostgresServer:
        """initdb on the first start, then ``pg_ctl start`` and wait until it accepts connections."""
        self._prepare_dirs()
        if not self.initialized():
            initdb = [*self.tools.prefix, str(self.tools.bindir / "initdb"), "-D", str(self.data), "-A", "trust"]
            _run([*initdb, "-U", PG_USER, "-E", "UTF8", "--no-locale"], timeout_s=PG_START_TIMEOUT_S)
        options = f"-p {self.port} -k {self.base / 'sock'} -c listen_addresses=127.0.0.1"
        start = [*self.pg_ctl, "-l", str(self.log), "-o", options, "-w", "-t", str(PG_START_TIMEOUT_S), "start"]
        try:
            _run(start, timeout_s=PG_START_TIMEOUT_S + 10)
        except RuntimeError as exc:
            server_log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else "(no server log)"
            raise RuntimeError(f"{exc}\nserver log ({self.log}):\n{server_log}") from None
        _wait_ready(self.server, PG_START_TIMEOUT_S)
        return self.server

    def stop(self) -> None:
        """``pg_ctl stop`` (fast, then immediate after PG_STOP_TIMEOUT_S); the data stays."""
        _stop_pg(self.pg_ctl, self.data)

    def _prepare_dirs(self) -> None:
        sockets = self.base / "sock"
        sockets.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if not self.tools.prefix:
            return
        # as root the server runs as the postgres user: it owns its folder and log, and must reach them
        for path in (self.base, sockets):
            shutil.chown(path, user=PG_USER, group=PG_USER)
        self.log.touch(exist_ok=True)
        shutil.chown(self.log, user=PG_USER, group=PG_USER)
        probe = subprocess.run([*self.tools.prefix, "test", "-w", str(self.base)], check=False, timeout=30)
        if probe.returncode != 0:
            raise PostgresUnavailable(
                f"the {PG_USER} user cannot reach {self.base} (a folder above it is private to root): put "
                "MODELMARKET_HOME where other users may traverse (e.g. under /srv or /tmp), or run as another user"
            )


def ensure_database(server: PostgresServer, dbname: str) -> bool:
    """Create ``dbname`` unless it exists; True if it was created."""
    with psycopg.connect(server.admin_conninfo, autocommit=True, connect_timeout=5) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if exists:
            return False
        admin.execute(f'CREATE DATABASE "{_identifier(dbname)}"')
    return True


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name {name!r}: letters, digits and _ only")
    return name
