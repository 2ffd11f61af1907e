"""``GET /metrics`` on gateways composed by ``bootstrap_gateway`` in this process (httpx.ASGITransport), serving
`digits` from a real runner, with the real metering child writing its multiprocess files.

The scrape by a real Prometheus is in ``tests/e2e/test_metrics_prometheus.py``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.parser import text_string_to_metric_families

from modelmarket.bootstrap import bootstrap
from modelmarket.demo._digits import build_digits
from modelmarket.gateway.app import GatewayApp
from modelmarket.gateway.compose import bootstrap_gateway, child_env
from modelmarket.observability.metrics import MetricsObserver, child_metrics_dir
from modelmarket.observability.metrics_metering import (
    COUNTED_FILE,
    MAX_CHILD_FILES,
    ChildFilesCollector,
    read_counted,
)
from modelmarket.settings import Settings

pytestmark = pytest.mark.anyio
WAIT_S = 60.0
"""Longest wait for the metering child to apply the calls (it polls every MODELMARKET_METERING_POLL_S)."""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("digits")
    package = build_digits(out / "digits", out / "examples", lambda _: None)
    return package, json.loads((out / "examples" / "digit.json").read_text())


@dataclass
class Home:
    settings: Settings
    operator_key: str
    consumer_key: str
    request: dict[str, Any]

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


def make_home(root: Path, digits: tuple[Path, dict[str, Any]], **settings: Any) -> Home:
    """A home with `digits` published, an operator and a consumer, each with a key."""
    s = Settings(home=root, database_url=None, **settings)
    admin = bootstrap(s)
    try:
        admin.accounts.create("demo-provider", "provider", actor="tests")
        admin.registry.publish(digits[0], actor="tests")
        admin.accounts.create("ops", "operator", actor="tests")
        admin.accounts.create("alice", "consumer", actor="tests")
        operator = admin.accounts.issue_key("ops", actor="tests").secret
        consumer = admin.accounts.issue_key("alice", actor="tests").secret
    finally:
        admin.close()
    return Home(s, operator, consumer, digits[1])


@asynccontextmanager
async def serving(home: Home, metering_child: bool = False) -> AsyncIterator[tuple[GatewayApp, httpx.AsyncClient]]:
    platform = bootstrap(home.settings)
    app = GatewayApp(bootstrap_gateway(platform, preload=False, metering_child=metering_child))
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60) as c:
            yield app, c
    finally:
        await app.shutdown()
        platform.close()


def samples(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def scrape(client: httpx.AsyncClient, home: Home) -> Samples:
    answer = await client.get("/metrics", headers=home.auth(home.operator_key))
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


async def wait_for(client: httpx.AsyncClient, home: Home, done: Callable[[Samples], bool]) -> Samples:
    """Scrape until ``done`` holds (the metering child samples every second and polls the log on its own)."""
    deadline = time.monotonic() + WAIT_S
    found = await scrape(client, home)
    while not done(found):
        assert time.monotonic() < deadline, "the metering child's figures never got there"
        await asyncio.sleep(0.5)
        found = await scrape(client, home)
    return found


async def test_metrics_need_an_operators_key(tmp_path: Path, digits: tuple[Path, dict[str, Any]]) -> None:
    home = make_home(tmp_path / "home", digits)
    async with serving(home) as (_, client):
        missing = await client.get("/metrics")
        assert missing.status_code == 401
        assert "missing API key" in missing.json()["error"]
        wrong = await client.get("/metrics", headers=home.auth("mm_not-a-key"))
        assert wrong.status_code == 401
        consumer = await client.get("/metrics", headers=home.auth(home.consumer_key))
        assert consumer.status_code == 403
        assert "operator" in consumer.json()["error"]
        assert "modelmarket_" not in consumer.text
        operator = await client.get("/metrics", headers=home.auth(home.operator_key))
        assert operator.status_code == 200
        assert operator.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE modelmarket_requests_total counter" in operator.text
        # the refused scrapes are requests like any other, counted by their status
        found = samples(operator.text)
        assert value(found, "modelmarket_requests_total", protocol="metrics", model="", version="", code="401") == 2
        assert value(found, "modelmarket_requests_total", protocol="metrics", model="", version="", code="403") == 1
        assert (
            value(
                found,
                "modelmarket_errors_total",
                protocol="metrics",
                model="",
                error_type="PermissionDenied",
                code="403",
            )
            == 1
        )
        posted = await client.post("/metrics", headers=home.auth(home.operator_key))
        assert posted.status_code == 405


async def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(
    tmp_path: Path, digits: tuple[Path, dict[str, Any]]
) -> None:
    home = make_home(tmp_path / "home", digits)
    async with serving(home) as (_, client):
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        answer = await client.get("/metrics", headers={**home.auth(home.operator_key), "Accept": accept})
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
        assert answer.text.endswith("# EOF\n")


async def test_public_metrics_need_no_key(tmp_path: Path, digits: tuple[Path, dict[str, Any]]) -> None:
    home = make_home(tmp_path / "home", digits, metrics_public=True)
    async with serving(home) as (_, client):
        answer = await client.get("/metrics")
        assert answer.status_code == 200
        assert "modelmarket_requests_total" in answer.text


async def test_metrics_off_means_no_endpoint_and_no_recording(
    tmp_path: Path, digits: tuple[Path, dict[str, Any]]
) -> None:
    home = make_home(tmp_path / "home", digits, metrics_enabled=False)
    async with serving(home) as (app, client):
        assert app.parts.metrics is None
        observers = app.parts.observability.observers if app.parts.observability is not None else ()
        assert not any(isinstance(o, MetricsObserver) for o in observers)
        answer = await client.get("/metrics", headers=home.auth(home.operator_key))
        assert answer.status_code == 404
    assert "PROMETHEUS_MULTIPROC_DIR" not in child_env(home.settings, "sqlite://")


async def test_two_gateways_in_one_process_keep_their_own_figures(
    tmp_path: Path, digits: tuple[Path, dict[str, Any]]
) -> None:
    first, second = make_home(tmp_path / "one", digits), make_home(tmp_path / "two", digits)
    async with serving(first) as (_, one), serving(second) as (_, two):
        for _ in range(3):
            assert (await one.get("/openapi.json")).status_code == 200
        assert (await two.get("/openapi.json")).status_code == 200
        in_one, in_two = await scrape(one, first), await scrape(two, second)
    labels = {"protocol": "dashboard", "model": "", "version": "", "code": "200"}
    assert value(in_one, "modelmarket_requests_total", **labels) == 3
    assert value(in_two, "modelmarket_requests_total", **labels) == 1


async def test_billed_calls_runner_facts_and_the_metering_lag(
    tmp_path: Path, digits: tuple[Path, dict[str, Any]]
) -> None:
    home = make_home(tmp_path / "home", digits)
    calls, iu, cost = 3, Decimal(0), Decimal(0)
    async with serving(home, metering_child=True) as (app, client):
        # whether the child applies them before or after its first sample, the calls are counted
        for _ in range(calls):
            answer = await client.post(
                "/v2/models/digits/infer", json=home.request, headers=home.auth(home.consumer_key)
            )
            assert answer.status_code == 200, answer.text
            amount, currency = answer.headers["x-modelmarket-cost"].split()
            cost += Decimal(amount)
            iu += Decimal(answer.headers["x-modelmarket-iu"])
        version = answer.headers["x-modelmarket-route"].partition("@")[2]
        refused = await client.post("/v2/models/digits/infer", json=home.request)
        assert refused.status_code == 401
        found = await wait_for(
            client,
            home,
            lambda f: (
                value(f, "modelmarket_metering_applied_events_total") == calls
                and value(f, "modelmarket_event_log_lag_events") == 0
            ),
        )
        pid = app.parts.metering.child.pid

    oip = {"protocol": "oip", "model": "digits"}
    assert value(found, "modelmarket_requests_total", **oip, version=version, code="200") == calls
    assert value(found, "modelmarket_request_duration_seconds_count", **oip, version=version) == calls
    unknown = {"protocol": "oip", "model": ""}  # refused before its model was looked up
    assert value(found, "modelmarket_errors_total", **unknown, error_type="Unauthenticated", code="401") == 1
    assert value(found, "modelmarket_inference_units_total", model="digits", version=version) == pytest.approx(
        float(iu)
    )
    assert value(
        found, "modelmarket_revenue_total", model="digits", version=version, currency=currency
    ) == pytest.approx(float(cost))
    replica = {"model": "digits", "version": version, "replica": "0"}
    assert value(found, "modelmarket_runner_up", **replica) == 1
    rss = value(found, "modelmarket_runner_resident_memory_bytes", **replica)
    assert rss is not None and rss > 1024 * 1024
    assert value(found, "modelmarket_runner_calls_in_flight", **replica) == 0
    assert value(found, "modelmarket_runner_queue_depth", model="digits", version=version) == 0
    assert value(found, "modelmarket_runner_restarts_total", model="digits", version=version) == 0
    assert value(found, "modelmarket_event_log_lag_seconds") == 0
    assert value(found, "process_resident_memory_bytes") is not None  # the gateway's own process
    files = sorted(p.name for p in child_metrics_dir(home.settings).iterdir())
    assert f"gauge_mostrecent_{pid}.db" in files  # the child wrote into this gateway's folder


def test_a_dead_childs_gauges_are_dropped_and_its_counters_kept(tmp_path: Path) -> None:
    """A real second process writes the child's metrics into a multiprocess folder and exits."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    script = (
        "from modelmarket.observability.metrics_metering import LagSampler, LagReading\n"
        "readings = iter([LagReading(10, 4, 100.0), LagReading(12, 9, 100.0)])\n"
        "sampler = LagSampler(lambda: next(readings), now=lambda: 130.0)\n"
        "sampler.sample(); sampler.sample()\n"
        "print('sampled', flush=True)\n"
        "import sys; sys.stdin.read()\n"  # stays alive until the test closes its stdin
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    child = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "sampled\n"
        alive = {s.name: s.value for f in ChildFilesCollector(folder).collect() for s in f.samples}
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)
    assert alive["modelmarket_event_log_lag_events"] == 3
    assert alive["modelmarket_event_log_lag_seconds"] == 30.0
    assert alive["modelmarket_metering_applied_events_total"] == 5  # 4 -> 9: five records applied
    dead = {s.name: s.value for f in ChildFilesCollector(folder).collect() for s in f.samples}
    assert "modelmarket_event_log_lag_events" not in dead
    assert dead["modelmarket_metering_applied_events_total"] == 5


