"""Resonance Nodes on a real gateway: the demo's ``voice-sentiment`` (speech-to-text -> sentiment) answers with
both steps' outputs, each step's usage event carries the pipeline call's id and the call bills both steps plus
the pipeline's fee; when a step fails, the call fails naming the step and no step is billed."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import httpx
import orjson
import yaml
from tests.e2e.conftest import Cli, Gateway, start_gateway, stop_gateway

from engines import store_rows


def _wav_request(wav: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "audio", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4 + len(wav)}}
            ]
        }
    )
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return head + struct.pack("<I", len(wav)) + wav, headers


def _events(cli: Cli, account: str) -> list[tuple[str, str, str | None, int]]:
    cli.run("meter", "--once")
    rows = store_rows(
        cli.home,
        "SELECT e.event_id, e.model_name, e.pipeline_call_id, e.quantity_base FROM usage_events e "
        "JOIN accounts a ON a.id = e.account_id WHERE a.name = :account ORDER BY e.model_name",
        account=account,
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def test_voice_sentiment_answers_and_bills_each_step_linked_to_the_call(gateway: Gateway) -> None:
    cli = gateway.cli
    key = cli.new_consumer("pipeline-user")
    body, headers = _wav_request((cli.home / "demo" / "examples" / "hello.wav").read_bytes())
    answer = httpx.post(
        f"{gateway.url}/v2/models/voice-sentiment/infer",
        content=body,
        headers={**headers, "Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o["data"] for o in answer.json()["outputs"]}
    assert outputs["text"] == ["hello world"]
    assert outputs["label"] in (["neutral"], ["positive"])
    assert len(outputs["scores"]) == 4
    call_id = answer.headers["x-request-id"]
    events = _events(cli, "pipeline-user")
    by_model = {model: (event_id, parent, quantity) for event_id, model, parent, quantity in events}
    assert set(by_model) == {"speech-to-text", "sentiment", "voice-sentiment"}
    assert all(parent == call_id for _, parent, _ in by_model.values())  # every step linked to the call
    assert by_model["voice-sentiment"][0] == call_id  # the pipeline's own fee is the call's event
    assert by_model["voice-sentiment"][2] == 1  # one request
    assert by_model["speech-to-text"][2] >= 1  # seconds of audio
    assert by_model["sentiment"][2] == 2  # "hello world": two tokens
    # every event the call was billed with is named on the answer (each has its own proof)
    assert sorted(answer.headers["x-modelmarket-usage-events"].split(",")) == sorted(e for e, _, _ in by_model.values())


def test_a_failing_step_fails_the_call_naming_it_and_bills_nothing(demo_cli: Cli, tmp_path: Path) -> None:
    cli = Cli(tmp_path / "home")
    shutil.copytree(demo_cli.home / "demo", tmp_path / "packages")
    cli.run("accounts", "create", "demo-provider", "--role", "provider")
    cli.run("publish", str(tmp_path / "packages" / "speech-to-text"))
    # A sentiment model served by a provider nobody listens for: the second step cannot be reached.
    cli.run("providers", "add", "gone", "--base-url", "http://127.0.0.1:9", "--protocol", "oip")
    broken = tmp_path / "packages" / "broken-sentiment"
    broken.mkdir()
    manifest = yaml.safe_load((tmp_path / "packages" / "sentiment" / "modelmarket.yaml").read_text())
    manifest.update(
        name="broken-sentiment",
        runtime="upstream-oip",
        parameters={"provider": "gone", "model": "sentiment"},
        artifacts=[{"path": "README.md"}],
    )
    for field in ("lineage", "examples"):  # they name package files this one does not have
        manifest.pop(field, None)
    (broken / "modelmarket.yaml").write_text(yaml.safe_dump(manifest))
    (broken / "README.md").write_text("a sentiment model behind an unreachable provider\n")
    cli.run("publish", str(broken))
    pipeline = yaml.safe_load((tmp_path / "packages" / "voice-sentiment" / "modelmarket.yaml").read_text())
    pipeline["steps"][1]["model"] = "broken-sentiment"
    (tmp_path / "packages" / "voice-sentiment" / "modelmarket.yaml").write_text(yaml.safe_dump(pipeline))
    cli.run("publish", str(tmp_path / "packages" / "voice-sentiment"))
    key = cli.new_consumer("unlucky")
    gateway = start_gateway(cli, models=("speech-to-text",))
    try:
        body, headers = _wav_request((demo_cli.home / "demo" / "examples" / "hello.wav").read_bytes())
        answer = httpx.post(
            f"{gateway.url}/v2/models/voice-sentiment/infer",
            content=body,
            headers={**headers, "Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert answer.status_code >= 500, answer.text
        assert "pipeline step 'classify' (broken-sentiment)" in answer.json()["error"]
        # The first step ran and succeeded (its model answers on its own), yet nothing was billed.
        direct = httpx.post(
            f"{gateway.url}/v2/models/speech-to-text/infer",
            content=body,
            headers={**headers, "Authorization": f"Bearer {key}"},
            timeout=120,
        )
        assert direct.status_code == 200
        events = _events(cli, "unlucky")
        assert [model for _, model, _, _ in events] == ["speech-to-text"]  # only the direct call
        assert events[0][2] is None
    finally:
        stop_gateway(gateway)
