"""11. The OpenAI-compatible edge (``/v1``), upstream providers, routes, pipelines and the catalogue search under
hostile input: every refusal is a clear error (an OpenAI error object naming the parameter on ``/v1``), bills
nothing, and leaves the platform serving; an upstream's API key never leaves the gateway's environment.

One platform for the module (its own home and gateway, apart from the session's ``market``): the demo's LLM,
embedder, speech-to-text, sentiment and ``voice-sentiment`` pipeline, plus two models served by a fake upstream
provider (``leaky``) that answers 401, or 400, echoing the key it was sent. The gateway takes request bodies up to
``MAX_REQUEST_BYTES`` and holds the upstream's key in ``KEY_ENV``.

"Nothing billed" is checked without sleeping: after the attack the same key makes one cheap embedding call, and
the test waits until that call's usage event is counted. The event log is consumed in order, so an event the
attack had appended would be counted by then too: the account must show exactly the one embedding call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from tests.e2e.conftest import MM, Gateway, stop_gateway
from tests.hostile.conftest import GATEWAY_ENV, Consumer, HostileCli, Market, new_consumer
from tests.hostile.support import (
    assert_error_response,
    assert_openai_error,
    http_request,
    raw_request,
    silent_wav,
)

from modelmarket.bootstrap import bootstrap
from modelmarket.core.errors import InvalidInput
from modelmarket.registry.manifest import MANIFEST_NAME
from modelmarket.routing.spec import MAX_ROUTES, MAX_ROUTES_FILE_BYTES
from modelmarket.runtime import openai as oa
from modelmarket.settings import Settings

LLM = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
STT = "speech-to-text"
PIPELINE = "voice-sentiment"
PUBLISHED = ("sentiment", STT, LLM, EMBEDDER, PIPELINE)
RUNNER_MODELS = ("sentiment", STT, LLM, EMBEDDER)
LEAKY_CHAT, LEAKY_EMBED, PROVIDER = "leaky-chat", "leaky-embed", "leaky"
KEY_ENV = "C11_UPSTREAM_API_KEY"
SECRET = f"sk-c11-{uuid.uuid4().hex}"
MAX_REQUEST_BYTES = 2 * 1024 * 1024
SPARE_CONSUMERS = 100
START_TIMEOUT_S = 240
CALL_TIMEOUT_S = 120
BILLED_WITHIN_S = 30
PROMPT = [{"role": "user", "content": "Say hi."}]


# -- the platform --------------------------------------------------------------------------------------------------


class _UpstreamHandler(BaseHTTPRequestHandler):
    """A provider that refuses every call, quoting the key it was sent: 401 for generations, 400 for embeddings."""

    protocol_version = "HTTP/1.1"
    server: _UpstreamServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        auth = self.headers.get("authorization") or ""
        self.server.seen.append(auth)
        key = auth.removeprefix("Bearer ")
        status, message = (
            (400, f"input refused for the key {key}")
            if self.path.endswith("/embeddings")
            else (401, f"Incorrect API key provided: {key}")
        )
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        self.seen: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@dataclass
class Platform11:
    market: Market
    upstream: _UpstreamServer

    @property
    def url(self) -> str:
        return self.market.url

    @property
    def cli(self) -> HostileCli:
        return self.market.cli

    def consumer(self, purpose: str) -> Consumer:
        return self.market.consumer(purpose)

    def post(self, path: str, who: Consumer | None, **kwargs: Any) -> httpx.Response:
        headers = {**(who.auth if who else {}), **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", CALL_TIMEOUT_S)
        return httpx.post(f"{self.url}{path}", headers=headers, **kwargs)

    def usage_after_one_more_call(self, who: Consumer, expected_events: int = 1) -> dict[str, Any]:
        """One cheap embedding call by ``who``, then its usage once ``expected_events`` are counted (the log is
        consumed in order: an event appended before that call is counted by then)."""
        r = self.post("/v1/embeddings", who, json={"model": EMBEDDER, "input": "ok"})
        assert r.status_code == 200, f"the platform stopped serving: {r.status_code} {r.text[:300]}"
        deadline = time.monotonic() + BILLED_WITHIN_S
        while (usage := self.market.usage(who))["total_events"] < expected_events:
            assert time.monotonic() < deadline, f"usage not counted within {BILLED_WITHIN_S} s: {usage}"
            time.sleep(0.05)
        return usage

    def assert_nothing_billed(self, who: Consumer) -> None:
        usage = self.usage_after_one_more_call(who)
        billed = [(m["model"], m["events"]) for m in usage["models"]]
        assert billed == [(EMBEDDER, 1)], f"a refused call was billed: {billed}"


def _upstream_package(root: Path, name: str, model: str, task: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(f"# {name}\n\n{model} of provider {PROVIDER}.\n")
    embedder = task == "feature-extraction"
    manifest = {
        "name": name,
        "version": "1.0.0",
        "task": task,
        "modality": "text",
        "runtime": "upstream-openai",
        "provider": "demo-provider",
        "license": "Apache-2.0",
        "artifacts": [{"path": "README.md"}],
        "parameters": {"provider": PROVIDER, "model": model},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}
            if embedder
            else {"name": "text", "datatype": "BYTES", "shape": [1]}
        ],
        "pricing": {"unit": "tokens_1k", "price_per_iu": "0.0005", "currency": "USD"},
        "card": {"summary": f"{model} served by provider {PROVIDER} (an upstream that refuses every call)."},
    }
    (folder / MANIFEST_NAME).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def _start_gateway(cli: HostileCli, models: tuple[str, ...]) -> Gateway:
    """``modelmarket serve`` on a free port, once every model in ``models`` answers ready (killed if it does not)."""
    log_path = cli.home / "gateway.log"
    with open(log_path, "a") as log_file:
        proc = subprocess.Popen(
            [*MM, "serve", "--port", "0"], env=cli.env, stdout=subprocess.PIPE, stderr=log_file, text=True
        )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        url = None
        while url is None:
            line = proc.stdout.readline()
            assert line, f"gateway exited before it was ready:\n{log_path.read_text()[-3000:]}"
            url = line.split("URL: ", 1)[1].strip() if line.startswith("URL: ") else None
        for model in models:
            while httpx.get(f"{url}/v2/models/{model}/ready", timeout=30).status_code != 200:
                assert time.monotonic() < deadline, f"model {model} not ready in {START_TIMEOUT_S} s"
                time.sleep(0.2)
        return Gateway(url=url, proc=proc, cli=cli)
    except BaseException:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        raise


@pytest.fixture(scope="module")
def p11(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform11]:
    base = tmp_path_factory.mktemp("hostile-c11")
    packages = base / "packages"
    shutil.copytree(demo_dir, packages)
    env = {**GATEWAY_ENV, "MODELMARKET_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES), KEY_ENV: SECRET}
    cli = HostileCli(base / "home", extra_env=env)
    admin = bootstrap(Settings(home=cli.home, database_url=None))
    upstream = _UpstreamServer()
    threading.Thread(target=upstream.serve_forever, name="c11 upstream", daemon=True).start()
    gateway: Gateway | None = None
    try:
        admin.accounts.create("demo-provider", "provider", actor="hostile-tests")
        for model in PUBLISHED:
            admin.registry.publish(packages / model, actor="hostile-tests")
        admin.routing.add_provider(PROVIDER, upstream.base_url, api_key_env=KEY_ENV, actor="hostile-tests")
        admin.registry.publish(_upstream_package(base, LEAKY_CHAT, "chat-model", "text-generation"))
        admin.registry.publish(_upstream_package(base, LEAKY_EMBED, "embed-model", "feature-extraction"))
        spare = [new_consumer(admin, f"c11-{i}") for i in range(SPARE_CONSUMERS)]
        gateway = _start_gateway(cli, RUNNER_MODELS)
        market = Market(cli=cli, gateway=gateway, packages=packages, admin=admin, spare=spare)
        yield Platform11(market, upstream)
    finally:
        if gateway is not None:
            stop_gateway(gateway)
            if gateway.proc.stdout is not None:
                gateway.proc.stdout.close()
        upstream.shutdown()
        upstream.server_close()
        admin.close()


# -- keys ----------------------------------------------------------------------------------------------------------

V1_ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/v1/models", {}),
    ("GET", f"/v1/models/{LLM}", {}),
    ("POST", "/v1/chat/completions", {"json": {"model": LLM, "messages": PROMPT, "max_tokens": 1}}),
    ("POST", "/v1/completions", {"json": {"model": LLM, "prompt": "Hi", "max_tokens": 1}}),
    ("POST", "/v1/embeddings", {"json": {"model": EMBEDDER, "input": "hi"}}),
    ("POST", "/v1/audio/transcriptions", {"files": {"file": ("a.wav", silent_wav(0.1))}, "data": {"model": STT}}),
    ("GET", "/v1/no-such-route", {}),
]


@pytest.mark.parametrize("how", ["no-key", "bad-key", "key-in-query", "basic-scheme"])
def test_every_v1_route_answers_401_without_a_bearer_key(p11: Platform11, how: str) -> None:
    who = p11.consumer("v1-auth")
    headers, query = {}, ""
    if how == "bad-key":
        headers = {"Authorization": f"Bearer {who.key}x"}
    elif how == "key-in-query":
        query = f"?api_key={who.key}&key={who.key}&access_token={who.key}"
    elif how == "basic-scheme":
        headers = {"Authorization": f"Basic {who.key}"}
    for method, path, kwargs in V1_ROUTES:
        r = httpx.request(method, f"{p11.url}{path}{query}", headers=headers, timeout=CALL_TIMEOUT_S, **kwargs)
        error = assert_openai_error(r, 401, "API key" if how != "basic-scheme" else "Bearer", param=None)
        assert error["code"] == "invalid_api_key", (path, error)
        assert r.headers.get("www-authenticate") == "Bearer", path
        assert who.key not in r.text
    if how == "key-in-query":
        p11.assert_nothing_billed(who)


def test_the_openapi_document_is_public_and_the_model_list_is_not(p11: Platform11) -> None:
    doc = httpx.get(f"{p11.url}/openapi.json", timeout=30)
    assert doc.status_code == 200 and doc.json()["openapi"].startswith("3.1")
    assert "/v1/chat/completions" in doc.json()["paths"]
    assert_openai_error(httpx.get(f"{p11.url}/v1/models", timeout=30), 401, "API key")
    who = p11.consumer("models-list")
    listed = httpx.get(f"{p11.url}/v1/models", headers=who.auth, timeout=30).json()
    ids = {m["id"] for m in listed["data"]}
    assert {LLM, EMBEDDER, STT} <= ids and PIPELINE not in ids, ids  # a pipeline serves no /v1 endpoint


# -- generation requests -------------------------------------------------------------------------------------------


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": LLM, "messages": PROMPT, "max_tokens": 1, **fields}


IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
BAD_GENERATIONS: list[tuple[str, str, Any, int, Any, tuple[str, ...]]] = [
    # (id, path, body (bytes as they are, anything else as JSON), status, param, words)
    ("malformed-json", "/v1/chat/completions", b'{"model": "x", "messages": [', 400, None, ("not valid JSON",)),
    ("json-array", "/v1/chat/completions", b'[{"model": "x"}]', 400, None, ("JSON object",)),
    ("json-string", "/v1/completions", b'"hello"', 400, None, ("JSON object",)),
    ("no-model", "/v1/chat/completions", {"messages": PROMPT}, 400, "model", ("'model' is required",)),
    ("model-not-text", "/v1/chat/completions", _chat(model=["x"]), 400, "model", ("'model'",)),
    ("messages-string", "/v1/chat/completions", _chat(messages="hi"), 400, "messages", ("list",)),
    ("messages-empty", "/v1/chat/completions", _chat(messages=[]), 400, "messages", ("non-empty",)),
    (
        "10000-messages",
        "/v1/chat/completions",
        _chat(messages=[{"role": "user", "content": "hi"}] * 10_000),
        400,
        "messages",
        (f"more than {oa.MAX_MESSAGES} messages",),
    ),
    (
        "unknown-role",
        "/v1/chat/completions",
        _chat(messages=[{"role": "wizard", "content": "hi"}]),
        400,
        "messages",
        ("messages[0].role", "'wizard'"),
    ),
    ("message-not-object", "/v1/chat/completions", _chat(messages=["hi"]), 400, "messages", ("messages[0]",)),
    (
        "image-parts",
        "/v1/chat/completions",
        _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "what is it?"}, IMAGE_PART]}]),
        400,
        "messages[0].content",
        ("messages[0].content[1]", "only text parts"),
    ),
    ("n-2", "/v1/chat/completions", _chat(n=2), 400, "n", ("'n' must be 1",)),
    (
        "tools",
        "/v1/chat/completions",
        _chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        400,
        "tools",
        ("'tools' is not supported",),
    ),
    ("functions", "/v1/chat/completions", _chat(functions=[{"name": "f"}]), 400, "functions", ("not supported",)),
    ("logprobs", "/v1/chat/completions", _chat(logprobs=True), 400, "logprobs", ("not supported",)),
    ("max-tokens-1e9", "/v1/chat/completions", _chat(max_tokens=10**9), 400, "max_tokens", ("1000000000",)),
    ("max-tokens-0", "/v1/completions", {"model": LLM, "prompt": "a", "max_tokens": 0}, 400, "max_tokens", ()),
    (
        "max-completion-tokens-float",
        "/v1/chat/completions",
        _chat(max_completion_tokens=1.5),
        400,
        "max_completion_tokens",
        (),
    ),
    ("temperature-hot", "/v1/chat/completions", _chat(temperature="hot"), 400, "temperature", ("'hot'",)),
    ("temperature-3", "/v1/chat/completions", _chat(temperature=3), 400, "temperature", ()),
    (
        "temperature-1e999",
        "/v1/chat/completions",
        b'{"model": "m", "messages": [], "temperature": 1e999}',
        400,
        None,
        ("not valid JSON",),
    ),
    ("top-p-0", "/v1/chat/completions", _chat(top_p=0), 400, "top_p", ()),
    ("seed-2-64", "/v1/chat/completions", _chat(seed=2**64), 400, "seed", ()),
    ("stop-50", "/v1/chat/completions", _chat(stop=[f"s{i}" for i in range(50)]), 400, "stop", ("up to 4",)),
    ("stop-long", "/v1/chat/completions", _chat(stop=["x" * 10_000]), 400, "stop", ("200 characters",)),
    ("stop-empty", "/v1/chat/completions", _chat(stop=[""]), 400, "stop", ()),
    (
        "stream-options-without-stream",
        "/v1/chat/completions",
        _chat(stream_options={"include_usage": True}),
        400,
        "stream_options",
        ("'stream': true",),
    ),
    ("stream-text", "/v1/chat/completions", _chat(stream="yes"), 400, "stream", ()),
    ("prompt-list", "/v1/completions", {"model": LLM, "prompt": ["a", "b"]}, 400, "prompt", ("one prompt",)),
    ("prompt-tokens", "/v1/completions", {"model": LLM, "prompt": [1, 2, 3]}, 400, "prompt", ()),
    ("echo", "/v1/completions", {"model": LLM, "prompt": "a", "echo": True}, 400, "echo", ()),
    ("best-of", "/v1/completions", {"model": LLM, "prompt": "a", "best_of": 3}, 400, "best_of", ("best_of",)),
    ("embedder-chats", "/v1/chat/completions", _chat(model=EMBEDDER), 400, None, ("does not serve",)),
    ("pipeline-chats", "/v1/chat/completions", _chat(model=PIPELINE), 400, None, ("does not serve",)),
    ("unknown-model", "/v1/chat/completions", _chat(model="no-such-model"), 404, None, ("does not exist",)),
    ("llm-embeds", "/v1/embeddings", {"model": LLM, "input": "hi"}, 400, None, ("does not serve embeddings",)),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "words"),
    [c[1:] for c in BAD_GENERATIONS],
    ids=[c[0] for c in BAD_GENERATIONS],
)
def test_bad_generation_requests_are_refused_naming_the_param_and_not_billed(
    p11: Platform11, path: str, body: Any, status: int, param: Any, words: tuple[str, ...]
) -> None:
    who = p11.consumer("bad-generation")
    kwargs: dict[str, Any] = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    error = assert_openai_error(p11.post(path, who, **kwargs), status, *words, param=param)
    if status == 404:
        assert error["code"] == "model_not_found"
    p11.assert_nothing_billed(who)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user", "content": "x" * MAX_REQUEST_BYTES}]}),
        ("/v1/embeddings", {"model": EMBEDDER, "input": ["word " * 1000] * 500}),
        ("/v1/audio/transcriptions", None),
    ],
    ids=["chat", "embeddings", "transcriptions"],
)
def test_a_body_over_the_request_bound_is_refused_with_413(p11: Platform11, path: str, body: Any) -> None:
    who = p11.consumer("too-large")
    if body is None:
        payload = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        payload += b"\0" * (MAX_REQUEST_BYTES + 1024) + b"\r\n--b--\r\n"
        ctype = "multipart/form-data; boundary=b"
    else:
        payload, ctype = orjson.dumps(body), "application/json"
    assert len(payload) > MAX_REQUEST_BYTES
    headers = {"Authorization": f"Bearer {who.key}", "Content-Type": ctype}
    answer = raw_request(p11.market.hostport, http_request("POST", path, headers, payload))
    assert answer.status == 413, (answer.status, answer.body[:300])
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error", error
    assert f"limit of {MAX_REQUEST_BYTES} bytes" in error["message"]
    p11.assert_nothing_billed(who)


# -- the model's context -------------------------------------------------------------------------------------------

LONG_PROMPT = "The quick brown fox jumps over the lazy dog. " * 2_500  # ~25,000 tokens; the context is 2,048


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_a_prompt_far_longer_than_the_context_is_refused_naming_it_and_not_billed(
    p11: Platform11, path: str, stream: bool
) -> None:
    who = p11.consumer("long-prompt")
    body: dict[str, Any] = {"model": LLM, "max_tokens": 5, "stream": stream}
    if path == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": LONG_PROMPT}]
    else:
        body["prompt"] = LONG_PROMPT
    assert_openai_error(p11.post(path, who, json=body), 400, "context is 2,048 tokens", "shorten the prompt")
    # The model is free again at once: a small call is answered (a refused stream must not hold the runner).
    r = p11.post("/v1/chat/completions", who, json=_chat(), timeout=60)
    assert r.status_code == 200, r.text
    usage = p11.usage_after_one_more_call(who, expected_events=2)
    assert [(m["model"], m["events"]) for m in usage["models"]] == [(EMBEDDER, 1), (LLM, 1)]


# -- embeddings ----------------------------------------------------------------------------------------------------

BAD_EMBEDDINGS: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    # (id, fields beside the model, words); the param is "input" unless the field named is another
    ("negative-token-id", {"input": [[-1, 5]]}, ("token ids",)),
    ("huge-token-id", {"input": [10**12]}, ("token ids",)),
    ("token-id-2-63", {"input": [2**63]}, ("token ids",)),
    ("100000-inputs", {"input": ["a"] * 100_000}, (f"more than {oa.MAX_EMBEDDING_INPUTS} items",)),
    ("empty-string", {"input": ["fine", ""]}, ("empty strings",)),
    ("only-empty-string", {"input": ""}, ("empty strings",)),
    ("empty-list", {"input": []}, ("none empty",)),
    ("empty-token-list", {"input": [[]]}, ("none empty",)),
    ("nested-mixed", {"input": [[1, "a"], [2.5], "x"]}, ("list of lists of token ids",)),
    ("strings-and-ids", {"input": ["a", 1]}, ("list of strings",)),
    ("bool-ids", {"input": [True, False]}, ("token ids",)),
    ("deeply-nested", {"input": [[[1]]]}, ("token ids",)),
    ("object-input", {"input": {"text": "hi"}}, ("'input' must be",)),
    ("no-input", {}, ("'input' must be",)),
    ("dimensions", {"input": "hi", "dimensions": 128}, ("'dimensions' is not supported",)),
    ("encoding-hex", {"input": "hi", "encoding_format": "hex"}, ("'encoding_format'",)),
]


@pytest.mark.parametrize(("fields", "words"), [c[1:] for c in BAD_EMBEDDINGS], ids=[c[0] for c in BAD_EMBEDDINGS])
def test_bad_embedding_requests_are_refused_naming_the_param_and_not_billed(
    p11: Platform11, fields: dict[str, Any], words: tuple[str, ...]
) -> None:
    who = p11.consumer("bad-embedding")
    param = next((name for name in ("dimensions", "encoding_format") if name in fields), "input")
    r = p11.post("/v1/embeddings", who, json={"model": EMBEDDER, **fields})
    assert_openai_error(r, 400, *words, param=param)
    p11.assert_nothing_billed(who)


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([[5, 30_522]], ("token id 30522", "outside the vocabulary")),
        ([[1_000_000]], ("token id 1000000", "outside the vocabulary")),
        (["hi"] * 300, ("more than 256 items",)),
    ],
    ids=["just-past-the-vocabulary", "a-million", "300-inputs"],
)
def test_inputs_only_the_runner_can_judge_are_refused_and_not_billed(
    p11: Platform11, inputs: list[Any], words: tuple[str, ...]
) -> None:
    """Token ids inside the wire bound but outside this model's vocabulary (30,522), and more inputs than the
    runtime takes in one call: the runner refuses them; the caller gets a 400 naming the input."""
    who = p11.consumer("runner-refusal")
    r = p11.post("/v1/embeddings", who, json={"model": EMBEDDER, "input": inputs})
    assert_openai_error(r, 400, *words)
    p11.assert_nothing_billed(who)


def test_a_refusal_by_the_runner_keeps_the_param_it_names(p11: Platform11) -> None:
    who = p11.consumer("runner-param")
    r = p11.post("/v1/embeddings", who, json={"model": EMBEDDER, "input": ["hi"] * 300})
    assert_openai_error(r, 400, "more than 256 items", param="input")


# -- transcriptions ------------------------------------------------------------------------------------------------


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "c11boundary") -> tuple[bytes, str]:
    """A multipart/form-data body written by hand: (field name, file name or None, content) per part."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