def child_figures(folder: Path) -> dict[str, float]:
    return {s.name: s.value for f in ChildFilesCollector(folder).collect() for s in f.samples}


def write_child_file(path: Path, name: str, value: float) -> None:
    """A multiprocess file as a metering child writes it (one value, no labels)."""
    values = MmapedDict(str(path))
    values.write_value(mmap_key(name.removesuffix("_total"), name, [], [], "help"), value, time.time())
    values.close()


def test_the_live_childs_lag_outlasts_any_number_of_dead_ones(tmp_path: Path) -> None:
    """A child restarted over and over leaves one counter and one gauge file per process: the gone ones are folded
    and deleted, and the live child's gauges are served however many there were."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have these pids
    restarts = MAX_CHILD_FILES * 5
    for pid in range(gone, gone + restarts):
        write_child_file(folder / f"counter_{pid}.db", "modelmarket_metering_applied_events_total", 2)
        write_child_file(folder / f"gauge_mostrecent_{pid}.db", "modelmarket_event_log_lag_events", 99)
    live = os.getpid()  # this process stands for the running child
    write_child_file(folder / f"counter_{live}.db", "modelmarket_metering_applied_events_total", 5)
    write_child_file(folder / f"gauge_mostrecent_{live}.db", "modelmarket_event_log_lag_events", 7)
    collector = ChildFilesCollector(folder)
    for _ in range(2):  # the second collection reads the folded counts, not the files again
        found = {s.name: s.value for f in collector.collect() for s in f.samples}
        assert found["modelmarket_event_log_lag_events"] == 7
        assert found["modelmarket_metering_applied_events_total"] == restarts * 2 + 5
    assert sorted(p.name for p in folder.iterdir()) == [f"counter_{live}.db", f"gauge_mostrecent_{live}.db"]
    (folder / f"gauge_mostrecent_{live}.db").unlink()  # the live child stops, and another, gone too, counted 4
    write_child_file(folder / f"counter_{gone}.db", "modelmarket_metering_applied_events_total", 4)
    found = {s.name: s.value for f in collector.collect() for s in f.samples}
    assert "modelmarket_event_log_lag_events" not in found
    assert found["modelmarket_metering_applied_events_total"] == restarts * 2 + 5 + 4


SAMPLING_CHILD = """
import sys, threading
from pathlib import Path
from modelmarket.observability.metrics_metering import LagReading, start_lag_sampler
applied = Path(sys.argv[1])

