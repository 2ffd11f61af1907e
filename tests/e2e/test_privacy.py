"""Privacy end to end: an e-mail address, a phone number and a card number sent to a model never reach it, nor
any file of the platform.

One platform for the module, with a real gateway and real runners:

- ``py-echo-text`` (runtime ``python``, provider code under bubblewrap) answers the text it received, and its
  manifest says ``redact: [EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD]``;
- ``py-echo-plain``, the same model without ``redact:``, for the per-key policy;
- ``echo-chain``, a pipeline without ``redact:`` of ``py-echo-plain`` then ``py-echo-text`` (fed the first step's
  output): the second step's model gets its text redacted by its own policy;
- ``chat-up`` (runtime ``upstream-openai``, with ``redact:``): its provider is a small OpenAI-compatible server
  started here on 127.0.0.1, standing in for a third-party provider; it answers what it received and keeps
  every request body it was sent, so the test can see exactly what left the platform.

The last test stops the gateway and reads every file under the platform's home (databases and their WAL files,
the event log, blobs, the gateway's, the metering child's and every runner's log): none holds any of the three.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from tests.e2e.conftest import EnvCli, Gateway, start_gateway, stop_gateway
from tests.sandbox_packages import PROVIDER

import engines
from engines import log_payloads, store_dump
from modelmarket.bootstrap import bootstrap
from modelmarket.registry.manifest import MANIFEST_NAME
from modelmarket.settings import Settings

EMAIL = "jane.doe@example.com"
PHONE = "+1 212-555-0187"
CARD = "4111 1111 1111 1111"
SECRETS = (EMAIL, PHONE, CARD)
MESSAGE = f"Hi, I am Jane ({EMAIL}), call me on {PHONE}; my card is {CARD}. Thanks!"
REDACTED = "Hi, I am Jane (<EMAIL_ADDRESS>), call me on <PHONE_NUMBER>; my card is <CREDIT_CARD>. Thanks!"
REDACT = ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD"]
UPSTREAM = "echo-provider"
CACHE_REFRESH_S = 0.5
WITHIN_S = 30

_ECHO_TEXT = """
class Model:
    def load(self, path):
        self.path = path

    def predict(self, inputs):
        return {"text": inputs["text"]}
"""


def echo_text_package(root: Path, name: str, redact: list[str] | None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "predict.py").write_text(_ECHO_TEXT.lstrip())
    manifest: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "task": "text-generation",
        "modality": "text",
        "runtime": "python",
        "provider": PROVIDER,
        "license": "MIT",
        "artifacts": [{"path": "predict.py"}],
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "pricing": {"unit": "request", "price_per_iu": "0.0010", "currency": "EUR"},
        "card": {"summary": "Answers the text it received."},
    }
    if redact is not None:
        manifest["redact"] = redact
    (folder / MANIFEST_NAME).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def _pipeline_package(root: Path, name: str) -> Path:
    """A pipeline with no policy of its own: the plain echo, then the echo with ``redact:`` fed its output."""
    folder = root / name
    folder.mkdir(parents=True)
    manifest: dict[str, Any] = {
        "kind": "pipeline",
        "name": name,
        "version": "1.0.0",
        "task": "text-generation",
        "modality": "text",
        "provider": PROVIDER,
        "license": "MIT",
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "first", "datatype": "BYTES", "shape": [-1]},
            {"name": "second", "datatype": "BYTES", "shape": [-1]},
        ],
        "steps": [
            {"id": "plain", "model": "py-echo-plain", "inputs": {"text": "input.text"}},
            {"id": "guarded", "model": "py-echo-text", "inputs": {"text": "plain.text"}},
        ],
        "outputs_from": {"first": "plain.text", "second": "guarded.text"},
        "pricing": {"unit": "request", "price_per_iu": "0.0010", "currency": "EUR"},
        "card": {"summary": "Echoes the text twice: as sent, then through a model that has it redacted."},
    }
    (folder / MANIFEST_NAME).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def _upstream_package(root: Path, name: str, redact: list[str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(f"# {name}\n\nA chat model of provider {UPSTREAM}.\n")
    manifest = {
        "name": name,
        "version": "1.0.0",
        "task": "text-generation",
        "modality": "text",
        "runtime": "upstream-openai",
        "provider": PROVIDER,
        "license": "Apache-2.0",
        "artifacts": [{"path": "README.md"}],
        "parameters": {"provider": UPSTREAM, "model": "echo-chat"},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "text", "datatype": "BYTES", "shape": [1]}],
        "pricing": {"unit": "tokens_1k", "price_per_iu": "0.0005", "currency": "EUR"},
        "card": {"summary": "A chat model served by a third-party provider."},
        "redact": redact,
    }
    (folder / MANIFEST_NAME).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


class _EchoHandler(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat server that answers the text of the messages it received, and keeps each body."""

    protocol_version = "HTTP/1.1"
    server: _EchoServer

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.received.append(raw)
        doc = json.loads(raw)
        said = " | ".join(str(m.get("content")) for m in doc.get("messages", []))
        answer = {
            "id": "chatcmpl-echo",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": doc.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": said}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 20, "total_tokens": 40},
        }
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _EchoHandler)
        self.received: list[bytes] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@dataclass
