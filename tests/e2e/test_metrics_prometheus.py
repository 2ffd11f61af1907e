"""A real Prometheus (Debian's ``/usr/bin/prometheus``) scrapes a real gateway serving `digits`, with the scrape
configuration shipped in ``deploy/prometheus/prometheus.yml`` (its operator key in a credentials file), and
answers a query through its HTTP API with the number of calls made; ``promtool check metrics`` passes on what
the gateway serves."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.e2e.conftest import Cli, Gateway, start_gateway, stop_gateway

from modelmarket.bootstrap import bootstrap
from modelmarket.demo._digits import build_digits
from modelmarket.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
CALLS = 5
WAIT_S = 90.0
"""Longest wait for Prometheus to start and for a scrape to show the calls (it scrapes every second here)."""


@pytest.fixture()
def market(tmp_path: Path) -> Iterator[tuple[Gateway, str, str, dict[str, Any]]]:
    """A gateway serving `digits` only: (gateway, operator key, consumer key, a digits request)."""
    home = tmp_path / "home"
    package = build_digits(tmp_path / "packages" / "digits", tmp_path / "examples", lambda _: None)
    admin = bootstrap(Settings(home=home))
    try:
        admin.accounts.create("demo-provider", "provider", actor="tests")
        admin.registry.publish(package, actor="tests")
        admin.accounts.create("scraper", "operator", actor="tests")
        admin.accounts.create("alice", "consumer", actor="tests")
        operator = admin.accounts.issue_key("scraper", actor="tests").secret
        consumer = admin.accounts.issue_key("alice", actor="tests").secret
    finally:
        admin.close()
    gateway = start_gateway(Cli(home), models=("digits",))
    try:
        yield gateway, operator, consumer, json.loads((tmp_path / "examples" / "digit.json").read_text())
    finally:
        stop_gateway(gateway)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape_config(folder: Path, target: str, operator_key: str) -> Path:
    """The shipped scrape configuration, pointed at ``target`` and scraping every second."""
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    job = config["scrape_configs"][0]
    job["static_configs"][0]["targets"] = [target]
    key_file = folder / job["authorization"]["credentials_file"]  # relative: beside the configuration
    key_file.write_text(operator_key + "\n")
    key_file.chmod(0o600)
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def running_prometheus(config: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Prometheus on a free loopback port with its data beside ``config``; stopped (by its PID) at the end."""
    folder = config.parent
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={folder / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--log.level=warn",
    ]
    with open(folder / "prometheus.log", "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield url, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def wait_for_value(url: str, promql: str, wanted: float, log: Path) -> float:
    """Query until the answer is ``wanted`` (Prometheus starts, then scrapes every second)."""
    deadline = time.monotonic() + WAIT_S
    seen: float | None = None
    while time.monotonic() < deadline:
        try:
            result = query(url, promql)
        except httpx.TransportError:  # not listening yet
            result = []
        if result:
            seen = float(result[0]["value"][1])
            if seen == wanted:
                return seen
        time.sleep(0.5)
    raise AssertionError(f"{promql} is {seen}, not {wanted}, after {WAIT_S}s; prometheus log:\n{log.read_text()}")


def test_prometheus_scrapes_the_gateway_and_answers_with_the_calls_made(
    market: tuple[Gateway, str, str, dict[str, Any]], tmp_path: Path
) -> None:
    gateway, operator_key, consumer_key, request = market
    folder = tmp_path / "prometheus"
    folder.mkdir()
    config = scrape_config(folder, gateway.hostport, operator_key)
    checked = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    with running_prometheus(config) as (url, proc):
        iu = 0.0
        for _ in range(CALLS):
            answer = httpx.post(
                f"{gateway.url}/v2/models/digits/infer",
                json=request,
                headers={"Authorization": f"Bearer {consumer_key}"},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            iu += float(answer.headers["x-modelmarket-iu"])
        version = answer.headers["x-modelmarket-route"].partition("@")[2]

        log = folder / "prometheus.log"
        calls = 'sum(modelmarket_requests_total{job="modelmarket", protocol="oip", model="digits", code="200"})'
        assert wait_for_value(url, calls, float(CALLS), log) == CALLS
        assert wait_for_value(url, 'up{job="modelmarket"}', 1.0, log) == 1.0
        units = query(url, f'modelmarket_inference_units_total{{model="digits", version="{version}"}}')
        assert float(units[0]["value"][1]) == pytest.approx(iu)
        runner = query(url, f'modelmarket_runner_up{{model="digits", version="{version}"}}')
        assert [float(r["value"][1]) for r in runner] == [1.0]
        assert proc.poll() is None, "prometheus exited"

    served = httpx.get(f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {operator_key}"}, timeout=10)
    assert served.status_code == 200
    assert "modelmarket_event_log_lag_events" in served.text  # the metering child's files, merged
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=served.text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
