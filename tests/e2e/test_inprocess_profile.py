"""The ``inprocess`` profile: a runtime the operator lists in MODELMARKET_INPROCESS_RUNTIMES runs inside the
gateway (no runner process, no second hop), answers exactly what its runner would, and is billed the same way;
a batched copy answers every caller with its own rows."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import httpx
import numpy as np
import yaml
from tests.e2e.conftest import Cli, EnvCli, start_gateway, stop_gateway


def _batched_copy(packages: Path) -> Path:
    """The demo's digits package as `digits-batched`, declaring `batching`."""
    dest = packages / "digits-batched"
    shutil.copytree(packages / "digits", dest)
    manifest = yaml.safe_load((dest / "modelmarket.yaml").read_text())
    manifest["name"] = "digits-batched"
    manifest["batching"] = {"max_batch_size": 32, "max_delay_ms": 5}
    (dest / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dest


def _body(pixels: np.ndarray) -> dict[str, object]:
    return {
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(pixels.shape), "data": pixels.ravel().tolist()}]
    }


def test_an_operator_listed_runtime_runs_in_the_gateway_and_answers_as_its_runner_does(
    demo_cli: Cli, tmp_path: Path
) -> None:
    packages = tmp_path / "packages"
    shutil.copytree(demo_cli.home / "demo", packages)
    rng = np.random.default_rng(7)
    calls = [rng.uniform(0, 16, size=(int(rng.integers(1, 4)), 64)).astype(np.float32) for _ in range(24)]
    answers: dict[str, list[dict[str, object]]] = {}
    for profile, extra in (("process", {}), ("inprocess", {"MODELMARKET_INPROCESS_RUNTIMES": "onnx"})):
        cli = EnvCli(tmp_path / f"home-{profile}", extra_env=extra)
        cli.run("accounts", "create", "demo-provider", "--role", "provider")
        cli.run("publish", str(packages / "digits"))
        cli.run("publish", str(_batched_copy(packages) if profile == "process" else packages / "digits-batched"))
        key = cli.new_consumer("caller")
        gw = start_gateway(cli, models=("digits", "digits-batched"))
        try:
            with httpx.Client(base_url=gw.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
                got = [http.post("/v2/models/digits/infer", json=_body(x)) for x in calls]
                with ThreadPoolExecutor(8) as pool:  # concurrent: the batched copy joins them
                    batched = list(
                        pool.map(lambda x: http.post("/v2/models/digits-batched/infer", json=_body(x)), calls)
                    )
                usage = http.get("/api/usage").json()
            runners = json.loads(cli.run("runners", "--json").stdout)
        finally:
            stop_gateway(gw)
        assert all(r.status_code == 200 for r in got + batched), [r.text for r in got + batched if r.status_code != 200]
        answers[profile] = [r.json()["outputs"] for r in got]
        for joined, alone in zip((r.json()["outputs"] for r in batched), answers[profile], strict=True):
            # the same labels; the same probabilities up to FP32 rounding: onnxruntime's Gemm kernel sums in an
            # order that depends on the batch size (docs/serving.md), so the last bits may differ
            assert joined[0] == alone[0]
            assert np.allclose(joined[1]["data"], alone[1]["data"], rtol=1e-5, atol=1e-9)
        rows = sum(x.shape[0] for x in calls)
        assert usage["total_events"] == 2 * len(calls)
        assert Decimal(usage["total_amount"]) == 2 * rows * Decimal("0.0010")  # IU per image, per call
        profiles = {r["model"]: (r["profile"], r["processes"][0]["pid"]) for r in runners["runners"]}
        if profile == "inprocess":
            assert profiles["digits"] == ("inprocess", runners["gateway_pid"])
        else:
            assert profiles["digits"][0] == "process" and profiles["digits"][1] != runners["gateway_pid"]
    assert answers["inprocess"] == answers["process"]