WAV = silent_wav(0.2)
BAD_TRANSCRIPTIONS: list[tuple[str, Any, int, Any, tuple[str, ...]]] = [
    # (id, body: (content, content type) or a JSON document, status, param, words)
    ("json-body", {"model": STT, "file": "aGVsbG8="}, 400, "file", ("multipart/form-data",)),
    ("two-files", _multipart([("model", None, STT.encode()), ("file", "a.wav", WAV), ("file", "b.wav", WAV)]), 400,
     "file", ("cannot be read",)),
    ("10000-fields", _multipart([("model", None, STT.encode()), ("file", "a.wav", WAV)]
                                + [(f"f{i}", None, b"x") for i in range(10_000)]), 400, "file", ("cannot be read",)),
    ("no-file", _multipart([("model", None, STT.encode())]), 400, "file", ("'file' is required",)),
    ("file-as-text", _multipart([("model", None, STT.encode()), ("file", None, b"RIFF")]), 400, "file", ()),
    ("no-model", _multipart([("file", "a.wav", WAV)]), 400, "model", ("'model' is required",)),
    ("broken-multipart", (b"--x\r\nnot a part", "multipart/form-data; boundary=x"), 400, "file", ()),
    ("no-boundary", (b"--x--\r\n", "multipart/form-data"), 400, "file", ()),
    ("not-a-wav", _multipart([("model", None, STT.encode()), ("file", "a.wav", b"ID3\x04 an mp3, honest")]), 400,
     None, ("WAV",)),
    ("the-llm", _multipart([("model", None, LLM.encode()), ("file", "a.wav", WAV)]), 400, "model",
     ("does not transcribe audio",)),
    ("the-pipeline", _multipart([("model", None, PIPELINE.encode()), ("file", "a.wav", WAV)]), 400, "model",
     ("does not transcribe audio",)),
    ("bad-format", _multipart([("model", None, STT.encode()), ("file", "a.wav", WAV),
                               ("response_format", None, b"srt")]), 400, "response_format", ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "status", "param", "words"), [c[1:] for c in BAD_TRANSCRIPTIONS], ids=[c[0] for c in BAD_TRANSCRIPTIONS]
)
def test_bad_transcription_requests_are_refused_and_not_billed(
    p11: Platform11, body: Any, status: int, param: Any, words: tuple[str, ...]
) -> None:
    who = p11.consumer("bad-transcription")
    if isinstance(body, dict):
        r = p11.post("/v1/audio/transcriptions", who, json=body)
    else:
        content, ctype = body
        r = p11.post("/v1/audio/transcriptions", who, content=content, headers={"content-type": ctype})
    assert_openai_error(r, status, *words, param=param)
    p11.assert_nothing_billed(who)


