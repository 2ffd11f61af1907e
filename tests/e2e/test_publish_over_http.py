"""A provider publishes over HTTP, as a third party without a shell on the platform's machine would: the operator
makes its account and key with the CLI; the provider runs ``modelmarket publish DIR --url URL --key KEY`` from a
process of its own whose ``MODELMARKET_HOME`` is another, empty folder (no database there, none created), watches
the gate's stages print, and follows the submission with ``modelmarket reviews show`` and
``GET /api/packages/{id}``. With ``MODELMARKET_GATE_REVIEW=auto`` the model ends published and answers calls; with
a manual review it waits for an operator, who approves it on the platform."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import EnvCli, Gateway, start_gateway, stop_gateway
from tests.sandbox_packages import PROVIDER, echo_package

GATE_STAGES = ["validate", "store", "scan", "smoke_test", "benchmark", "bias", "review"]
EXAMPLE = {"name": "ones", "inputs": [{"name": "x", "shape": [1, 4], "data": [1, 1, 1, 1]}], "expect": {"y": [2] * 4}}
X = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
CATALOGUE_WAIT_S = 30.0


def _platform(tmp_path: Path, review: str) -> tuple[EnvCli, str, Gateway]:
    """The operator's side: a fresh home, the provider's account and key made with the CLI, the gateway."""
    operator = EnvCli(tmp_path / "platform", extra_env={"MODELMARKET_GATE_REVIEW": review})
    operator.run("accounts", "create", PROVIDER, "--role", "provider")
    key = str(operator.json("keys", "create", PROVIDER)["key"])
    return operator, key, start_gateway(operator, models=())


@pytest.fixture()
def provider(tmp_path: Path) -> Iterator[EnvCli]:
    """The provider's side: its own, empty MODELMARKET_HOME; it must still hold no database afterwards."""
    home = tmp_path / "provider-home"
    home.mkdir()
    yield EnvCli(home)
    assert sorted(p.name for p in home.iterdir()) == [], "publishing over HTTP touched the provider's home"


def _package(tmp_path: Path, name: str) -> Path:
    package = echo_package(tmp_path / name, name=name)
    manifest = package / "modelmarket.yaml"
    manifest.write_text(manifest.read_text() + "examples:\n" + _yaml_list([EXAMPLE]))
    return package


def _yaml_list(items: list[dict[str, Any]]) -> str:
    return "".join(f"- {json.dumps(item)}\n" for item in items)  # JSON is YAML: one flow mapping per item


def _printed_stages(stderr: str) -> list[tuple[str, str]]:
    """(stage, status) of every stage line the CLI printed."""
    out = []
    for line in stderr.splitlines():
        words = line.split()
        if line.startswith("  ") and len(words) >= 3 and words[0] in [*GATE_STAGES, "publish"]:
            out.append((words[0], words[1]))
    return out


def _wait_in_catalogue(url: str, name: str) -> dict[str, Any]:
    deadline = time.monotonic() + CATALOGUE_WAIT_S
    while True:
        r = httpx.get(f"{url}/api/models/{name}", timeout=10)
        if r.status_code == 200:
            doc: dict[str, Any] = r.json()
            return doc
        assert time.monotonic() < deadline, f"{name} not in the gateway's catalogue: {r.status_code} {r.text}"
        time.sleep(0.2)