class Platform:
    cli: EnvCli
    gateway: Gateway
    upstream: _EchoServer
    keys: dict[str, tuple[str, str]]
    """Consumer name -> (API key, key id)."""

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who][0]}"}

    def outputs(self, model: str, who: str, text: str = MESSAGE) -> dict[str, str]:
        body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
        r = httpx.post(f"{self.gateway.url}/v2/models/{model}/infer", json=body, headers=self.auth(who), timeout=60)
        assert r.status_code == 200, r.text
        return {o["name"]: str(o["data"][0]) for o in r.json()["outputs"]}

    def echo(self, model: str, who: str, text: str = MESSAGE) -> str:
        return self.outputs(model, who, text)["text"]


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    base = tmp_path_factory.mktemp("privacy")
    cli = EnvCli(base / "home", extra_env={"MODELMARKET_CACHE_REFRESH_S": str(CACHE_REFRESH_S)})
    admin = bootstrap(Settings(home=cli.home))
    upstream = _EchoServer()
    threading.Thread(target=upstream.serve_forever, name="echo provider", daemon=True).start()
    gateway: Gateway | None = None
    try:
        admin.accounts.create(PROVIDER, "provider", actor="privacy-tests")
        admin.registry.publish(echo_text_package(base, "py-echo-text", REDACT), actor="privacy-tests")
        admin.registry.publish(echo_text_package(base, "py-echo-plain", None), actor="privacy-tests")
        admin.registry.publish(_pipeline_package(base, "echo-chain"), actor="privacy-tests")
        admin.routing.add_provider(UPSTREAM, upstream.base_url, actor="privacy-tests")
        admin.registry.publish(_upstream_package(base, "chat-up", REDACT), actor="privacy-tests")
        keys = {}
        for who in ("guarded", "open", "kept"):
            admin.accounts.create(who, "consumer", actor="privacy-tests")
            issued = admin.accounts.issue_key(who, actor="privacy-tests")
            keys[who] = (issued.secret, issued.key_id)
        gateway = start_gateway(cli, models=("py-echo-text", "py-echo-plain"))
        yield Platform(cli, gateway, upstream, keys)
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        upstream.shutdown()
        upstream.server_close()
        admin.close()


def _eventually(check: Any, what: str) -> Any:
    deadline = time.monotonic() + WITHIN_S
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what} not within {WITHIN_S} s"
        time.sleep(0.2)


def test_the_models_policy_keeps_the_three_from_its_runner(platform: Platform) -> None:
    answer = platform.echo("py-echo-text", "open")
    assert answer == REDACTED  # the model answers exactly what it received
    assert not [s for s in SECRETS if s in answer]


def test_without_a_policy_the_same_model_gets_the_text_as_sent(platform: Platform) -> None:
    """The control: the echo model does not redact anything itself."""
    assert platform.echo("py-echo-plain", "open") == MESSAGE