def test_a_good_transcription_is_served_and_billed(p11: Platform11) -> None:
    """The control for the refusals above: the same form with a WAV file is answered (and billed once)."""
    who = p11.consumer("transcription")
    content, ctype = _multipart([("model", None, STT.encode()), ("file", "a.wav", WAV)])
    r = p11.post("/v1/audio/transcriptions", who, content=content, headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["text"], str)
    usage = p11.usage_after_one_more_call(who, expected_events=2)
    assert sorted((m["model"], m["events"]) for m in usage["models"]) == [(EMBEDDER, 1), (STT, 1)]


# -- streams -------------------------------------------------------------------------------------------------------

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,"
"""A prompt the model continues for as long as it is let (greedy: 13, 14, 15, ...), so 2,000 tokens really are
2,000 tokens of work, not a reply that ends early on its own."""
CUT_MAX_TOKENS = 2_000
CUTS = 3
FREED_WITHIN_S = 60.0
"""The cut-off streams and the next call on the LLM, all together, are answered within this. A runner that kept
generating would need CUTS x 2,000 tokens first: at the 37 tokens/s measured on the shared 2-core machine with
little else running, over 160 s (and far more under load)."""
FEW_TOKENS = 64


def _cut_off_stream(hostport: str, key: str, deadline: float) -> None:
    """Open a 2,000-token stream, wait for its answer head (the generation has started), hang up unread."""
    body = {"model": LLM, "prompt": COUNTING, "max_tokens": CUT_MAX_TOKENS, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    host, port = hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=max(0.1, deadline - time.monotonic())) as sock:
        sock.sendall(http_request("POST", "/v1/completions", headers, orjson.dumps(body)))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, f"the gateway closed the connection: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head[:300]


