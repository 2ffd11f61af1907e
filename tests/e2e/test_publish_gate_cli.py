"""The publish gate from the command line with a manual review: stages printed as they end, nothing in the
catalogue until an operator approves, a provider cannot approve its own model, a rejection keeps it out, a failed
stage exits 1 naming the stage, and every decision is in the audit log."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tests.e2e.conftest import EnvCli
from tests.sandbox_packages import PROVIDER, echo_package

pytestmark = pytest.mark.timeout(300)


def _examples(package: Path, expect: list[int]) -> Path:
    path = package / "modelmarket.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["examples"] = [
        {"name": "ones", "inputs": [{"name": "x", "shape": [1, 4], "data": [1, 1, 1, 1]}], "expect": {"y": expect}}
    ]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return package


def test_manual_review_from_the_cli(tmp_path: Path) -> None:
    cli = EnvCli(tmp_path / "home", extra_env={"MODELMARKET_GATE_REVIEW": "manual"})
    cli.run("accounts", "create", PROVIDER, "--role", "provider")
    cli.run("accounts", "create", "ops", "--role", "operator")

    published = cli.run("publish", str(_examples(echo_package(tmp_path / "echo"), [2, 2, 2, 2])))
    for stage in ("validate", "store", "scan", "smoke_test", "benchmark", "bias", "review"):
        assert f"  {stage} " in published.stderr, published.stderr
    assert published.stdout.startswith("pending review: py-echo@1.0.0")
    assert cli.json("models", "list") == [] or all(m["name"] != "py-echo" for m in cli.json("models", "list"))
    pending = cli.json("reviews", "list", "--status", "pending_review")
    assert [s["ref"] for s in pending] == ["py-echo@1.0.0"]

    refused = cli.run("reviews", "approve", "py-echo@1.0.0", "--reason", "mine", "--by", PROVIDER, check=False)
    assert refused.returncode == 1 and "own model" in refused.stderr

    approved = cli.run("reviews", "approve", "py-echo@1.0.0", "--reason", "examples hold", "--by", "ops")
    assert approved.stdout.startswith("published: py-echo 1.0.0"), approved.stdout
    shown = cli.json("reviews", "show", "py-echo@1.0.0")
    assert shown["status"] == "published" and shown["decided_by"].startswith("ops (acc_")
    assert [s["stage"] for s in shown["stages"]][-2:] == ["review", "publish"]
    model = next(m for m in cli.json("models", "list") if m["name"] == "py-echo")
    assert model["benchmark"]["calls"] >= 1 and model["benchmark"]["p50_ms"] > 0

    _examples(echo_package(tmp_path / "echo2", version="1.1.0"), [2, 2, 2, 2])
    cli.run("publish", str(tmp_path / "echo2"))
    rejected = cli.run("reviews", "reject", "py-echo@1.1.0", "--reason", "not needed", "--by", "ops")
    assert rejected.stdout.startswith("rejected: py-echo@1.1.0")
    assert cli.json("models", "show", "py-echo")["version"] == "1.0.0"

    wrong = cli.run(
        "publish", str(_examples(echo_package(tmp_path / "echo3", version="1.2.0"), [5, 5, 5, 5])), check=False
    )
    assert wrong.returncode == 1
    assert "failed: py-echo@1.2.0" in wrong.stdout and "smoke_test" in wrong.stdout

    actions = [r["action"] for r in cli.json("audit", "list")]
    for action in ("submission.pending_review", "submission.approved", "submission.rejected", "submission.failed"):
        assert action in actions
    assert "ok" in cli.run("audit", "verify").stdout.lower()
