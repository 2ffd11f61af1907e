"""Routes over upstream providers, end to end: platform A serves models whose calls go to an upstream, and the
upstream is another modelmarket (B, the session's demo gateway) behind chaos proxies the test controls.

    openai SDK --> A (routes) --> proxy P1 (provider p1) --> B (all-minilm-l6-v2, smollm2-135m-instruct)
                              \\-> proxy P2 (provider p2) --/

A knows B only as two OpenAI-compatible providers, p1 and p2, whose API key (a consumer key of B) A reads from the
environment variable UPSTREAM_KEY. Each test makes a proxy fail (500), answer 429, or slow down, and checks what
the caller of A sees: fallbacks and retries, per-attempt timeouts, weighted splits (within stated statistical
bounds), sticky routing, the circuit breaker, the lowest-latency strategy, and that A bills exactly the calls
that succeeded, at the tokens B reported, while B bills A for every call it answered.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from tests.e2e.chaos_proxy import BUSY_MESSAGE, FAILURE_MESSAGE, ChaosProxy
from tests.e2e.conftest import Cli, EnvCli, Gateway, start_gateway, stop_gateway

from modelmarket.routing.engine import weighted_order
from modelmarket.routing.spec import RouteSpec, parse_routes

LLM = "smollm2-135m-instruct"
EMBEDDER = "all-minilm-l6-v2"
KEY_ENV = "UPSTREAM_KEY"
PRICE_PER_IU = "0.0005"  # A resells B's embedder (0.0001 per 1k tokens on B) at five times the price
STICKY_KEYS = 4
CALL_TIMEOUT_S = 60
READY_TIMEOUT_S = 180

ROUTES_YAML = """\
# failures: 100 is a breaker that never opens in these tests, for the routes that test something else.
routes:
  - name: fallback-embed
    targets: [{model: emb-p1}]
    fallbacks: [emb-p2]
    retries: {attempts: 1, backoff_ms: 10}
    circuit_breaker: {failures: 100, cooldown_s: 1}
  - name: fallback-chat
    targets: [{model: chat-p1}]
    fallbacks: [chat-p2]
    circuit_breaker: {failures: 100, cooldown_s: 1}
  - name: solo-embed
    targets: [{model: emb-p1}]
    circuit_breaker: {failures: 100, cooldown_s: 1}
  - name: slow-embed
    targets: [{model: emb-p1}]
    fallbacks: [emb-p2]
    timeout_s: 1
    circuit_breaker: {failures: 100, cooldown_s: 1}
  - name: slow-solo
    targets: [{model: emb-p1}]
    timeout_s: 1
    circuit_breaker: {failures: 100, cooldown_s: 1}
  - name: split-embed
    sticky: false
    targets: [{model: emb-p1, weight: 80}, {model: emb-p2, weight: 20}]
  - name: sticky-embed
    sticky: true
    targets: [{model: emb-p1, weight: 50}, {model: emb-p2, weight: 50}]
    circuit_breaker: {failures: 100, cooldown_s: 1}
  - name: loose-embed
    sticky: false
    targets: [{model: emb-p1, weight: 50}, {model: emb-p2, weight: 50}]
  - name: breaker-embed
    targets: [{model: emb-p1}]
    circuit_breaker: {failures: 2, cooldown_s: 2}
  - name: fastest-embed
    strategy: lowest-latency
    targets: [{model: emb-p1}, {model: emb-p2}]
  - name: billed-embed
    targets: [{model: emb-p1}]
    fallbacks: [emb-p2]
    circuit_breaker: {failures: 100, cooldown_s: 1}
"""
ROUTES: dict[str, RouteSpec] = {r.name: r for r in parse_routes(ROUTES_YAML)}


# -- the platform under test -----------------------------------------------------------------------------------


_BATCH = """\
import json, sys
import click
from modelmarket.cli.main import cli
for args in json.loads(sys.argv[1]):
    print(sys.argv[2], flush=True)
    try:
        code = cli.main(args, prog_name="modelmarket", standalone_mode=False)
    except click.ClickException as exc:
        sys.exit(f"modelmarket {' '.join(args)}: {exc.format_message()}")
    if code:
        sys.exit(f"modelmarket {' '.join(args)}: exit status {code}")
