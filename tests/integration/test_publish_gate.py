"""The publish gate, stage by stage, with real sandboxed runners: each stage's pass and fail path, what is stored,
what reaches the catalogue (only an approved version), and who may decide a review."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.sandbox_packages import PROVIDER, echo_package, write_package

from modelmarket.bootstrap import Platform, bootstrap
from modelmarket.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from modelmarket.governance.model import StageRecord
from modelmarket.governance.policy import CardPolicy, GatePolicy
from modelmarket.settings import Settings

pytestmark = pytest.mark.timeout(300)

EXAMPLE = {"name": "ones", "inputs": [{"name": "x", "shape": [1, 4], "data": [1, 1, 1, 1]}]}


@pytest.fixture()
def platform(tmp_path: Path) -> Platform:
    plat = bootstrap(Settings(home=tmp_path / "home", runner_start_timeout_s=60))
    plat.accounts.create(PROVIDER, "provider")
    return plat


def _edit(package: Path, **changes: Any) -> Path:
    path = package / "modelmarket.yaml"
    doc = yaml.safe_load(path.read_text())
    doc.update(changes)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return package


def _stages(sub: Any) -> dict[str, str]:
    return {s.stage: s.status for s in sub.stages}


def _published(platform: Platform) -> list[str]:
    return platform.registry.catalogue().names()


def test_a_package_passes_every_stage_and_waits_for_review_then_is_published(
    platform: Platform, tmp_path: Path
) -> None:
    package = _edit(echo_package(tmp_path / "echo"), examples=[{**EXAMPLE, "expect": {"y": [2, 2, 2, 2]}}])
    seen: list[tuple[str, str | None]] = []

    def progress(stage: str, record: StageRecord | None) -> None:
        seen.append((stage, None if record is None else record.status))

    sub = platform.gate.submit(package, actor="cli", progress=progress)
    assert sub.status == "running" and _stages(sub) == {"validate": "passed", "store": "passed"}
    sub = platform.gate.run(sub.id, progress)
    assert sub.status == "pending_review"
    assert _stages(sub) == {
        "validate": "passed",
        "store": "passed",
        "scan": "passed",
        "smoke_test": "passed",
        "benchmark": "passed",
        "bias": "skipped",
        "review": "waiting",
    }
    assert ("smoke_test", None) in seen and ("benchmark", "passed") in seen
    assert _published(platform) == []  # waiting for review: not in the catalogue
    smoke = sub.stage("smoke_test")
    assert smoke is not None and smoke.report["profile"] == "bwrap"  # provider code runs sandboxed
    assert smoke.report["examples"][0]["outputs"]["y"] == [2.0, 2.0, 2.0, 2.0]
    bench = sub.stage("benchmark")
    assert bench is not None and bench.report["calls"] >= 1 and bench.report["p95_ms"] >= bench.report["p50_ms"] > 0
    assert all(s.duration_ms >= 0 and s.started_at for s in sub.stages)

    done = platform.gate.approve("py-echo@1.0.0", actor="cli", reason="looks right")
    assert done.status == "published" and done.version_id is not None
    assert _stages(done)["review"] == "approved" and _stages(done)["publish"] == "passed"
    version = platform.registry.catalogue().resolve("py-echo")
    assert version.id == done.version_id
    assert version.evaluation is not None and version.evaluation["benchmark"]["p50_ms"] == bench.report["p50_ms"]
    actions = [r.action for r in platform.audit.list(limit=100)]
    for action in ("submission.created", "submission.pending_review", "submission.approved", "model.published"):
        assert action in actions


def test_a_refused_manifest_records_nothing(platform: Platform, tmp_path: Path) -> None:
    package = _edit(echo_package(tmp_path / "echo"), inputs="not a list")
    with pytest.raises(InvalidInput, match="inputs"):
        platform.gate.submit(package, actor="cli")
    assert platform.gate.list() == []


def test_the_policy_can_require_card_fields(platform: Platform, tmp_path: Path) -> None:
    platform.gate.policy = GatePolicy(card=CardPolicy(required=("limitations",)))
    with pytest.raises(InvalidInput, match=r"card\.limitations"):
        platform.gate.submit(echo_package(tmp_path / "echo"), actor="cli")
    assert platform.gate.list() == []


def test_a_store_failure_records_no_submission(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(platform.blobs, "put_file", full)
    with pytest.raises(OSError):
        platform.gate.submit(echo_package(tmp_path / "echo"), actor="cli")
    assert platform.gate.list() == []


def test_a_file_type_outside_the_allow_list_fails_the_scan(platform: Platform, tmp_path: Path) -> None:
    package = echo_package(tmp_path / "echo")
    (package / "payload.exe").write_bytes(b"MZ\x90\x00")
    doc = yaml.safe_load((package / "modelmarket.yaml").read_text())
    _edit(package, artifacts=[*doc["artifacts"], {"path": "payload.exe"}])
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    assert sub.status == "failed" and _stages(sub)["scan"] == "failed"
    assert "payload.exe" in sub.stage("scan").summary  # type: ignore[union-attr]
    assert "smoke_test" not in _stages(sub) and _published(platform) == []


class _System:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


class _Connect:
    """Unpickling opens an SQLite database at ``path``: it creates the file. The scanner calls ``sqlite3.connect``
    only suspicious, not dangerous, so the scan lets it through: the sandbox must contain it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        import sqlite3

        return (sqlite3.connect, (self.path,))


