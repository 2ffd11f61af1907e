"""An experiment on two real `digits` versions through a running gateway (the Transmutation Lab's must-show):
`lab experiment start` splits the model's traffic between 1.0.0 and 2.0.0 by API key, the test gives feedback
that favours 1.0.0 (the metric it controls), `lab experiment show` reaches significance, and `stop --promote`
moves `latest`, audited. Calls naming a version stay out of the experiment."""

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

KEYS = 24
CALLS_PER_KEY = 3
DIGIT = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [[3.0] * 64]}]}


def _second_version(demo_home: Path, dest: Path) -> Path:
    shutil.copytree(demo_home / "demo" / "digits", dest)
    manifest = dest / "modelmarket.yaml"
    doc = yaml.safe_load(manifest.read_text())
    doc["version"] = "2.0.0"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def _keys(cli: Cli, n: int) -> list[str]:
    """``n`` consumers with one key each, made in-process (a CLI call per key takes seconds)."""
    admin = bootstrap(Settings(home=cli.home))
    try:
        out = []
        for i in range(n):
            admin.accounts.create(f"tester-{i}", "consumer", actor="tests")
            out.append(admin.accounts.issue_key(f"tester-{i}", actor="tests").secret)
        return out
    finally:
        admin.close()


def _show(cli: Cli, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = cli.json("lab", "experiment", "show", name)
    return doc


def test_an_experiment_on_two_digits_versions_reaches_significance_and_promotes_the_better(
    digits_cli: Cli, demo_home: Path, tmp_path: Path
) -> None:
    cli = digits_cli
    cli.run("publish", str(_second_version(demo_home, tmp_path / "digits-2")), timeout_s=300)
    cli.run(
        "lab", "experiment", "start", "digits-v2", "--model", "digits", "--variants", "A=1.0.0,B=2.0.0",
        "--split", "50/50", "--metric", "feedback",
    )  # fmt: skip
    keys = _keys(cli, KEYS)
    gateway = start_gateway(cli, models=("digits",))
    try:
        served: dict[str, set[str]] = {}
        with httpx.Client(base_url=gateway.url, timeout=COLD_START_S) as http:
            for key in keys:
                auth = {"Authorization": f"Bearer {key}"}
                for _ in range(CALLS_PER_KEY):
                    r = http.post("/v2/models/digits/infer", json=DIGIT, headers=auth)
                    assert r.status_code == 200, r.text
                    version = r.headers["x-modelmarket-route"].split("@")[1]
                    served.setdefault(key, set()).add(version)
                    # the metric the test controls: 1.0.0's answers are liked, 2.0.0's are not
                    score = 5 if version == "1.0.0" else 2
                    fb = http.post("/api/feedback", json={"request_id": r.headers["x-request-id"], "score": score},
                                   headers=auth)  # fmt: skip
                    assert fb.status_code == 201, fb.text
            assert all(len(v) == 1 for v in served.values())  # sticky: a key keeps its variant
            assert {v for versions in served.values() for v in versions} == {"1.0.0", "2.0.0"}
            # a call naming a version is served as asked and is not part of the experiment
            pinned = http.post("/v2/models/digits/versions/2.0.0/infer", json=DIGIT,
                               headers={"Authorization": f"Bearer {keys[0]}"})  # fmt: skip
            assert pinned.status_code == 200

            total = KEYS * CALLS_PER_KEY
            deadline = time.monotonic() + 30
            while True:
                doc = _show(cli, "digits-v2")
                if sum(v["calls"] for v in doc["results"]) >= total:
                    break
                assert time.monotonic() < deadline, f"the gateway recorded {doc['results']} of {total} calls"
                time.sleep(0.3)
            a, b = doc["results"]
            assert a["calls"] + b["calls"] == total  # the pinned call is not counted
            assert (a["metric"]["value"], b["metric"]["value"]) == (5.0, 2.0)
            assert b["against_control"]["significant"] is True
            assert b["against_control"]["p_value"] < 0.05
            assert b["against_control"]["better_than_control"] is False

            cli.run("lab", "experiment", "stop", "digits-v2", "--promote", "A")
            b_key = next(k for k, v in served.items() if v == {"2.0.0"})
            deadline = time.monotonic() + 15  # the gateway follows the stop and the alias move by its invalidation
            while True:
                r = http.post("/v2/models/digits/infer", json=DIGIT, headers={"Authorization": f"Bearer {b_key}"})
                assert r.status_code == 200, r.text
                if r.headers["x-modelmarket-route"] == "digits@1.0.0" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert r.headers["x-modelmarket-route"] == "digits@1.0.0"  # a B key now gets latest, A's version
        actions = [rec["action"] for rec in cli.json("audit", "list", "--limit", "1000")]
        assert "experiment.start" in actions and "experiment.stop" in actions
        assert cli.json("lab", "experiment", "list")[0]["promoted"] == "A"
    finally:
        stop_gateway(gateway)