"""
_BATCH_MARK = "---- next modelmarket command ----"


@dataclass
class BatchCli(EnvCli):
    def batch(self, commands: list[list[str]]) -> list[str]:
        """Run CLI commands one after another in ONE process (as a setup script would, without paying the
        import of the whole platform, about 2 s of CPU, for each command); each command's standard output."""
        proc = subprocess.run(
            [sys.executable, "-c", _BATCH, json.dumps(commands), _BATCH_MARK],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, f"modelmarket setup failed ({proc.returncode}):\n{proc.stderr}"
        outputs = proc.stdout.split(_BATCH_MARK + "\n")[1:]
        assert len(outputs) == len(commands), proc.stdout
        return outputs


@dataclass
class Platform:
    cli: BatchCli
    gateway: Gateway
    p1: ChaosProxy
    p2: ChaosProxy
    upstream_key: str
    """A's API key on B (what A sends upstream)."""
    consumer_key: str
    biller_key: str
    sticky_keys: list[tuple[str, str]]
    """(key id, key) of one consumer (the first is ``consumer_key``)."""
    clients: dict[str, openai.OpenAI] = field(default_factory=dict)

    def client(self, key: str | None = None) -> openai.OpenAI:
        """The SDK as a caller of A (one client per key, kept for the module)."""
        key = key or self.consumer_key
        if key not in self.clients:
            self.clients[key] = openai.OpenAI(
                base_url=f"{self.gateway.url}/v1",
                api_key=key,
                max_retries=0,  # the SDK must not hide a failure by retrying it itself
                timeout=CALL_TIMEOUT_S,
            )
        return self.clients[key]

    @property
    def proxies(self) -> tuple[ChaosProxy, ChaosProxy]:
        return self.p1, self.p2


def _package(root: Path, name: str, provider: str, model: str) -> Path:
    """A model package of A whose calls go to ``model`` of ``provider``."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(f"# {name}\n\n{model} of provider {provider}, resold through A.\n")
    embedder = model == EMBEDDER
    manifest = {
        "name": name,
        "version": "1.0.0",
        "task": "feature-extraction" if embedder else "text-generation",
        "modality": "text",
        "runtime": "upstream-openai",
        "provider": "prov",
        "license": "Apache-2.0",
        "artifacts": [{"path": "README.md"}],
        "parameters": {"provider": provider, "model": model},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}
            if embedder
            else {"name": "text", "datatype": "BYTES", "shape": [1]}
        ],
        "pricing": {"unit": "tokens_1k", "price_per_iu": PRICE_PER_IU, "currency": "USD"},
        "card": {"summary": f"{model} served by provider {provider} (an upstream OpenAI-compatible server)."},
    }
    (folder / "modelmarket.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    return folder


def _parallel(*calls: Callable[[], Any]) -> list[Any]:
    """Run independent setup steps at once."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def _wait_ready(url: str, models: tuple[str, ...]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    for model in models:
        while httpx.get(f"{url}/v2/models/{model}/ready", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, f"{model} is not ready on {url}"
            time.sleep(0.2)


def _wait_routes(url: str, key: str) -> None:
    """A reloads its routes every MODELMARKET_CACHE_REFRESH_S: wait until it serves all of them."""
    wanted = set(ROUTES)
    deadline = time.monotonic() + 60
    while True:
        doc = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
        if wanted <= {m["id"] for m in doc["data"] if m.get("route")}:
            return
        assert time.monotonic() < deadline, f"A serves the routes {doc}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def platform(gateway: Gateway, demo_cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("upstream-routing")
    cli = BatchCli(root / "home")
    upstream = BatchCli(demo_cli.home, demo_cli.database_url)
    p1 = ChaosProxy(gateway.url, "p1").start()
    p2 = ChaosProxy(gateway.url, "p2").start()
    try:
        packages = [
            _package(root / "packages", name, provider, model)
            for name, provider, model in [
                ("emb-p1", "p1", EMBEDDER),
                ("emb-p2", "p2", EMBEDDER),
                ("chat-p1", "p1", LLM),
                ("chat-p2", "p2", LLM),
            ]
        ]
        (root / "routes.yaml").write_text(ROUTES_YAML)
        a_setup = [
            ["accounts", "create", "prov", "--role", "provider"],
            *[["providers", "add", p.name, "--base-url", f"{p.url}/v1", "--api-key-env", KEY_ENV] for p in (p1, p2)],
            ["accounts", "create", "alice", "--role", "consumer"],
            ["accounts", "create", "biller", "--role", "consumer"],
            *[["keys", "create", "alice", "--json"] for _ in range(STICKY_KEYS)],
            ["keys", "create", "biller", "--json"],
            *[["publish", str(p)] for p in packages],
            ["routes", "apply", str(root / "routes.yaml")],
        ]
        b_setup = [
            ["accounts", "create", "routing-upstream", "--role", "consumer"],
            ["keys", "create", "routing-upstream", "--json"],
        ]
        a_out, b_out = _parallel(lambda: cli.batch(a_setup), lambda: upstream.batch(b_setup))
        keys = [json.loads(out) for out in a_out[5 : 6 + STICKY_KEYS]]
        upstream_key = json.loads(b_out[1])["key"]
        cli.extra_env[KEY_ENV] = upstream_key  # only A's processes see it, never this test process's environment
        a_gateway = start_gateway(cli, models=())
    except BaseException:
        p1.stop()
        p2.stop()
        raise
    platform = Platform(
        cli=cli,
        gateway=a_gateway,
        p1=p1,
        p2=p2,
        upstream_key=upstream_key,
        consumer_key=keys[0]["key"],
        biller_key=keys[-1]["key"],
        sticky_keys=[(k["key_id"], k["key"]) for k in keys[:STICKY_KEYS]],
    )
    try:
        _wait_routes(a_gateway.url, platform.consumer_key)
        _wait_ready(gateway.url, (EMBEDDER, LLM))  # B's own runners, loading since the session began
        yield platform
    finally:
        for client in platform.clients.values():
            client.close()
        stop_gateway(a_gateway)
        p1.stop()
        p2.stop()


@pytest.fixture(autouse=True)
def healthy_upstreams(platform: Platform) -> Iterator[None]:
    """Every test starts and ends with both proxies forwarding, and nothing left in flight."""
    for proxy in platform.proxies:
        proxy.set("ok", delay_s=1.0)
    yield
    for proxy in platform.proxies:
        proxy.set("ok")
        proxy.wait_idle()


# -- helpers ----------------------------------------------------------------------------------------------------


def _target(route_header: str) -> str:
    """``fallback-embed->emb-p2@1.0.0`` -> ``emb-p2``: the model that answered the call to a route."""
    _, arrow, answered = route_header.partition("->")
    assert arrow, f"not a route's answer: {route_header!r}"
    return answered.partition("@")[0]


def _embed(client: openai.OpenAI, route: str, text: str = "hello") -> tuple[str, Any, Mapping[str, str]]:
    raw = client.embeddings.with_raw_response.create(model=route, input=text)
    answer = raw.parse()
    assert len(answer.data) == 1 and len(answer.data[0].embedding) == 384
    assert answer.model == route  # the caller sees the name it called, not the upstream's
    return _target(raw.headers["x-modelmarket-route"]), answer, raw.headers


def _counts(platform: Platform) -> tuple[int, int]:
    return platform.p1.requests, platform.p2.requests


def _delta(platform: Platform, before: tuple[int, int]) -> tuple[int, int]:
    return platform.p1.requests - before[0], platform.p2.requests - before[1]


# -- 1. fallbacks and upstream errors -------------------------------------------------------------------------


def test_a_failing_or_busy_upstream_falls_back_after_its_retries(platform: Platform) -> None:
    client = platform.client()
    before = _counts(platform)
    assert _embed(client, "fallback-embed")[0] == "emb-p1"
    assert _delta(platform, before) == (1, 0)
    seen = platform.p1.seen[-1]
    assert (seen.path, seen.model) == ("/v1/embeddings", EMBEDDER)  # A calls the upstream's own model name
    assert seen.authorization == f"Bearer {platform.upstream_key}"  # with the key from the env var it names

    for mode in ("fail", "busy"):
        platform.p1.set(mode)
        before = _counts(platform)
        target, answer, headers = _embed(client, "fallback-embed")
        assert target == "emb-p2", mode
        assert headers["x-modelmarket-route"] == "fallback-embed->emb-p2@1.0.0"
        assert _delta(platform, before) == (2, 1), mode  # P1: the attempt and its one retry; then P2
        assert [s.status for s in platform.p1.seen[-2:]] == [500 if mode == "fail" else 429] * 2
        assert answer.usage.prompt_tokens > 0


def test_a_chat_falls_back_plain_and_streamed(platform: Platform) -> None:
    client = platform.client()
    platform.p1.set("fail")
    before = _counts(platform)
    messages: Any = [{"role": "user", "content": "Say hi."}]
    raw = client.chat.completions.with_raw_response.create(
        model="fallback-chat", messages=messages, max_tokens=3, temperature=0
    )
    chat = raw.parse()
    assert _target(raw.headers["x-modelmarket-route"]) == "chat-p2"
    assert chat.model == "fallback-chat"
    assert chat.choices[0].message.content
    assert chat.usage is not None and 1 <= chat.usage.completion_tokens <= 3
    assert _delta(platform, before) == (1, 1)
    assert platform.p2.seen[-1].model == LLM

    streamed = client.chat.completions.with_raw_response.create(
        model="fallback-chat",
        messages=messages,
        max_tokens=3,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    assert _target(streamed.headers["x-modelmarket-route"]) == "chat-p2"
    chunks = list(streamed.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None and 1 <= usage.completion_tokens <= 3
    assert _delta(platform, before) == (2, 2)


def test_without_a_fallback_the_caller_gets_the_sdks_own_errors(platform: Platform) -> None:
    client = platform.client()
    platform.p1.set("busy")
    with pytest.raises(openai.RateLimitError) as busy:
        client.embeddings.create(model="solo-embed", input="hello")
    assert busy.value.status_code == 429
    assert busy.value.response.headers["retry-after"] == str(platform.p1.retry_after_s)  # the upstream's own
    assert BUSY_MESSAGE in busy.value.message and "'p1'" in busy.value.message

    platform.p1.set("fail")
    with pytest.raises(openai.InternalServerError) as failed:
        client.embeddings.create(model="solo-embed", input="hello")
    assert failed.value.status_code == 502
    assert FAILURE_MESSAGE in failed.value.message and "failed (500)" in failed.value.message
    assert platform.upstream_key not in failed.value.response.text  # the upstream's key is never echoed


# -- 2. per-attempt timeout --------------------------------------------------------------------------------------


def test_a_slow_upstream_is_abandoned_at_the_routes_timeout(platform: Platform) -> None:
    client = platform.client()
    platform.p1.set("slow", delay_s=6.0)  # costs nothing: P1 drops the request as soon as A hangs up
    started = time.monotonic()
    target, _, _ = _embed(client, "slow-embed")
    elapsed_s = time.monotonic() - started
    assert target == "emb-p2"
    assert elapsed_s < 6.0  # A did not wait for P1 (timeout_s: 1), however loaded the machine
    platform.p1.wait_idle()
    assert platform.p1.seen[-1].status is None  # A hung up on P1: it never answered and never forwarded

    with pytest.raises(openai.InternalServerError) as timed_out:
        client.embeddings.create(model="slow-solo", input="hello")
    assert timed_out.value.status_code == 502
    assert "within the route's timeout" in timed_out.value.message


# -- 3. weighted splits and sticky routing ----------------------------------------------------------------------


def test_a_non_sticky_split_follows_its_weights(platform: Platform) -> None:
    calls, share = 200, 0.8
    client = platform.client()
    before = _counts(platform)
    with ThreadPoolExecutor(max_workers=6) as pool:
        targets = Counter(pool.map(lambda i: _embed(client, "split-embed", f"text {i}")[0], range(calls)))
    assert set(targets) <= {"emb-p1", "emb-p2"}
    assert _delta(platform, before) == (targets["emb-p1"], targets["emb-p2"])  # each call reached one upstream
    # Each call picks P1 with probability 0.8, independently: the count on P1 is Binomial(200, 0.8), mean 160,
    # standard deviation sqrt(200 * 0.8 * 0.2) = 5.66. Within 4 standard deviations (137..183 calls, a share of
    # 0.687..0.913) it fails by chance about once in 16,000 runs; a split that ignored the weights (0.5) or
    # always took the heavier target (1.0) is far outside.
    bound = 4 * math.sqrt(calls * share * (1 - share))
    assert abs(targets["emb-p1"] - calls * share) <= bound, targets


def test_a_sticky_route_keeps_each_key_on_its_target(platform: Platform) -> None:
    spec = ROUTES["sticky-embed"]
    rng = random.Random(0)  # unused by a sticky route with a key: its order is a hash of (route, key id)
    placed = {}
    for key_id, key in platform.sticky_keys:
        client = platform.client(key)
        targets = {_embed(client, "sticky-embed", f"call {i}")[0] for i in range(8)}
        assert len(targets) == 1, (key_id, targets)  # eight calls, one target
        placed[key_id] = targets.pop()
        assert placed[key_id] == weighted_order(spec, key_id, rng)[0].model  # where the hash of the key puts it

    # The same 50/50 split without stickiness moves one key's calls between both targets (all 16 calls on one
    # target by chance: 2 in 65,536).
    loose = platform.client(platform.sticky_keys[0][1])
    assert {_embed(loose, "loose-embed", f"call {i}")[0] for i in range(16)} == {"emb-p1", "emb-p2"}

    # A key whose target fails moves to the other one for that call, and comes back once it answers again.
    key_id, key = platform.sticky_keys[0]
    home = placed[key_id]
    home_proxy, other = (platform.p1, "emb-p2") if home == "emb-p1" else (platform.p2, "emb-p1")
    home_proxy.set("fail")
    assert _embed(platform.client(key), "sticky-embed")[0] == other
    home_proxy.set("ok")
    assert _embed(platform.client(key), "sticky-embed")[0] == home


# -- 4. the circuit breaker --------------------------------------------------------------------------------------


def test_the_circuit_breaker_opens_refuses_at_once_and_closes_after_a_good_trial(platform: Platform) -> None:
    client = platform.client()
    cooldown_s = 2.0
    assert _embed(client, "breaker-embed")[0] == "emb-p1"

    platform.p1.set("fail")
    for _ in range(2):  # failures: 2
        with pytest.raises(openai.InternalServerError) as failed:
            client.embeddings.create(model="breaker-embed", input="hello")
        assert failed.value.status_code == 502
    opened_at = time.monotonic()
    seen = platform.p1.requests

    with pytest.raises(openai.InternalServerError) as refused:  # the circuit is open: P1 is not even asked
        client.embeddings.create(model="breaker-embed", input="hello")
    assert refused.value.status_code == 503
    assert "route 'breaker-embed' is unavailable" in refused.value.message
    assert 1 <= int(refused.value.response.headers["retry-after"]) <= cooldown_s  # when the cooldown ends
    assert platform.p1.requests == seen

    # After the cooldown the circuit is half-open: one trial call goes through; it fails, so the circuit opens
    # for another cooldown.
    time.sleep(max(0.0, opened_at + cooldown_s + 0.2 - time.monotonic()))
    with pytest.raises(openai.InternalServerError) as trial:
        client.embeddings.create(model="breaker-embed", input="hello")
    assert trial.value.status_code == 502
    assert platform.p1.requests == seen + 1
    reopened_at = time.monotonic()
    with pytest.raises(openai.InternalServerError) as again:
        client.embeddings.create(model="breaker-embed", input="hello")
    assert again.value.status_code == 503
    assert platform.p1.requests == seen + 1

    # P1 recovers; after the cooldown the trial succeeds and closes the circuit: calls flow as before.
    platform.p1.set("ok")
    time.sleep(max(0.0, reopened_at + cooldown_s + 0.2 - time.monotonic()))
    assert _embed(client, "breaker-embed")[0] == "emb-p1"
    assert [_embed(client, "breaker-embed")[0] for _ in range(3)] == ["emb-p1"] * 3
    assert platform.p1.requests == seen + 5


# -- 5. lowest latency -------------------------------------------------------------------------------------------


def test_lowest_latency_moves_to_the_faster_upstream(platform: Platform) -> None:
    client = platform.client()
    platform.p1.set("slow", delay_s=0.8)
    targets = [_embed(client, "fastest-embed", f"call {i}")[0] for i in range(8)]
    # Unmeasured targets go first, in declared order, so each gets measured; then the faster one (P2, 0.8 s
    # faster) takes the calls. One hiccup of the machine may send a single call back to P1.
    assert targets[:2] == ["emb-p1", "emb-p2"]
    assert targets[2:].count("emb-p2") >= 5, targets


# -- 6. usage and billing ----------------------------------------------------------------------------------------


def _usage(url: str, key: str) -> dict[str, tuple[int, int, Fraction]]:
    doc = httpx.get(f"{url}/api/usage", headers={"Authorization": f"Bearer {key}"}, timeout=30).json()
    return {m["model"]: (m["events"], m["quantity"], Fraction(m["amount"])) for m in doc["models"]}


def _wait_usage(url: str, key: str, events: int, timeout_s: float = 60) -> dict[str, tuple[int, int, Fraction]]:
    """The account's usage once the gateway's metering child has applied ``events`` events (or more)."""
    deadline = time.monotonic() + timeout_s
    while True:
        usage = _usage(url, key)
        if sum(e for e, _, _ in usage.values()) >= events or time.monotonic() > deadline:
            return usage
        time.sleep(0.1)


def test_successful_upstream_calls_are_billed_at_the_upstreams_tokens_and_failed_ones_not(
    platform: Platform,
) -> None:
    url, key = platform.gateway.url, platform.biller_key
    client = platform.client(key)
    price = Fraction(PRICE_PER_IU)
    tokens = {"emb-p1": 0, "emb-p2": 0}
    for text in ("one", "a few more words here", "and a somewhat longer sentence to embed, with punctuation."):
        target, answer, headers = _embed(client, "billed-embed", text)
        assert target == "emb-p1"
        reported = platform.p1.seen[-1].usage
        assert reported is not None and answer.usage.prompt_tokens == reported["prompt_tokens"]  # B's count
        iu = Fraction(answer.usage.prompt_tokens, 1000)
        assert Fraction(headers["x-modelmarket-iu"]) == iu
        assert Fraction(headers["x-modelmarket-cost"].split()[0]) == iu * price
        assert headers["x-modelmarket-cost"].endswith(" USD")
        tokens["emb-p1"] += answer.usage.prompt_tokens

    platform.p1.set("fail")  # answered by the fallback: billed as the model that answered
    target, answer, _ = _embed(client, "billed-embed", "fallback")
    assert target == "emb-p2"
    tokens["emb-p2"] += answer.usage.prompt_tokens
    usage = _wait_usage(url, key, 4)
    assert usage == {
        "emb-p1": (3, tokens["emb-p1"], tokens["emb-p1"] * price / 1000),
        "emb-p2": (1, tokens["emb-p2"], tokens["emb-p2"] * price / 1000),
    }

    platform.p2.set("fail")  # nothing answers: the caller gets 502 and is billed nothing
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="billed-embed", input="not billed")
    platform.p1.set("ok")
    platform.p2.set("ok")
    _, answer, _ = _embed(client, "billed-embed", "sentinel")  # metered after the failed call, if it were
    usage = _wait_usage(url, key, 5)
    assert usage["emb-p1"][:2] == (4, tokens["emb-p1"] + answer.usage.prompt_tokens)
    assert usage["emb-p2"][:2] == (1, tokens["emb-p2"])


def test_the_upstream_billed_a_for_every_call_it_answered(platform: Platform, gateway: Gateway) -> None:
    """B's side of the chain: A's account on B has one event for each call a proxy forwarded and B answered."""
    answered = sum(1 for p in platform.proxies for s in p.seen if s.status == 200)
    assert answered > 0
    usage = _wait_usage(gateway.url, platform.upstream_key, answered)
    assert sum(e for e, _, _ in usage.values()) == answered
    assert set(usage) <= {EMBEDDER, LLM}
