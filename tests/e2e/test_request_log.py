"""The JSON request log of a real gateway: one line per request with what identifies and measures the call, rotated
by size, and never a key, a prompt or an output in it, nor in any other log file the gateway and its runners
write (its own stderr with MODELMARKET_LOG_STDERR on, the runners' logs, the metering child's)."""

from __future__ import annotations

import json
import re
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import Cli, EnvCli, Gateway, start_gateway, stop_gateway

from modelmarket.bootstrap import bootstrap
from modelmarket.settings import Settings

PROMPT = "quokka-marmalade-7741 adores the glowing zeppelin"
"""A text no log could hold by chance: it is sent as a prompt, a sentiment input, in a query string and in a
request that fails validation."""
WRONG_KEY = "mm_not-a-key-ZX81-quokka"
LLM = "smollm2-135m-instruct"
MODELS = ("digits", "sentiment", LLM)
LOG_MAX_BYTES = 16_000
LOG_BACKUPS = 6
CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = {
    "time",
    "level",
    "trace_id",
    "span_id",
    "request_id",
    "account_id",
    "key_id",
    "method",
    "path",
    "protocol",
    "model",
    "version",
    "operation",
    "status",
    "error_type",
    "iu",
    "cost",
    "currency",
    "tokens_in",
    "tokens_out",
    "latency_ms",
}


@dataclass
class Market:
    cli: Cli
    gateway: Gateway
    key: str
    account_id: str


@pytest.fixture(scope="module")
def market(demo_cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    """A gateway (tracing on, no exporter; log lines on stderr too; a small rotation size) serving the demo's
    digits, sentiment and LLM, and a consumer's key."""
    base = tmp_path_factory.mktemp("request-log")
    shutil.copytree(demo_cli.home / "demo", base / "packages")
    cli = EnvCli(
        base / "home",
        extra_env={
            "MODELMARKET_LOG_MAX_BYTES": str(LOG_MAX_BYTES),
            "MODELMARKET_LOG_BACKUPS": str(LOG_BACKUPS),
            "MODELMARKET_LOG_STDERR": "true",
            "MODELMARKET_TRACING": "true",
        },
    )
    admin = bootstrap(Settings(home=cli.home))
    try:
        admin.accounts.create("demo-provider", "provider", actor="log-tests")
        for model in MODELS:
            admin.registry.publish(base / "packages" / model, actor="log-tests")
        account = admin.accounts.create("caller", "consumer", actor="log-tests")
        key = admin.accounts.issue_key("caller", actor="log-tests").secret
    finally:
        admin.close()
    gateway = start_gateway(cli, models=MODELS, timeout_s=180)
    try:
        yield Market(cli, gateway, key, account.id)
    finally:
        stop_gateway(gateway)


def _log_lines(home: Path) -> list[dict[str, Any]]:
    """Every line of requests.log and its rotated copies, oldest first."""
    logs = home / "logs"
    files = [*sorted(logs.glob("requests.log.*"), key=lambda p: -int(p.suffix[1:])), logs / "requests.log"]
    return [json.loads(line) for path in files if path.exists() for line in path.read_text().splitlines()]


def _wait_for_lines(home: Path, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        lines = [line for line in _log_lines(home) if not line["path"].endswith("/ready")]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _calls(market: Market) -> list[tuple[httpx.Response, dict[str, Any]]]:
    """The calls, each with what its log line must say."""
    auth = {"Authorization": f"Bearer {market.key}"}
    text_body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [PROMPT]}]}
    digit = json.loads((market.cli.home.parent / "packages" / "examples" / "digit.json").read_text())
    chat = {"model": LLM, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4}
    bad = {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [PROMPT]}]}
    url = market.gateway.url
    out: list[tuple[httpx.Response, dict[str, Any]]] = []
    with httpx.Client(base_url=url, timeout=120) as http:
        traced = {**auth, "traceparent": f"00-{CALLER_TRACE}-b7ad6b7169203331-01"}
        out.append((http.post("/v2/models/digits/infer", json=digit, headers=traced), {"model": "digits"}))
        out.append((http.post("/v2/models/sentiment/infer", json=text_body, headers=auth), {"model": "sentiment"}))
        query = f"/v2/models/sentiment/infer?note={PROMPT.replace(' ', '+')}&api_key={market.key}"
        out.append((http.post(query, json=text_body, headers=auth), {"model": "sentiment"}))
        out.append((http.post("/v2/models/sentiment/infer", json=bad, headers=auth), {"status": 400}))
        out.append((http.post("/v1/chat/completions", json=chat, headers=auth), {"model": LLM, "operation": "chat"}))
        wrong = {"Authorization": f"Bearer {WRONG_KEY}"}
        out.append((http.post("/v2/models/sentiment/infer", json=text_body, headers=wrong), {"status": 401}))
    return out