def test_a_provider_publishes_over_http_and_the_auto_review_publishes_it(tmp_path: Path, provider: EnvCli) -> None:
    operator, key, gateway = _platform(tmp_path, "auto")
    try:
        package = _package(tmp_path, "remote-echo")
        proc = provider.run("publish", str(package), "--url", gateway.url, "--key", key, timeout_s=300)
        printed = _printed_stages(proc.stderr)
        assert printed == [(s, "passed") for s in ("validate", "store", "scan", "smoke_test", "benchmark")] + [
            ("bias", "skipped"),
            ("review", "approved"),
            ("publish", "passed"),
        ], proc.stderr
        assert "published: remote-echo 1.0.0" in proc.stdout, proc.stdout

        shown = provider.json("reviews", "show", "remote-echo@1.0.0", "--url", gateway.url, "--key", key)
        assert shown["status"] == "published" and shown["submitted_by"].startswith("account:")
        over_http = httpx.get(
            f"{gateway.url}/api/packages/{shown['id']}", headers={"Authorization": f"Bearer {key}"}, timeout=10
        )
        assert over_http.status_code == 200
        stages = over_http.json()["stages"]
        assert [s["stage"] for s in stages] == [*GATE_STAGES, "publish"]
        smoke = next(s for s in stages if s["stage"] == "smoke_test")
        assert smoke["report"]["examples"][0]["outputs"]["y"] == [2.0] * 4  # the example ran in the sandbox
        assert over_http.json()["version_id"]

        # published: in the catalogue, and it answers a consumer's call
        assert _wait_in_catalogue(gateway.url, "remote-echo")["latest"] == "1.0.0"
        consumer_key = operator.new_consumer("carol")
        call = httpx.post(
            f"{gateway.url}/v2/models/remote-echo/infer", json=X, headers={"Authorization": f"Bearer {consumer_key}"},
            timeout=60,
        )  # fmt: skip
        assert call.status_code == 200, call.text
        assert call.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]

        # the same bytes again: nothing runs again; other bytes under the same version: refused
        again = provider.run("publish", str(package), "--url", gateway.url, "--key", key, "--json")
        assert json.loads(again.stdout)["id"] == shown["id"]
        (package / "predict.py").write_text((package / "predict.py").read_text() + "\n# changed\n")
        changed = provider.run("publish", str(package), "--url", gateway.url, "--key", key, check=False)
        assert changed.returncode == 1 and "Traceback" not in changed.stderr
        assert "already published with different content" in changed.stderr, changed.stderr
    finally:
        stop_gateway(gateway)


def test_with_a_manual_review_the_provider_follows_it_until_an_operator_approves(
    tmp_path: Path, provider: EnvCli
) -> None:
    operator, key, gateway = _platform(tmp_path, "manual")
    try:
        package = _package(tmp_path, "reviewed-echo")
        proc = provider.run("publish", str(package), "--url", gateway.url, "--key", key, "--json", timeout_s=300)
        doc = json.loads(proc.stdout)
        assert doc["status"] == "pending_review", doc
        assert _printed_stages(proc.stderr)[-1] == ("review", "waiting"), proc.stderr

        shown = provider.run("reviews", "show", doc["id"], "--url", gateway.url, "--key", key)
        assert "pending_review" in shown.stdout and "review" in shown.stdout
        assert httpx.get(f"{gateway.url}/api/models/reviewed-echo", timeout=10).status_code == 404

        operator.run("reviews", "approve", "reviewed-echo@1.0.0", "--reason", "checked the card and the figures")
        after = provider.json("reviews", "show", doc["id"], "--url", gateway.url, "--key", key)
        assert after["status"] == "published" and after["decision_reason"] == "checked the card and the figures"
        assert [s["stage"] for s in after["stages"]][-2:] == ["review", "publish"]
        assert _wait_in_catalogue(gateway.url, "reviewed-echo")["latest"] == "1.0.0"

        # another key of the platform cannot see it, nor publish: a consumer's key is refused
        consumer_key = operator.new_consumer("dave")
        hidden = provider.run("reviews", "show", doc["id"], "--url", gateway.url, "--key", consumer_key, check=False)
        assert hidden.returncode == 1 and f"no submission {doc['id']!r}" in hidden.stderr
        refused = provider.run("publish", str(package), "--url", gateway.url, "--key", consumer_key, check=False)
        assert refused.returncode == 1 and "only a provider account publishes packages" in refused.stderr
    finally:
        stop_gateway(gateway)