def test_a_keys_policy_applies_to_a_model_without_one(platform: Platform) -> None:
    key_id = platform.keys["guarded"][1]
    out = platform.cli.run("privacy", "key", key_id, "--redact", ",".join(REDACT), "--account", "guarded")
    assert "EMAIL_ADDRESS" in out.stdout
    shown = json.loads(platform.cli.run("privacy", "show", "--json").stdout)
    assert [(k["key_id"], k["redact"]) for k in shown["keys"]] == [(key_id, sorted(REDACT))]
    _eventually(lambda: platform.echo("py-echo-plain", "guarded") == REDACTED, "the key's policy")
    assert platform.echo("py-echo-plain", "open") == MESSAGE  # another key of the same model is untouched
    records = json.loads(platform.cli.run("audit", "list", "--limit", "1000", "--json").stdout)
    changes = [r for r in records if r["action"] == "privacy.key_policy_set"]
    assert [(r["subject"], r["payload"]) for r in changes] == [
        ("guarded", {"key_id": key_id, "redact": sorted(REDACT)})
    ]


def test_a_pipeline_step_gets_its_models_policy_applied_to_what_an_earlier_step_produced(platform: Platform) -> None:
    """Wrapping a model in a pipeline does not get round its ``redact:``."""
    assert platform.outputs("echo-chain", "open") == {"first": MESSAGE, "second": REDACTED}


def test_chat_messages_sent_to_a_provider_are_redacted(platform: Platform) -> None:
    client = openai.OpenAI(base_url=f"{platform.gateway.url}/v1", api_key=platform.keys["open"][0], max_retries=0)
    before = len(platform.upstream.received)
    answer = client.chat.completions.create(
        model="chat-up",
        messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": [{"type": "text", "text": MESSAGE}]},
        ],
        max_tokens=16,
    )
    sent = platform.upstream.received[before:]
    assert len(sent) == 1
    assert not [s for s in SECRETS if s.encode() in sent[0]]
    assert json.loads(sent[0])["messages"][1]["content"] == [{"type": "text", "text": REDACTED}]
    assert answer.choices[0].message.content == f"You are helpful. | [{{'type': 'text', 'text': '{REDACTED}'}}]"


def test_an_account_that_opted_in_keeps_its_calls_redacted(platform: Platform) -> None:
    out = platform.cli.run("privacy", "capture", "kept", "--on")
    assert "kept" in out.stdout

    def captured() -> list[dict[str, Any]]:
        platform.echo("py-echo-plain", "kept")  # no policy: the model gets the text as sent, the copy kept is not
        return list(json.loads(platform.cli.run("privacy", "captured", "kept", "--json").stdout))

    calls = _eventually(captured, "a captured call")
    first = calls[-1]
    assert first["model"] == "py-echo-plain"
    for field in ("input", "output"):
        assert "<EMAIL_ADDRESS>" in first[field] and "<PHONE_NUMBER>" in first[field]
        assert "<CREDIT_CARD>" in first[field], first[field]
        assert not [s for s in SECRETS if s in first[field]]
    nobody = json.loads(platform.cli.run("privacy", "captured", "open", "--json").stdout)
    assert nobody == []  # capture is off by default

    def pipeline_captured() -> list[dict[str, Any]]:  # a pipeline call is kept as one call, redacted the same way
        platform.outputs("echo-chain", "kept")
        calls = json.loads(platform.cli.run("privacy", "captured", "kept", "--json").stdout)
        return [c for c in calls if c["model"] == "echo-chain"]

    chained = _eventually(pipeline_captured, "a captured pipeline call")[0]
    assert "<CREDIT_CARD>" in chained["input"] and "<EMAIL_ADDRESS>" in chained["output"]
    assert not [s for s in SECRETS if s in chained["input"] or s in chained["output"]]


def test_no_file_of_the_platform_holds_any_of_the_three(platform: Platform) -> None:
    stop_gateway(platform.gateway)  # every log flushed, every database closed
    home = platform.cli.home
    files = [p for p in home.rglob("*") if p.is_file() and not p.is_symlink()]
    if engines.REAL:  # the store and the log are on their servers: read every row and every event there
        stored = {"the store (every row)": store_dump(home).encode(), "the event log": b"\n".join(log_payloads(home))}
    else:
        assert any(p.name == "modelmarket.db" for p in files) and any(p.name == "events.db" for p in files)
        stored = {}
    assert any("runners" in p.parts for p in files)  # the runners' folders (and their logs) are read too
    found = []
    for where, data in [*((str(path), path.read_bytes()) for path in files), *stored.items()]:
        found += [(where, s) for s in SECRETS if s.encode() in data or s.encode("utf-16-le") in data]
    assert found == []
