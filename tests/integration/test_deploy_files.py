"""``deploy/``: the Prometheus scrape configuration passes ``promtool check config``, and every metric the Grafana
dashboard queries is one a real gateway serves (composed by ``bootstrap_gateway``, with a real runner for
`digits` and the real metering child)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from modelmarket.bootstrap import bootstrap
from modelmarket.demo._digits import build_digits
from modelmarket.gateway.app import GatewayApp
from modelmarket.gateway.compose import bootstrap_gateway
from modelmarket.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = sorted((DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.yml"))
PROVIDERS = sorted((DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.yml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
WAIT_S = 60.0
"""Longest wait for the metering child's first reading."""

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels, strings, ranges and keywords left out)."""
    text = _STRING.sub('""', promql)
    text = _MATCHERS.sub("", text)
    text = _RANGES.sub("", text)
    text = _GROUPING.sub("", text)
    return {name for name in _NAME.findall(text) if name.lower() not in _KEYWORDS}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ()) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", ()):
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        found = re.match(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", text)
        if found:  # Grafana's label_values(metric, label): only its first argument is a metric
            exprs.append(found.group(1))
        elif text:
            exprs.append(text)
    return exprs


def test_the_name_reader_finds_metrics_and_nothing_else() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (model, le) (rate(a_seconds_bucket{instance=~"$x", b="c_total"}'
        "[$__rate_interval]))) / on(model) group_left max without (x) (b_total offset 5m) and c:recorded"
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c:recorded"}


def test_the_scrape_config_passes_promtool(tmp_path: Path) -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    job = config["scrape_configs"][0]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    credentials = job["authorization"]["credentials_file"]
    shutil.copy(SCRAPE_CONFIG, tmp_path / "prometheus.yml")
    (tmp_path / credentials).write_text("mm_an-operator-key\n")  # relative: read from the configuration's folder
    checked = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr


def test_grafana_provisioning_points_at_the_dashboard_and_its_data_source() -> None:
    assert DASHBOARDS and DATASOURCES and PROVIDERS
    uids = {d["uid"] for f in DATASOURCES for d in yaml.safe_load(f.read_text())["datasources"]}
    for provider in (p for f in PROVIDERS for p in yaml.safe_load(f.read_text())["providers"]):
        assert provider["type"] == "file" and provider["options"]["path"]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["panels"]
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in uids, f"{path.name}: {panel['title']}"
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] in uids


@pytest.fixture(scope="module")
def served_metric_names(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The names a real gateway's /metrics declares, after a call to `digits` and the metering child's reading."""
    root = tmp_path_factory.mktemp("deploy")
    package = build_digits(root / "digits", root / "examples", lambda _: None)
    request = json.loads((root / "examples" / "digit.json").read_text())
    settings = Settings(home=root / "home", database_url=None)
    admin = bootstrap(settings)
    try:
        admin.accounts.create("demo-provider", "provider", actor="tests")
        admin.registry.publish(package, actor="tests")
        admin.accounts.create("ops", "operator", actor="tests")
        operator = admin.accounts.issue_key("ops", actor="tests").secret
    finally:
        admin.close()
    return asyncio.run(_scrape_after_a_call(settings, operator, request))


async def _scrape_after_a_call(settings: Settings, key: str, request: dict[str, Any]) -> set[str]:
    platform = bootstrap(settings)
    app = GatewayApp(bootstrap_gateway(platform, preload=False, metering_child=True))
    await app.startup()
    auth = {"Authorization": f"Bearer {key}"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60) as c:
            assert (await c.post("/v2/models/digits/infer", json=request, headers=auth)).status_code == 200
            deadline = time.monotonic() + WAIT_S
            while "modelmarket_event_log_lag_events " not in (text := (await c.get("/metrics", headers=auth)).text):
                assert time.monotonic() < deadline, "the metering child never wrote its metrics"
                await asyncio.sleep(0.5)
    finally:
        await app.shutdown()
        platform.close()
    declared = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    names = set(declared)
    for name, kind in declared.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_query_names_a_served_metric(dashboard: Path, served_metric_names: set[str]) -> None:
    queries = dashboard_queries(json.loads(dashboard.read_text()))
    named = {name for q in queries for name in metric_names(q)}
    assert len(named) >= 10  # the reader found the dashboard's metrics, not nothing
    missing = sorted(named - served_metric_names)
    assert not missing, f"{dashboard.name} queries metrics no gateway serves: {missing}"
