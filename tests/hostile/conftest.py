"""One real platform for the whole hostile session: the gateway (a subprocess on a free port), its runners and its
metering child, serving the demo catalogue; plus the hostile packages, published once in a batch.

The gateway is started the way `tests/e2e` starts it (`start_gateway`), with small header and body timeouts, a 1 s
key cache and a 64 KiB bound on kept idempotent answers, so that those behaviours can be observed in seconds.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import MM, Cli, Gateway, stop_gateway
from tests.hostile.packages import (
    BASELINE_VERSION,
    CASES,
    MODEL,
    Where,
    case_version,
    prepare_copy,
    reachable_digests,
)

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.settings import Settings

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0
CACHE_REFRESH_S = 1.0
MAX_KEPT_ANSWER_BYTES = 64 * 1024
GATEWAY_ENV = {
    "MODELMARKET_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "MODELMARKET_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
    "MODELMARKET_CACHE_REFRESH_S": str(CACHE_REFRESH_S),
    "MODELMARKET_IDEMPOTENCY_MAX_ANSWER_BYTES": str(MAX_KEPT_ANSWER_BYTES),
}
DEMO_MODELS = ("digits", "sentiment", "speech-to-text")
PUBLISH_TIMEOUT_S = 90
PUBLISH_WORKERS = 3
GATEWAY_START_TIMEOUT_S = 90
SPARE_CONSUMERS = 80


@dataclass
class HostileCli(Cli):
    """The e2e `Cli`, with settings of our own in the environment of every process it starts (the gateway too)."""

    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**super().env, **self.extra_env}


@dataclass(frozen=True)
class Consumer:
    name: str
    account_id: str
    key: str
    key_id: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class Market:
    """The running platform as the tests see it. Read `url` afresh in every test: a test may restart the gateway."""

    cli: HostileCli
    gateway: Gateway
    packages: Path
    admin: Platform
    spare: list[Consumer] = field(default_factory=list)
    """Consumers made before the gateway started, so their keys are in its first snapshot: a key made later
    waits for a (throttled) reload of the gateway's key snapshot on its first call."""
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def hostport(self) -> str:
        return self.gateway.hostport

    def consumer(self, purpose: str) -> Consumer:
        """A consumer account of its own, with one API key, that has made no call yet."""
        if self.spare:
            return self.spare.pop()
        return new_consumer(self.admin, f"{purpose}-{next(self._names)}")

    def usage(self, who: Consumer) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/api/usage", headers=who.auth, timeout=30)
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def events(self, who: Consumer) -> int:
        return int(self.usage(who)["total_events"])

    def kill_and_restart(self) -> float:
        """SIGKILL the gateway (no shutdown, no flush) and start a new one on the same home; return how long the
        new one took to be ready (every demo model ready)."""
        old = self.gateway.proc
        old.kill()
        old.wait(timeout=30)
        _close_pipe(old)
        started = time.monotonic()
        self.gateway = start_gateway(self.cli)
        return time.monotonic() - started


def _close_pipe(proc: subprocess.Popen[str]) -> None:
    if proc.stdout is not None:
        proc.stdout.close()


def start_gateway(cli: Cli, timeout_s: float = GATEWAY_START_TIMEOUT_S) -> Gateway:
    """`tests.e2e.conftest.start_gateway`, except that a gateway that does not become ready is killed, not left."""
    log_path = cli.home / "gateway.log"
    with open(log_path, "a") as log_file:
        proc = subprocess.Popen(
            [*MM, "serve", "--port", "0"], env=cli.env, stdout=subprocess.PIPE, stderr=log_file, text=True
        )
    try:
        return _wait_ready(cli, proc, time.monotonic() + timeout_s)
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        _close_pipe(proc)
        raise


