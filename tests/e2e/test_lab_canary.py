"""A canary that rolls itself back, through a running gateway (the Transmutation Lab's must-show): `digits` 2.0.0
is a provider-code model that fails on the images this test sends (`digits` 1.0.0 answers them), `lab canary`
shifts a share of the traffic to it while a load runs, the error-rate guardrail breaks, and the canary rolls back
by itself: exit status 1 with the reason, `latest` unchanged, every call served by 1.0.0 again, the rollback
audited."""

from __future__ import annotations

import json
import threading
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

KEYS = 30
BRIGHT = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [[200.0] * 64]}]}
_FAILS_ON_BRIGHT = """
import numpy as np


class Model:
    def load(self, path):
        pass

    def predict(self, inputs):
        pixels = np.asarray(inputs["pixels"])
        if float(pixels.max()) > 100:
            raise RuntimeError("this version cannot read bright images")
        n = pixels.shape[0]
        return {"label": np.zeros(n, dtype=np.int64), "probabilities": np.full((n, 10), 0.1, dtype=np.float32)}
"""


def _failing_version(demo_home: Path, dest: Path) -> Path:
    dest.mkdir()
    doc: dict[str, Any] = yaml.safe_load((demo_home / "demo" / "digits" / "modelmarket.yaml").read_text())
    (dest / "predict.py").write_text(_FAILS_ON_BRIGHT.lstrip())
    manifest = {k: doc[k] for k in ("name", "task", "modality", "provider", "license", "inputs", "outputs", "pricing")}
    manifest |= {"version": "2.0.0", "runtime": "python", "artifacts": [{"path": "predict.py"}]}
    manifest["card"] = {"summary": "A digits version that fails on bright images (a canary's test)."}
    (dest / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dest


def test_a_failing_canary_rolls_back_by_itself(digits_cli: Cli, demo_home: Path, tmp_path: Path) -> None:
    cli = digits_cli
    admin = bootstrap(Settings(home=cli.home))
    try:
        admin.registry.publish(_failing_version(demo_home, tmp_path / "digits-2"), actor="tests")
        admin.registry.move_alias("digits", "latest", "1.0.0", actor="tests")
        keys = []
        for i in range(KEYS):
            admin.accounts.create(f"load-{i}", "consumer", actor="tests")
            keys.append(admin.accounts.issue_key(f"load-{i}", actor="tests").secret)
    finally:
        admin.close()
    gateway = start_gateway(cli, models=("digits",))
    stop = threading.Event()
    outcomes: list[tuple[int, str]] = []

    def load() -> None:
        with httpx.Client(base_url=gateway.url, timeout=COLD_START_S) as http:
            while not stop.is_set():
                for key in keys:
                    r = http.post("/v2/models/digits/infer", json=BRIGHT, headers={"Authorization": f"Bearer {key}"})
                    outcomes.append((r.status_code, r.headers.get("x-modelmarket-route", "")))
                    if stop.is_set():
                        return

    worker = threading.Thread(target=load, name="canary load")
    worker.start()
    try:
        proc = cli.run(
            "lab", "canary", "digits", "--to", "2.0.0", "--steps", "30,60,100", "--max-error-rate", "0.1",
            "--step-seconds", "3", "--min-calls", "5", "--max-wait-seconds", "90", "--json",
            check=False, timeout_s=180,
        )  # fmt: skip
        assert proc.returncode == 1, proc.stdout + proc.stderr
        result = json.loads(proc.stdout)
        assert result["outcome"] == "rolled back"
        assert "error rate" in result["reason"] and "is above 0.1" in result["reason"]
        assert result["steps"][0]["percent"] == 30 and result["steps"][0]["verdict"] == "broken"
        assert any(status != 200 for status, _ in outcomes)  # the canary's failures reached some callers

        seen = len(outcomes)
        deadline = time.monotonic() + 20  # the gateway follows the stop within its invalidation bound
        while time.monotonic() < deadline:
            time.sleep(1)
            recent = outcomes[seen:]
            if len(recent) >= KEYS and all(s == 200 and route == "digits@1.0.0" for s, route in recent[-KEYS:]):
                break
        recent = outcomes[seen:]
        assert recent[-KEYS:] and all(s == 200 and route == "digits@1.0.0" for s, route in recent[-KEYS:])
    finally:
        stop.set()
        worker.join(timeout=60)
        stop_gateway(gateway)
    assert cli.json("models", "show", "digits")["version"] == "1.0.0"  # latest never moved
    rollbacks = [r for r in cli.json("audit", "list", "--limit", "1000") if r["action"] == "canary.rollback"]
    assert len(rollbacks) == 1 and "error rate" in rollbacks[0]["payload"]["reason"]