def _llm_events(p11: Platform11, who: Consumer) -> list[tuple[int, int]]:
    """(quantity_base, quantity_out) of each of ``who``'s usage events on the LLM, as metering stored them."""
    uri = f"file:{p11.cli.home / 'modelmarket.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute(
            "SELECT quantity_base, quantity_out FROM usage_events WHERE account_id = ? AND model_name = ?",
            (who.account_id, LLM),
        ).fetchall()
    return [(int(a), int(b)) for a, b in rows]


def test_streams_cut_off_at_once_stop_the_runner_and_bill_a_few_tokens(p11: Platform11) -> None:
    """The LLM runs one generation at a time: the next call is answered only once every cut-off one stopped."""
    who = p11.consumer("stream-cutter")
    deadline = time.monotonic() + FREED_WITHIN_S
    for _ in range(CUTS):
        _cut_off_stream(p11.market.hostport, who.key, deadline)
    follow = {"model": LLM, "prompt": COUNTING, "max_tokens": 1, "temperature": 0}
    r = p11.post("/v1/completions", who, json=follow, timeout=max(0.1, deadline - time.monotonic()))
    assert r.status_code == 200, r.text
    prompt_tokens = r.json()["usage"]["prompt_tokens"]
    p11.usage_after_one_more_call(who, expected_events=CUTS + 2)
    events = _llm_events(p11, who)
    print(f"[stream] {CUTS} streams cut off at once, then one call: (tokens, of which generated) {events}")
    assert len(events) == CUTS + 1, events
    assert all(base - out == prompt_tokens for base, out in events), (prompt_tokens, events)
    assert all(1 <= out <= FEW_TOKENS for _, out in events), f"a cut-off stream was billed more: {events}"