def _pickle_package(dest: Path, payload: object) -> Path:
    dest.mkdir(parents=True)
    (dest / "model.pkl").write_bytes(pickle.dumps(payload))
    manifest = {
        "name": "pickled",
        "version": "1.0.0",
        "task": "tabular-classification",
        "modality": "tabular",
        "runtime": "sklearn",
        "provider": PROVIDER,
        "license": "MIT",
        "artifacts": [{"path": "model.pkl"}],
        "parameters": {"model_file": "model.pkl"},
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
        "pricing": {"unit": "request", "price_per_iu": "0.001", "currency": "EUR"},
        "card": {"summary": "A pickle."},
    }
    (dest / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return dest


def test_a_pickle_that_runs_a_command_is_blocked_by_the_scan(platform: Platform, tmp_path: Path) -> None:
    platform.gate.policy = GatePolicy(bias=platform.gate.policy.bias.model_copy(update={"required_for": ()}))
    marker = tmp_path / "marker-system"
    package = _pickle_package(tmp_path / "pkg", _System(f"touch {marker}"))
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    assert sub.status == "failed" and _stages(sub)["scan"] == "failed"
    scan = sub.stage("scan")
    assert scan is not None and any("system" in name for name in scan.report["pickles"][0]["dangerous"])
    assert not marker.exists() and _published(platform) == []


def test_a_pickle_the_scanner_misses_is_contained_by_the_sandbox(platform: Platform, tmp_path: Path) -> None:
    platform.gate.policy = GatePolicy(bias=platform.gate.policy.bias.model_copy(update={"required_for": ()}))
    control = tmp_path / "marker-control"
    # The payload works: unpickled outside any sandbox it creates its file.
    subprocess.run(
        [sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"],
        input=pickle.dumps(_Connect(str(control))),
        check=True,
    )
    assert control.exists()
    marker = tmp_path / "marker-sandboxed"
    package = _pickle_package(tmp_path / "pkg", _Connect(str(marker)))
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    scan = sub.stage("scan")
    assert scan is not None and scan.status == "passed"  # the scan is only a signal...
    assert any("connect" in name for name in scan.report["pickles"][0]["suspicious"])
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"  # ...the sandbox is the gate
    assert not marker.exists() and _published(platform) == []


def test_a_wrong_expected_output_fails_the_smoke_test(platform: Platform, tmp_path: Path) -> None:
    package = _edit(echo_package(tmp_path / "echo"), examples=[{**EXAMPLE, "expect": {"y": [3, 3, 3, 3]}}])
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"
    smoke = sub.stage("smoke_test")
    assert smoke is not None and "value [0] is 2.0, expected 3" in smoke.summary
    assert "benchmark" not in _stages(sub) and _published(platform) == []


def test_a_model_that_fails_to_load_fails_the_smoke_test(platform: Platform, tmp_path: Path) -> None:
    source = """
    class Model:
        def load(self, path):
            raise RuntimeError("weights missing")

        def predict(self, inputs):
            return {"y": inputs["x"]}
    """
    package = write_package(tmp_path / "broken", "broken", source, "Never loads.")
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    assert sub.status == "failed" and _stages(sub)["smoke_test"] == "failed"
    assert "did not start" in sub.stage("smoke_test").summary  # type: ignore[union-attr]


def test_a_model_that_breaks_under_repeated_calls_fails_the_benchmark(platform: Platform, tmp_path: Path) -> None:
    source = """
    class Model:
        def load(self, path):
            self.calls = 0

        def predict(self, inputs):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("only once")
            return {"y": inputs["x"] * 2}
    """
    package = _edit(write_package(tmp_path / "once", "once", source, "Answers once."), examples=[EXAMPLE])
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    assert _stages(sub)["smoke_test"] == "passed"
    assert sub.status == "failed" and _stages(sub)["benchmark"] == "failed"
    assert "only once" in sub.stage("benchmark").summary  # type: ignore[union-attr]


def test_rejected_and_self_approval(platform: Platform, tmp_path: Path) -> None:
    consumer = platform.accounts.create("shop", "consumer")
    operator = platform.accounts.create("ops", "operator")
    sub = platform.gate.run(platform.gate.submit(echo_package(tmp_path / "echo"), actor="cli").id)
    assert sub.status == "pending_review"
    with pytest.raises(PermissionDenied, match="own model"):
        platform.gate.approve(sub.id, actor="api", reason="mine", by_account_id=sub.provider_account_id)
    with pytest.raises(PermissionDenied, match="operator"):
        platform.gate.approve(sub.id, actor="api", reason="ok", by_account_id=consumer.id)
    with pytest.raises(InvalidInput, match="reason"):
        platform.gate.reject(sub.id, actor="cli", reason="  ")
    done = platform.gate.reject(sub.id, actor="api", reason="card is thin", by_account_id=operator.id)
    assert done.status == "rejected" and done.decided_by == f"ops ({operator.id})" and _published(platform) == []
    with pytest.raises(Conflict, match="rejected"):
        platform.gate.approve(sub.id, actor="cli", reason="changed my mind")
    # a rejected submission frees its name@version: the provider may submit again
    again = platform.gate.submit(echo_package(tmp_path / "echo2"), actor="cli")
    assert again.id != sub.id and again.status == "running"


def test_auto_review_publishes_and_the_same_bytes_again_are_a_no_op(platform: Platform, tmp_path: Path) -> None:
    platform.gate.policy = platform.gate.policy.with_review("auto")
    package = echo_package(tmp_path / "echo")
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    assert sub.status == "published" and _stages(sub)["review"] == "approved"
    assert _published(platform) == ["py-echo"]
    again = platform.gate.submit(package, actor="cli")
    assert again.id == sub.id and again.status == "published"


def test_publish_fails_when_the_version_was_published_meanwhile_with_other_bytes(
    platform: Platform, tmp_path: Path
) -> None:
    sub = platform.gate.run(platform.gate.submit(echo_package(tmp_path / "echo"), actor="cli").id)
    other = echo_package(tmp_path / "other")
    (other / "predict.py").write_text((other / "predict.py").read_text() + "\n# changed\n")
    platform.registry.publish(other)  # the platform's own direct path, bypassing the gate
    done = platform.gate.approve(sub.id, actor="cli", reason="ok")
    assert done.status == "failed" and _stages(done)["publish"] == "failed"
    assert "different content" in done.stage("publish").summary  # type: ignore[union-attr]


def test_a_submission_is_shown_to_its_provider_only(platform: Platform, tmp_path: Path) -> None:
    other = platform.accounts.create("rival", "provider")
    sub = platform.gate.submit(echo_package(tmp_path / "echo"), actor="cli")
    assert platform.gate.show(sub.id, account_id=sub.provider_account_id).id == sub.id
    with pytest.raises(NotFound):
        platform.gate.show(sub.id, account_id=other.id)
    with pytest.raises(Conflict, match="under way"):
        changed = echo_package(tmp_path / "echo2")
        (changed / "predict.py").write_text((changed / "predict.py").read_text() + "\n# other\n")
        platform.gate.submit(changed, actor="cli")
    assert json.loads(json.dumps(sub.to_json()))["stages"][0]["stage"] == "validate"


def test_a_protocol_0_pickle_is_scanned_too(platform: Platform, tmp_path: Path) -> None:
    platform.gate.policy = GatePolicy(bias=platform.gate.policy.bias.model_copy(update={"required_for": ()}))
    package = _pickle_package(tmp_path / "pkg", None)
    (package / "model.pkl").write_bytes(pickle.dumps(_System("true"), protocol=0))  # no protocol header
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    assert sub.status == "failed" and _stages(sub)["scan"] == "failed"


def test_an_unexpected_error_ends_the_submission_and_frees_its_version(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import modelmarket.governance.gate as gate_module

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ValueError("a bug in a stage")

    monkeypatch.setattr(gate_module, "benchmark", broken)
    package = _edit(echo_package(tmp_path / "echo"), examples=[EXAMPLE])
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    assert sub.status == "failed" and _stages(sub)["error"] == "failed"
    assert "ValueError: a bug in a stage" in sub.stage("error").summary  # type: ignore[union-attr]
    monkeypatch.undo()
    again = platform.gate.run(platform.gate.submit(package, actor="cli").id)  # the version is free again
    assert again.status == "pending_review"


def test_an_operator_can_stop_a_running_submission(platform: Platform, tmp_path: Path) -> None:
    sub = platform.gate.submit(echo_package(tmp_path / "echo"), actor="cli")
    stopped = platform.gate.reject(sub.id, actor="cli", reason="stuck")
    assert stopped.status == "rejected"
    after = platform.gate.run(sub.id)  # a run that comes later does nothing
    assert after.status == "rejected" and "scan" not in _stages(after)


def test_a_rejection_landing_during_an_approval_is_not_published(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = platform.gate.run(platform.gate.submit(echo_package(tmp_path / "echo"), actor="cli").id)
    original = platform.gate._evaluation_of

    def reject_meanwhile(submission: Any) -> dict[str, Any]:
        platform.gate.reject(sub.id, actor="other-operator", reason="no")
        return original(submission)

    monkeypatch.setattr(platform.gate, "_evaluation_of", reject_meanwhile)
    with pytest.raises(Conflict, match="decided meanwhile"):
        platform.gate.approve(sub.id, actor="cli", reason="yes")
    final = platform.gate.show(sub.id)
    assert final.status == "rejected" and "publish" not in _stages(final) and _published(platform) == []


def test_a_gate_run_is_bounded_in_time(platform: Platform, tmp_path: Path) -> None:
    source = """
    import time


    class Model:
        def load(self, path):
            pass

        def predict(self, inputs):
            time.sleep(0.3)
            return {"y": inputs["x"] * 2}
    """
    package = _edit(write_package(tmp_path / "slow", "slow", source, "Slow."), examples=[EXAMPLE] * 1)
    platform.gate.policy = platform.gate.policy.model_copy(update={"max_run_s": 0.5})
    sub = platform.gate.run(platform.gate.submit(package, actor="cli").id)
    assert sub.status == "failed"
    failed = next(s for s in sub.stages if s.status == "failed")
    assert "longer than its limit of 0.5s" in failed.summary


def test_the_bias_stage_passes_the_fair_credit_model_and_blocks_the_biased_one_with_its_figures(
    platform: Platform, tmp_path: Path
) -> None:
    from modelmarket.demo._credit import build_credit_approval, build_credit_approval_biased

    platform.accounts.create("demo-provider", "provider")
    fair = build_credit_approval(tmp_path / "credit-approval", lambda _: None)
    biased = build_credit_approval_biased(tmp_path / "credit-approval-biased", lambda _: None)
    passed = platform.gate.run(platform.gate.submit(fair, actor="cli").id)
    assert passed.status == "pending_review" and _stages(passed)["bias"] == "passed"
    blocked = platform.gate.run(platform.gate.submit(biased, actor="cli").id)
    assert blocked.status == "failed" and _stages(blocked)["bias"] == "failed"
    bias = blocked.stage("bias")
    assert bias is not None and bias.summary.startswith("blocked: demographic_parity_difference for sex is ")
    sex = bias.report["figures"]["sensitive_features"]["sex"]
    assert sex["demographic_parity_difference"] > 0.1 and sex["equalized_odds_difference"] > 0.1
    assert any("equalized_odds_difference for sex" in failure for failure in bias.report["failures"])
    assert _published(platform) == []  # neither is published: one waits for review, one is blocked