def _wait_ready(cli: Cli, proc: subprocess.Popen[str], deadline: float) -> Gateway:
    assert proc.stdout is not None
    url = None
    while url is None and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"gateway exited before it was ready:\n{(cli.home / 'gateway.log').read_text()}")
        match = re.match(r"URL: (http://\S+)", line)
        url = match.group(1) if match else None
    assert url, "gateway printed no URL line"
    for model in DEMO_MODELS:  # runners start in the background: wait until every demo model is ready
        while httpx.get(f"{url}/v2/models/{model}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, f"model {model} not ready in time"
            time.sleep(0.1)
    return Gateway(url=url, proc=proc, cli=cli)


def new_consumer(admin: Platform, name: str) -> Consumer:
    """A consumer account with one API key, made in-process (the CLI takes seconds per call)."""
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    account = admin.accounts.create(name, "consumer", actor="hostile-tests")
    issued = admin.accounts.issue_key(name, actor="hostile-tests")
    return Consumer(name, account.id, issued.secret, issued.key_id)


@pytest.fixture(scope="session")
def market(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    """The demo catalogue published (in-process, as `modelmarket publish` does) on a fresh home, and the gateway."""
    base = tmp_path_factory.mktemp("hostile")
    packages = base / "packages"
    shutil.copytree(demo_dir, packages)
    cli = HostileCli(base / "home", extra_env=GATEWAY_ENV)
    admin = bootstrap(Settings(home=cli.home, database_url=None))
    gateway: Gateway | None = None
    try:
        admin.accounts.create("demo-provider", "provider", actor="hostile-tests")
        for model in DEMO_MODELS:
            admin.registry.publish(packages / model, actor="hostile-tests")
        spare = [new_consumer(admin, f"consumer-{i}") for i in range(SPARE_CONSUMERS)]
        gateway = start_gateway(cli)
        market = Market(cli=cli, gateway=gateway, packages=packages, admin=admin, spare=spare)
        yield market
        gateway = market.gateway  # the one running now (a test may have restarted it)
    finally:
        if gateway is not None:
            stop_gateway(gateway)
            _close_pipe(gateway.proc)
        admin.close()


# -- hostile packages, published once in a batch -----------------------------------------------------------------


@dataclass(frozen=True)
class PublishOutcome:
    returncode: int | None
    stderr: str
    version: str
    digests: frozenset[str]  # blobs this package's publish could create


@dataclass(frozen=True)
class PublishBatch:
    outcomes: dict[str, PublishOutcome]
    blobs_before: frozenset[str]
    blobs_after: frozenset[str]
    versions_after: tuple[str, ...]

    @property
    def new_blob_files(self) -> frozenset[str]:
        return self.blobs_after - self.blobs_before

    def assert_refused(self, case: str) -> str:
        """Exit code 1, a message with the case's words, its version not published, no blob of its files stored."""
        outcome = self.outcomes[case]
        words = next(c.words for c in CASES if c.name == case)
        assert outcome.returncode == 1, f"{case}: exit code {outcome.returncode}; stderr:\n{outcome.stderr}"
        for word in words:
            assert word in outcome.stderr, f"{case}: {word!r} not in the refusal:\n{outcome.stderr}"
        assert "Traceback" not in outcome.stderr, outcome.stderr
        if outcome.version != BASELINE_VERSION:
            assert outcome.version not in self.versions_after, f"{case}: {MODEL} {outcome.version} was published"
        stored = {Path(name).name for name in self.new_blob_files} & outcome.digests
        assert not stored, f"{case}: its files were stored as blobs {sorted(stored)}"
        print(f"[publish] {case}: {outcome.stderr.strip()[:300]}")
        return outcome.stderr


def _blob_files(home: Path) -> frozenset[str]:
    root = home / "blobs"
    return frozenset(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


@pytest.fixture(scope="session")
def refused_publishes(market: Market, tmp_path_factory: pytest.TempPathFactory) -> PublishBatch:
    """Every hostile package of `packages.CASES`, published with `modelmarket publish` (a few at a time)."""
    cli = market.cli
    base = tmp_path_factory.mktemp("hostile-packages")
    digits = market.packages / "digits"
    baseline = base / "baseline"
    prepare_copy(digits, baseline, BASELINE_VERSION)
    market.admin.registry.publish(baseline, actor="hostile-tests")
    prepared: dict[str, tuple[Path, str, frozenset[str]]] = {}
    for index, case in enumerate(CASES):
        version = case_version(index, case)
        where = Where(package=base / case.name, outside=base / f"{case.name}-outside", home=cli.home)
        where.outside.mkdir()
        prepare_copy(digits, where.package, version)
        case.prepare(where)
        prepared[case.name] = (where.package, version, frozenset(reachable_digests(where.package, cli.home)))
    blobs_before = _blob_files(cli.home)

    def publish(name: str) -> tuple[str, PublishOutcome]:
        package, version, digests = prepared[name]
        try:
            proc = cli.run("publish", str(package), check=False, timeout_s=PUBLISH_TIMEOUT_S)
        except Exception as exc:  # a publish that hangs (a FIFO read blocking) is an outcome, not a crash here
            return name, PublishOutcome(None, f"{type(exc).__name__}: {exc}", version, digests)
        return name, PublishOutcome(proc.returncode, proc.stderr, version, digests)

    with ThreadPoolExecutor(max_workers=PUBLISH_WORKERS) as pool:
        outcomes = dict(pool.map(publish, prepared))
    versions = tuple(v["version"] for v in cli.json("models", "versions", MODEL))
    return PublishBatch(outcomes, blobs_before, _blob_files(cli.home), versions)