CONCURRENT_STREAMS = 8


def test_concurrent_streams_from_one_key_are_answered_and_billed_what_they_reported(p11: Platform11) -> None:
    who = p11.consumer("streams")

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, dict[str, Any] | None, str]:
        body = {
            "model": LLM,
            "messages": [{"role": "user", "content": f"Say a word about the number {i}."}],
            "max_tokens": 4,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            raw = (await r.aread()).decode()
        if r.status_code != 200:
            return r.status_code, None, raw
        events = [line[6:] for line in raw.split("\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]", raw[-300:]
        last = json.loads(events[-2])
        assert last["choices"] == [] and last["x_modelmarket"]["request_id"] == r.headers["x-request-id"], last
        return 200, last["usage"], raw

    async def run() -> list[tuple[int, dict[str, Any] | None, str]]:
        async with httpx.AsyncClient(base_url=p11.url, headers=who.auth, timeout=CALL_TIMEOUT_S) as client:
            return await asyncio.gather(*(one(client, i) for i in range(CONCURRENT_STREAMS)))

    answers = asyncio.run(run())
    served = [usage for status, usage, _ in answers if status == 200]
    for status, _, raw in answers:
        if status != 200:  # a clean refusal (a busy runner, a limit): an OpenAI error object, never billed
            assert status in (429, 503), (status, raw[:300])
            assert set(json.loads(raw)["error"]) == {"message", "type", "param", "code"}
    assert served, answers
    usage = p11.usage_after_one_more_call(who, expected_events=len(served) + 1)
    [llm] = [m for m in usage["models"] if m["model"] == LLM]
    assert llm["events"] == len(served)
    assert llm["quantity"] == sum(u["total_tokens"] for u in served if u is not None), (llm, served)


# -- upstream providers and their secrets --------------------------------------------------------------------------


def _cli_runs(cli: HostileCli, *commands: tuple[str, ...]) -> list[subprocess.CompletedProcess[str]]:
    """CLI commands run at once (each is a process that spends seconds importing)."""
    with ThreadPoolExecutor(max_workers=len(commands)) as pool:
        return list(pool.map(lambda args: cli.run(*args, check=False), commands))


def test_a_provider_url_with_credentials_is_refused_without_echoing_them(p11: Platform11) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    before = p11.cli.json("providers", "list")
    add = ("providers", "add", "creds", "--base-url")
    refused = _cli_runs(
        p11.cli,
        (*add, f"http://user:{password}@127.0.0.1:9/v1"),
        (*add, f"http://127.0.0.1:9/v1?api_key={password}"),
        (*add, "http://127.0.0.1:9/v1", "--api-key-env", SECRET),  # the key itself, passed by mistake
    )
    for proc, field in zip(refused, ("base_url", "base_url", "api_key_env"), strict=True):
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1 and field in proc.stderr and "Traceback" not in out, out
        assert password not in out and SECRET not in out, out
    assert p11.cli.json("providers", "list") == before, "a refused provider was stored"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_an_upstream_that_refuses_the_key_gets_no_secret_out(p11: Platform11, stream: bool) -> None:
    who = p11.consumer("upstream-401")
    seen = len(p11.upstream.seen)
    r = p11.post("/v1/chat/completions", who, json={"model": LEAKY_CHAT, "messages": PROMPT, "stream": stream})
    error = assert_openai_error(r, 502, "refused the platform's credentials (401)", "operator")
    assert p11.upstream.seen[seen:] == [f"Bearer {SECRET}"], "the gateway did not send the key upstream"
    assert SECRET not in r.text and SECRET not in str(r.headers)
    assert error["type"] == "server_error"
    p11.assert_nothing_billed(who)


def test_an_upstream_that_quotes_the_key_in_a_400_does_not_leak_it(p11: Platform11) -> None:
    who = p11.consumer("upstream-400")
    r = p11.post("/v1/embeddings", who, json={"model": LEAKY_EMBED, "input": "hi"})
    assert r.status_code == 400, r.text
    assert SECRET not in r.text, f"the upstream's key reached the caller: {r.text[:300]}"


def test_the_upstream_key_is_nowhere_the_platform_writes_or_prints(p11: Platform11) -> None:
    """After the calls above (and these), the key is not in the provider list, the audit log, the gateway's log,
    nor any file of the platform's home (the database, the event log, the runners' logs)."""
    who = p11.consumer("secret-hunter")
    for model in (LEAKY_CHAT, LEAKY_EMBED):
        p11.post("/v1/chat/completions", who, json={"model": model, "messages": PROMPT})
        p11.post("/v1/embeddings", who, json={"model": model, "input": "hi"})
    assert any(SECRET in seen for seen in p11.upstream.seen), "the upstream never received the key"
    listed, shown, audit = _cli_runs(
        p11.cli, ("providers", "list", "--json"), ("providers", "list"), ("audit", "list", "--limit", "1000", "--json")
    )
    assert listed.returncode == shown.returncode == audit.returncode == 0, listed.stderr + audit.stderr
    assert PROVIDER in listed.stdout and KEY_ENV in listed.stdout and "provider.created" in audit.stdout
    for proc in (listed, shown, audit):
        assert SECRET not in proc.stdout + proc.stderr, proc.args
    home = p11.cli.home
    assert SECRET not in (home / "gateway.log").read_text(errors="replace")
    secret = SECRET.encode()
    for path in home.rglob("*"):
        if path.is_file() and "blobs" not in path.relative_to(home).parts:
            assert secret not in path.read_bytes(), f"the upstream's key is in {path.relative_to(home)}"


# -- routes files --------------------------------------------------------------------------------------------------

ALIASES = "x: &t [{model: " + LLM + "}]\nroutes:\n  - {name: chat, targets: *t}\n"
LAUGHS = (
    "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))
    + "routes: []\n"
)
BAD_ROUTES: list[tuple[str, str, tuple[str, ...]]] = [
    ("aliases", ALIASES, ("anchors and aliases",)),
    ("billion-laughs", LAUGHS, ("anchors and aliases",)),
    ("merge-key", "routes:\n  - {<<: {name: m}, targets: [{model: " + LLM + "}]}\n", ("merge keys",)),
    (
        "10000-routes",
        "routes:\n" + "".join(f"- {{name: r{i}}}\n" for i in range(10_000)),
        (f"10000 routes; at most {MAX_ROUTES}",),
    ),
    (
        "itself-as-target",
        "routes:\n  - {name: loop, targets: [{model: loop}]}\n",
        ("routes[0].targets[0].model", "cannot name itself"),
    ),
    (
        "itself-as-fallback",
        f"routes:\n  - {{name: loop, targets: [{{model: {LLM}}}], fallbacks: [loop@1.0.0]}}\n",
        ("fallbacks[0]", "cannot name itself"),
    ),
    (
        "shadows-a-model",
        f"routes:\n  - {{name: {EMBEDDER}, targets: [{{model: {LLM}}}]}}\n",
        ("shadow",),
    ),
    (
        "target-not-published",
        "routes:\n  - {name: ghost, targets: [{model: no-such-model}]}\n",
        ("not published",),
    ),
    (
        "route-to-a-route",
        f"routes:\n  - {{name: a, targets: [{{model: {LLM}}}]}}\n  - {{name: b, targets: [{{model: a}}]}}\n",
        ("routes[1].targets[0].model", "not published"),
    ),
    ("deep-nesting", "routes: " + "[" * 500 + "]" * 500 + "\n", ("nested",)),
    ("duplicate-keys", f"routes:\n  - {{name: d, name: e, targets: [{{model: {LLM}}}]}}\n", ("twice",)),
]


@pytest.mark.parametrize(("text", "words"), [c[1:] for c in BAD_ROUTES], ids=[c[0] for c in BAD_ROUTES])
def test_hostile_routes_files_are_refused_naming_the_problem_and_nothing_is_stored(
    p11: Platform11, text: str, words: tuple[str, ...]
) -> None:
    admin = p11.market.admin
    before, records = admin.routing.routes(), admin.audit.verify().records
    with pytest.raises(InvalidInput) as refused:
        admin.routing.apply(text, models=lambda: admin.registry.catalogue().names(), actor="hostile-tests")
    message = refused.value.message
    for word in words:
        assert word in message, message
    assert len(message) < 1_000, message[:300]
    assert admin.routing.routes() == before and admin.audit.verify().records == records


def test_a_10_mb_routes_file_is_refused_by_the_cli_unread(p11: Platform11, tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    route = f"  - {{name: big, targets: [{{model: {LLM}}}]}}\n"
    path.write_text("routes:\n" + route + "#" * (10 * 1024 * 1024) + "\n")
    proc = p11.cli.run("routes", "apply", str(path), check=False)
    assert proc.returncode == 1 and f"larger than {MAX_ROUTES_FILE_BYTES} bytes" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 1_000
    assert p11.cli.json("routes", "list") == []


# -- pipelines -----------------------------------------------------------------------------------------------------


def _oip_wav(wav: bytes) -> tuple[bytes, dict[str, str]]:
    head = orjson.dumps(
        {
            "inputs": [
                {"name": "audio", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 4 + len(wav)}}
            ]
        }
    )
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    return head + len(wav).to_bytes(4, "little") + wav, headers


def test_a_pipeline_call_with_an_idempotency_key_is_refused_and_not_billed(p11: Platform11) -> None:
    who = p11.consumer("pipeline-idem")
    body, headers = _oip_wav(WAV)
    headers["Idempotency-Key"] = str(uuid.uuid4())
    r = p11.post(f"/v2/models/{PIPELINE}/infer", who, content=body, headers=headers)
    assert_error_response(r, 400, PIPELINE, "Idempotency-Key is not supported for pipeline calls")
    p11.assert_nothing_billed(who)


@pytest.mark.parametrize(
    ("clip", "words"),
    [(b"not a wav at all", ("WAV",)), (silent_wav(0.2)[:30], ("WAV",)), (silent_wav(11, 1), ("limit is",))],
    ids=["text", "truncated-wav", "claims-11-s-at-1-hz"],
)
def test_a_pipeline_fed_bad_audio_names_the_step_and_bills_nothing(
    p11: Platform11, clip: bytes, words: tuple[str, ...]
) -> None:
    who = p11.consumer("pipeline-audio")
    body, headers = _oip_wav(clip)
    r = p11.post(f"/v2/models/{PIPELINE}/infer", who, content=body, headers=headers)
    assert_error_response(r, 400, f"pipeline step 'transcribe' ({STT})", *words)
    p11.assert_nothing_billed(who)


def _pipeline_copy(p11: Platform11, tmp_path: Path, version: str, edit: Any) -> Path:
    dest = tmp_path / f"pipeline-{version}"
    shutil.copytree(p11.market.packages / PIPELINE, dest)
    doc = yaml.safe_load((dest / MANIFEST_NAME).read_text())
    doc["version"] = version
    edit(doc)
    (dest / MANIFEST_NAME).write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest


def _cycle(doc: dict[str, Any]) -> None:
    doc["steps"][0]["inputs"] = {"audio": "classify.label"}  # transcribe <- classify <- transcribe


def _self_loop(doc: dict[str, Any]) -> None:
    doc["steps"][1]["inputs"] = {"text": "classify.label"}


def _hundred_steps(doc: dict[str, Any]) -> None:
    first = doc["steps"][0]
    doc["steps"] = [first] + [
        {"id": f"s{i}", "model": "sentiment", "inputs": {"text": "transcribe.text"}} for i in range(99)
    ]


def _nested(doc: dict[str, Any]) -> None:
    doc["steps"][1]["model"] = PIPELINE


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (_cycle, ("steps[0].inputs.audio", "step 'classify' runs after this one")),
        (_self_loop, ("steps[1].inputs.text", "may not use its own outputs")),
        (_hundred_steps, ("steps", "16")),
        (_nested, ("do not nest",)),
    ],
    ids=["cycle", "self-loop", "100-steps", "nested-pipeline"],
)
def test_a_hostile_pipeline_manifest_is_refused_at_publish_and_nothing_is_stored(
    p11: Platform11, tmp_path: Path, edit: Any, words: tuple[str, ...]
) -> None:
    admin = p11.market.admin
    version = f"9.{len(words)}.{uuid.uuid4().int % 10_000}"
    with pytest.raises(InvalidInput) as refused:
        admin.registry.publish(_pipeline_copy(p11, tmp_path, version, edit), actor="hostile-tests")
    for word in words:
        assert word in refused.value.message, refused.value.message
    assert version not in admin.registry.catalogue().get(PIPELINE).versions


# -- catalogue search ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("limit=100000", ("limit", "'100000'")),
        ("limit=-1", ("limit",)),
        ("limit=1e3", ("limit",)),
        ("cursor=garbage", ("cursor", "not a cursor from this API")),
        ("cursor=" + "A" * 5_000, ("cursor",)),
        ("cursor=MTA6YWJj&offset=1", ("cursor, offset",)),
        ("max_price=NaN", ("max_price", "'NaN'")),
        ("max_price=-Infinity", ("max_price",)),
        ("max_price=-0.1", ("max_price", "negative")),
        ("max_price=" + "9" * 5_000, ("max_price",)),
        ("offset=99999999999999999999", ("offset",)),
        ("q=" + "word " * 2_000, ("q", "at most 200")),
        ("sort=price;drop", ("sort",)),
    ],
    ids=lambda v: v[:30] if isinstance(v, str) else None,
)
def test_hostile_catalogue_searches_are_refused_naming_the_parameter(
    p11: Platform11, query: str, words: tuple[str, ...]
) -> None:
    r = httpx.get(f"{p11.url}/api/models?{query}", timeout=30)
    message = assert_error_response(r, 400, *words)
    assert len(message) < 500, "the error echoes the input back"


def test_a_100_kb_search_is_refused_at_the_head_and_the_catalogue_still_answers(p11: Platform11) -> None:
    answer = raw_request(p11.market.hostport, http_request("GET", "/api/models?q=" + "x" * 100_000))
    assert answer.status == 431, (answer.status, answer.body[:200])
    assert "larger than the limit" in answer.json()["error"]
    page = httpx.get(f"{p11.url}/api/models?limit=2&max_price=1e999999", timeout=30)
    assert page.status_code == 200 and len(page.json()["models"]) <= 2, page.text
