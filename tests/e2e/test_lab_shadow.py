"""Shadow traffic through a running gateway (the Transmutation Lab's must-show): while `lab shadow` copies the
calls of `digits` to its version 2.0.0, callers get 1.0.0's answers, are billed once per call and never for a copy,
and the report pairs every copy with the call it copied (output agreement, latency)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.e2e.conftest import COLD_START_S, Cli, start_gateway, stop_gateway

from modelmarket.bootstrap import bootstrap
from modelmarket.settings import Settings

pytestmark = pytest.mark.timeout(600)

CALLS = 20
DIGIT = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [[3.0] * 64]}]}


def test_shadow_copies_are_never_billed_nor_returned_and_are_compared(
    digits_cli: Cli, demo_home: Path, tmp_path: Path
) -> None:
    cli = digits_cli
    candidate = tmp_path / "digits-2"
    shutil.copytree(demo_home / "demo" / "digits", candidate)
    doc = yaml.safe_load((candidate / "modelmarket.yaml").read_text())
    doc["version"] = "2.0.0"
    (candidate / "modelmarket.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    admin = bootstrap(Settings(home=cli.home))
    try:
        admin.registry.publish(candidate, actor="tests")
        admin.registry.move_alias("digits", "latest", "1.0.0", actor="tests")
        admin.accounts.create("watched", "consumer", actor="tests")
        key = admin.accounts.issue_key("watched", actor="tests").secret
    finally:
        admin.close()
    cli.run("lab", "shadow", "start", "digits-2-shadow", "--model", "digits", "--candidate", "2.0.0")
    gateway = start_gateway(cli, models=("digits",))
    try:
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=gateway.url, timeout=COLD_START_S, headers=auth) as http:

            def copied(at_least: int) -> dict[str, Any]:
                deadline = time.monotonic() + 60  # copies run in the background (the first cold-starts 2.0.0)
                while True:
                    found: dict[str, Any] = cli.json("lab", "shadow", "show", "digits-2-shadow")
                    if found["copies"] >= at_least or time.monotonic() > deadline:
                        return found
                    time.sleep(0.3)

            for i in range(CALLS):
                r = http.post("/v2/models/digits/infer", json=DIGIT)
                assert r.status_code == 200, r.text
                assert r.headers["x-modelmarket-route"] == "digits@1.0.0"  # the caller gets the primary's answer
                if i == 0:  # once the candidate is warm, copies keep up (a burst past 16 at once would skip some)
                    copied(1)
            report = copied(CALLS)
            assert (report["calls"], report["copies"], report["failures"]) == (CALLS, CALLS, 0)
            assert report["agreement"]["value"] == 1.0 and report["agreement"]["n"] == CALLS  # the same model
            assert report["latency_ms"]["shadow"]["p95"] is not None
            usage = http.get("/api/usage").json()
            assert usage["total_events"] == CALLS  # one usage event per call: the copies billed nothing
        cli.run("lab", "shadow", "stop", "digits-2-shadow")
    finally:
        stop_gateway(gateway)
    actions = [r["action"] for r in cli.json("audit", "list", "--limit", "1000")]
    assert "shadow.start" in actions and "shadow.stop" in actions