def test_one_json_line_per_request_that_says_what_the_call_was(market: Market) -> None:
    calls = _calls(market)
    lines = _wait_for_lines(market.cli.home, len(calls))
    assert len(lines) == len(calls), [line["path"] for line in lines]
    for (response, expected), line in zip(calls, lines, strict=True):
        assert set(line) == FIELDS
        assert TIME_RE.match(line["time"])
        assert line["method"] == "POST"
        assert line["path"] == response.request.url.path  # never the query string
        assert line["status"] == response.status_code == expected.get("status", 200), response.text
        assert line["latency_ms"] > 0
        assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"]) and re.fullmatch(r"[0-9a-f]{16}", line["span_id"])
        if response.status_code == 200:
            assert line["level"] == "info"
            assert line["model"] == expected["model"] and line["version"]
            assert line["account_id"] == market.account_id and line["key_id"]
            assert line["request_id"] == response.headers["x-request-id"]
            assert line["iu"] == response.headers["x-modelmarket-iu"]
            assert f"{line['cost']} {line['currency']}" == response.headers["x-modelmarket-cost"]
            assert line["operation"] == expected.get("operation")
            assert line["protocol"] == ("openai" if line["path"].startswith("/v1/") else "oip")
        else:
            assert line["level"] == "warning" and line["iu"] is None and line["cost"] is None
    assert lines[0]["trace_id"] == CALLER_TRACE  # an incoming traceparent names the call's trace
    assert lines[3]["error_type"] == "InvalidInput"
    assert lines[5]["error_type"] == "Unauthenticated" and lines[5]["account_id"] is None
    chat = lines[4]
    assert isinstance(chat["tokens_in"], int) and chat["tokens_in"] > 0 and isinstance(chat["tokens_out"], int)


def test_the_log_rotates_by_size_and_loses_no_line(market: Market) -> None:
    logs = market.cli.home / "logs"
    before = len(_log_lines(market.cli.home))
    digit = (market.cli.home.parent / "packages" / "examples" / "digit.json").read_bytes()
    headers = {"Authorization": f"Bearer {market.key}", "Content-Type": "application/json"}
    calls = 60
    with httpx.Client(base_url=market.gateway.url, timeout=60) as http:
        for _ in range(calls):
            assert http.post("/v2/models/digits/infer", content=digit, headers=headers).status_code == 200
    deadline = time.monotonic() + 15
    while len(_log_lines(market.cli.home)) < before + calls and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_log_lines(market.cli.home)) == before + calls  # every line once, across the rotated files
    rotated = sorted(logs.glob("requests.log.*"))
    assert rotated, "the log never rotated"
    assert len(rotated) <= LOG_BACKUPS
    for path in [logs / "requests.log", *rotated]:
        assert path.stat().st_size <= LOG_MAX_BYTES
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        for line in path.read_text().splitlines():
            json.loads(line)  # whole lines only, never one split across two files
    assert stat.S_IMODE(logs.stat().st_mode) == 0o700


def _log_files(home: Path) -> list[Path]:
    """Every log file under the home: names ending in .log (or rotated .log.N), everything under logs/ and under
    each runner's folder (runners/*/)."""
    found = set()
    for path in home.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(home).parts
        if ".log" in path.name or rel[0] == "logs" or (rel[0] == "runners" and len(rel) >= 3):
            found.add(path)
    return sorted(found)


def test_no_key_and_no_prompt_in_any_log_file(market: Market) -> None:
    _calls(market)
    stop_gateway(market.gateway)  # everything written out, runners' logs closed
    files = _log_files(market.cli.home)
    names = {p.name for p in files}
    assert "requests.log" in names and "gateway.log" in names
    assert any(p.name.startswith("runner-") and p.suffix == ".log" for p in files), names
    stderr = (market.cli.home / "gateway.log").read_text()
    assert '"path":"/v2/models/sentiment/infer"' in stderr  # the log's lines went to stderr too
    secrets = (market.key, WRONG_KEY, PROMPT, PROMPT.replace(" ", "+"), "quokka")
    for path in files:
        content = path.read_bytes().decode("utf-8", "replace")
        for secret in secrets:
            assert secret not in content, f"{secret!r} is in {path.relative_to(market.cli.home)}"