def open_reader():
    def read():
        offset = int(applied.read_text())
        return LagReading(offset, offset, None)
    return read, lambda: None

start_lag_sampler(open_reader, threading.Event())
print("started", flush=True)
sys.stdin.read()
"""


def test_a_killed_childs_last_records_are_counted_by_the_next_one(tmp_path: Path) -> None:
    """Two metering children in turn, the first killed at any moment after applying records it may not have
    sampled yet: together they count every offset applied, once."""
    folder, applied = tmp_path / "metrics", tmp_path / "applied"
    folder.mkdir()

    def apply_up_to(offset: int) -> None:
        scratch = tmp_path / "applied.new"
        scratch.write_text(str(offset))
        os.replace(scratch, applied)

    def start() -> subprocess.Popen[str]:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
        command = [sys.executable, "-c", SAMPLING_CHILD, str(applied)]
        child = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline() == "started\n"
        return child

    def end(child: subprocess.Popen[str], kill: bool) -> None:
        if kill:
            child.send_signal(signal.SIGKILL)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.close()  # the child's end, when not killed
        child.wait(timeout=30)
        child.stdout.close()

    def counted_up_to(offset: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while read_counted(folder) != offset:
            assert time.monotonic() < deadline, f"the child never counted up to {offset}"
            time.sleep(0.1)

    apply_up_to(4)  # applied before the gateway's first child started: not counted
    first = start()
    try:
        apply_up_to(10)
        counted_up_to(10)
        apply_up_to(15)  # and killed before or after it samples that: the next child counts what it did not
    finally:
        end(first, kill=True)
    second = start()
    try:
        apply_up_to(18)
        counted_up_to(18)
    finally:
        end(second, kill=False)
    found = child_figures(folder)
    assert found["modelmarket_metering_applied_events_total"] == 18 - 4
    assert sorted(p.name for p in folder.iterdir()) == [COUNTED_FILE]  # both gone: folded and deleted
