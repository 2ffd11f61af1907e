"""A home for `modelmarket cluster` in the tests: under /tmp and traversable by other users (as root, PostgreSQL
runs as the postgres user and must reach its data folder; pytest's temp folders are private to root), the CLI
run with the cluster commands, and a last `down` however the test ended."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import Cli

import engines
from modelmarket.cluster.engine import EngineUnavailable
from modelmarket.cluster.envoy import envoy_binary
from modelmarket.cluster.postgres import PostgresUnavailable, find_pg_tools


def require_engines() -> None:
    """Skip (saying which) when an engine the cluster runs is not installed here; and on the second, real-engines
    pass of the suites (`MM_TEST_ENGINES=real`): a cluster starts its own PostgreSQL, NATS and SeaweedFS whatever
    the pass, so the first pass already ran these tests on the real engines."""
    if engines.REAL:
        pytest.skip("the cluster runs its own real engines: already run in the embedded pass, identical here")
    try:
        find_pg_tools()
        envoy_binary()
        from modelmarket.cluster.nats import nats_binary
        from modelmarket.cluster.seaweed import weed_binary

        nats_binary()
        weed_binary()
    except (EngineUnavailable, PostgresUnavailable) as exc:
        pytest.skip(str(exc))


@contextmanager
def cluster_cli() -> Iterator[Cli]:
    base = Path(tempfile.mkdtemp(prefix="mm-cluster-", dir="/tmp"))
    base.chmod(0o711)
    cli = Cli(base / "home")
    try:
        yield cli
    finally:
        cli.run("cluster", "down", check=False, timeout_s=300)
        shutil.rmtree(base, ignore_errors=True)


def cluster_json(cli: Cli, *args: str) -> Any:
    proc = cli.run(*args, "--json", check=False)
    return json.loads(proc.stdout)


def processes_of(home: Path) -> list[str]:
    """Every process on the machine that belongs to this home: it runs with MODELMARKET_HOME=home, or its
    command line names a path inside the home (the engines' data folders)."""
    marker = f"MODELMARKET_HOME={home}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0") or str(home).encode() in cmdline:
            found.append(entry + ": " + cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def run_up(cli: Cli, *args: str) -> subprocess.CompletedProcess[str]:
    return cli.run("cluster", "up", *args, timeout_s=400)
