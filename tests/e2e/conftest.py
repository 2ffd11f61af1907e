"""End-to-end fixtures: the real CLI in subprocesses and a real gateway (with its runners) on a free port."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from engines import clean_env

MM = [sys.executable, "-m", "modelmarket.cli.main"]
# An HTTP client's timeout for calls that may start a model's runner: a sandboxed cold start imports its
# framework, which takes several seconds when the parallel suite loads the machine (httpx waits 5 s by default).
COLD_START_S = 60.0
GATE_POLICY = Path(__file__).resolve().parent.parent / "gate_policy.yaml"


@dataclass
class Cli:
    home: Path
    database_url: str | None = None

    @property
    def env(self) -> dict[str, str]:
        env = clean_env()
        env["MODELMARKET_HOME"] = str(self.home)
        # These suites exercise serving: what they publish is approved by the gate's auto review once every other
        # stage passed, with a short benchmark (tests/gate_policy.yaml). The review itself is tested with it manual
        # (tests/e2e/test_publish_gate_cli.py), the benchmark's figures in tests/integration/test_publish_gate.py.
        env["MODELMARKET_GATE_POLICY"] = str(GATE_POLICY)
        env["MODELMARKET_GATE_REVIEW"] = "auto"
        if self.database_url:
            env["MODELMARKET_DATABASE_URL"] = self.database_url
        return env

    def run(self, *args: str, check: bool = True, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*MM, *args], env=self.env, capture_output=True, text=True, timeout=timeout_s)
        if check and proc.returncode != 0:
            raise AssertionError(f"modelmarket {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def new_consumer(self, name: str) -> str:
        """Create a consumer account and return a fresh API key for it."""
        self.run("accounts", "create", name, "--role", "consumer")
        return str(self.json("keys", "create", name)["key"])


@dataclass
class EnvCli(Cli):
    """A CLI (and the gateway it starts) with a few more environment variables than the test process has."""

    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra_env}


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[str]
    cli: Cli

    @property
    def hostport(self) -> str:
        return self.url.removeprefix("http://")


@pytest.fixture(scope="session")
def demo_home(shared_builds: Any) -> Path:
    """A MODELMARKET_HOME with the demo catalogue built and published through the CLI, once per test run (every
    xdist worker copies it). Read-only: `demo_cli` is a copy of it."""
    return shared_builds.get("demo-home", lambda home: Cli(home).run("demo", "--build-only", timeout_s=300))


@pytest.fixture(scope="session")
def digits_home(shared_builds: Any, demo_home: Path) -> Path:
    """A MODELMARKET_HOME with only `digits` published (its package from the demo build), once per test run.
    Read-only: `digits_cli` is a copy of it."""

    def build(home: Path) -> None:
        cli = Cli(home)
        cli.run("accounts", "create", "demo-provider", "--role", "provider")
        cli.run("publish", str(demo_home / "demo" / "digits"))

    return shared_builds.get("digits-home", build)


@pytest.fixture()
def digits_cli(digits_home: Path, shared_builds: Any, tmp_path: Path) -> Cli:
    """A fresh MODELMARKET_HOME with only `digits` published (its package from the demo build)."""
    return Cli(shared_builds.copy_home(digits_home, tmp_path / "home"))


@pytest.fixture(scope="session")
def demo_cli(demo_home: Path, shared_builds: Any, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """A MODELMARKET_HOME with the demo catalogue built and published through the CLI."""
    return Cli(shared_builds.copy_home(demo_home, tmp_path_factory.mktemp("mmhome")))


def start_gateway(
    cli: Cli,
    timeout_s: float = 90,
    models: tuple[str, ...] = ("digits", "sentiment", "speech-to-text"),
    extra_args: tuple[str, ...] = (),
) -> Gateway:
    log_path = cli.home / "gateway.log"
    with open(log_path, "a") as log_file:
        proc = subprocess.Popen(
            [*MM, "serve", "--port", "0", *extra_args], env=cli.env, stdout=subprocess.PIPE, stderr=log_file, text=True
        )
    try:
        url = _wait_until_serving(proc, log_path, models, timeout_s)
    except BaseException:  # a gateway that never got ready must not outlive the test
        proc.kill()
        proc.wait(timeout=10)
        raise
    return Gateway(url=url, proc=proc, cli=cli)


def _wait_until_serving(proc: subprocess.Popen[str], log_path: Path, models: tuple[str, ...], timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    url = None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            err = log_path.read_text()
            raise AssertionError(f"gateway exited before it was ready:\n{err}")
        match = re.match(r"URL: (http://\S+)", line)
        if match:
            url = match.group(1)
            break
    assert url, "gateway printed no URL line"
    # Runners start in the background; wait until every demo model answers ready.
    for model in models:
        while time.monotonic() < deadline:
            if httpx.get(f"{url}/v2/models/{model}/ready").status_code == 200:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"model {model} not ready within {timeout_s}s")
    return url


def stop_gateway(gateway: Gateway) -> None:
    gateway.proc.send_signal(signal.SIGINT)
    try:
        gateway.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        gateway.proc.kill()
        gateway.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def gateway(demo_cli: Cli) -> Iterator[Gateway]:
    gw = start_gateway(demo_cli)
    yield gw
    stop_gateway(gw)


MONTH_END_MARGIN_S = 180
"""A test that bills calls and then invoices "this month" starts no closer than this to a month's end."""


def billing_period_for_test(margin_s: float = MONTH_END_MARGIN_S) -> str:
    """The month (UTC, ``YYYY-MM``) all of a test's calls fall in: taken at the test's start, after waiting out a
    month boundary that is less than ``margin_s`` away, so calls and invoice never straddle two periods."""
    now = datetime.now(UTC)
    first_of_next = (now.replace(day=1) + timedelta(days=32)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    wait_s = (first_of_next - now).total_seconds()
    if wait_s < margin_s:
        time.sleep(wait_s + 1)
    return datetime.now(UTC).strftime("%Y-%m")
