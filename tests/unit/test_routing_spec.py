"""The routes file and providers: strict parsing, errors that name the route and the field, the canonical digest,
the example in docs/routing.md, provider validation (never echoing a secret), and the service on fakes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fakes import FakeStore
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.core.uow import Lock
from modelmarket.routing import Provider, RoutingService, make_provider, parse_routes
from modelmarket.routing.spec import MAX_ROUTES_FILE_BYTES, RouteSpec

DOC = Path(__file__).resolve().parents[2] / "docs" / "routing.md"
MINIMAL = "routes:\n  - name: chat\n    targets: [{model: a}]\n"


def first_yaml_block(text: str) -> str:
    match = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert match, "docs/routing.md has no ```yaml block"
    return match.group(1)


def test_the_example_in_the_docs_parses_to_what_it_says() -> None:
    chat, embed = parse_routes(first_yaml_block(DOC.read_text()), "docs/routing.md")
    assert chat.to_json() == {
        "name": "chat",
        "strategy": "weighted",
        "sticky": True,
        "targets": [{"model": "smollm2-135m-instruct", "weight": 80}, {"model": "smol-upstream", "weight": 20}],
        "fallbacks": ["smollm2-135m-instruct@1.0.0"],
        "retries": {"attempts": 1, "backoff_ms": 100},
        "timeout_s": 60.0,
        "circuit_breaker": {"failures": 3, "cooldown_s": 30.0},
    }
    assert chat.backoff_s(1) == 0.1 and chat.backoff_s(2) == 0.2
    assert embed.strategy == "lowest-latency"
    assert embed.refs == ("minilm-embed", "minilm-embed@stable")


def test_defaults_are_written_out_in_the_canonical_form() -> None:
    (spec,) = parse_routes(MINIMAL)
    assert spec.to_json() == {
        "name": "chat",
        "strategy": "weighted",
        "sticky": True,
        "targets": [{"model": "a", "weight": 1}],
        "fallbacks": [],
        "retries": {"attempts": 0, "backoff_ms": 100},
        "timeout_s": 60.0,
        "circuit_breaker": {"failures": 3, "cooldown_s": 30.0},
    }


def test_the_digest_depends_on_meaning_not_on_how_it_is_written() -> None:
    (short,) = parse_routes(MINIMAL)
    (spelled,) = parse_routes(
        "routes:\n"
        "  - targets:\n      - weight: 1\n        model: a\n"
        "    timeout_s: 60.0\n    name: chat   # a comment\n    strategy: weighted\n    sticky: true\n"
        "    circuit_breaker: {cooldown_s: 30, failures: 3}\n"
    )
    assert short.digest == spelled.digest
    assert len(short.digest) == 64
    (other,) = parse_routes(MINIMAL.replace("{model: a}", "{model: a, weight: 2}"))
    assert other.digest != short.digest
    assert RouteSpec.from_json(short.to_json()) == short  # the stored form reads back as the same route


def test_non_weighted_routes_have_no_weights_in_their_canonical_form() -> None:
    (spec,) = parse_routes("routes: [{name: idle, strategy: least-busy, targets: [{model: a}, {model: b}]}]")
    assert spec.to_json()["targets"] == [{"model": "a"}, {"model": "b"}]
    assert "sticky" not in spec.to_json()
    assert RouteSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "routes: [{name: chat, targets: [{model: a}, {model: b, weight: 0}]}]",
            "routes[0].targets[1].weight: must be between 1 and 1000000, got 0 (route 'chat')",
        ),
        (
            "routes: [{name: chat, targets: [{model: a, weight: 1.5}]}]",
            "routes[0].targets[0].weight: must be a whole number",
        ),
        ("routes: [{name: chat@v1, targets: [{model: a}]}]", "routes[0].name: 'chat@v1': a route name is a plain"),
        ("routes: [{name: Chat, targets: [{model: a}]}]", "routes[0].name: 'Chat' must be 1-63 lowercase"),
        ("routes: [{name: chat, targets: []}]", "routes[0].targets: must list 1 to 16 targets"),
        (
            "routes: [{name: chat, targets: [" + ", ".join(f"{{model: m{i}}}" for i in range(17)) + "]}]",
            "routes[0].targets: must list 1 to 16 targets",
        ),
        ("routes: [{name: chat, targets: [{model: a@1.0}]}]", "routes[0].targets[0].model: 'a@1.0': after '@'"),
        ("routes: [{name: chat, targets: [{model: A}]}]", "routes[0].targets[0].model: 'A' is not a model name"),
        ("routes: [{name: chat, targets: [{model: chat@1.0.0}]}]", "a route cannot name itself"),
        (
            "routes: [{name: chat, targets: [{model: a}], fallbacks: [b, a]}]",
            "routes[0].fallbacks[1]: 'a' is already listed at targets[0].model",
        ),
        ("routes: [{name: chat, targets: [{model: a}], fallbacks: [b, Bad]}]", "routes[0].fallbacks[1]: 'Bad'"),
        (
            "routes: [{name: chat, targets: [{model: a}], fallbacks: [b, c, d, e, f, g, h, i, j]}]",
            "routes[0].fallbacks: must be a list of at most 8",
        ),
        (
            "routes: [{name: idle, strategy: least-busy, targets: [{model: a}, {model: b, weight: 2}]}]",
            "routes[0].targets[1].weight: only a weighted route has weights (this one is least-busy)",
        ),
        (
            "routes: [{name: idle, strategy: lowest-latency, sticky: false, targets: [{model: a}]}]",
            "routes[0].sticky: only a weighted route is sticky",
        ),
        ("routes: [{name: chat, strategy: fastest, targets: [{model: a}]}]", "routes[0].strategy: 'fastest' is not"),
        ("routes: [{name: chat, targets: [{model: a}], retries: {attempts: 6}}]", "routes[0].retries.attempts:"),
        (
            "routes: [{name: chat, targets: [{model: a}], retries: {backoff_ms: 10001}}]",
            "routes[0].retries.backoff_ms: must be between 0 and 10000",
        ),
        ("routes: [{name: chat, targets: [{model: a}], timeout_s: 0}]", "routes[0].timeout_s: must be more than 0"),
        ("routes: [{name: chat, targets: [{model: a}], timeout_s: 601}]", "routes[0].timeout_s: must be more than 0"),
        (
            "routes: [{name: chat, targets: [{model: a}], circuit_breaker: {failures: 0}}]",
            "routes[0].circuit_breaker.failures: must be between 1 and 100",
        ),
        (
            "routes: [{name: chat, targets: [{model: a}], circuit_breaker: {cooldown_s: 0}}]",
            "routes[0].circuit_breaker.cooldown_s: must be more than 0",
        ),
        ("routes: [{name: chat, targets: [{model: a, wieght: 2}]}]", "routes[0].targets[0].wieght: is not a field"),
        ("routes: [{name: chat, targets: [{model: a}], sticky: 1}]", "routes[0].sticky: must be true or false"),
        ("routes: [{targets: [{model: a}]}]", "routes[0].name: is required"),
        ("routes: [{name: chat, targets: [{weight: 2}]}]", "routes[0].targets[0].model: is required (route 'chat')"),
        (
            "routes: [{name: chat, targets: [{model: a}]}, {name: chat, targets: [{model: b}]}]",
            "routes[1].name: route 'chat' is already declared at routes[0]",
        ),
        ("routes: [{name: chat, targets: [{model: a}], timeout_s: 0x10}]", "write the number '0x10' in plain"),
        ("routes: {chat: 1}", "must be a mapping with a 'routes' list"),
        ("routes: []\nextra: 1", "unknown top-level field(s) ['extra']"),
        ("routes: []\nroutes: []", "key 'routes' is given twice"),
        ("x: &a [1]\nroutes: *a", "anchors and aliases"),
        ("routes: [", "is not valid YAML"),
    ],
)
def test_errors_name_the_route_and_the_field(text: str, error: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_routes(text)
    assert error in caught.value.message


def test_an_oversized_file_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(InvalidInput, match=f"larger than {MAX_ROUTES_FILE_BYTES} bytes"):
        parse_routes("#" * (MAX_ROUTES_FILE_BYTES + 1))


def test_an_empty_routes_list_is_a_valid_file() -> None:
    assert parse_routes("routes: []") == []


# -- providers ---------------------------------------------------------------------------------------------


def test_a_provider_reads_its_api_key_from_the_environment_at_call_time() -> None:
    p = make_provider("up", "https://api.example.com/v1/", "openai", "UP_KEY")
    assert p.base_url == "https://api.example.com/v1"  # trailing slash dropped
    env = {"UP_KEY": "sk-live"}
    assert p.api_key(env) == "sk-live"
    env["UP_KEY"] = "sk-rotated"
    assert p.api_key(env) == "sk-rotated"
    assert p.api_key({}) is None
    assert p.api_key({"UP_KEY": ""}) is None
    assert make_provider("up", "http://127.0.0.1:9000").api_key(env) is None
    assert "sk-" not in repr(p)


@pytest.mark.parametrize(
    ("name", "url", "protocol", "env", "error"),
    [
        ("Up", "http://h", "openai", None, "name: 'Up' must be 1-63 lowercase"),
        ("-up", "http://h", "openai", None, "name: '-up'"),
        ("up", "ftp://h", "openai", None, "base_url: must start with http:// or https://"),
        ("up", "h:80", "openai", None, "base_url: must start with http://"),
        ("up", "http://", "openai", None, "base_url: has no host"),
        ("up", "http://h:99999", "openai", None, "base_url: the port is not a number"),
        ("up", "http://h/v1?x=1", "openai", None, "base_url: must not have a query"),
        ("up", "http://h/v1#frag", "openai", None, "base_url: must not have a query (?...) or a fragment"),
        ("up", "http://h/" + "a" * 500, "openai", None, "base_url: is 509 characters long; at most 500"),
        ("up", "http://h /v1", "openai", None, "base_url: must not contain spaces"),
        ("up", "http://h", "grpc", None, "protocol: 'grpc' is not a protocol (openai or oip)"),
        ("up", "http://h", "openai", "lower_case", "api_key_env: is not an environment variable name"),
        ("up", "http://h", "openai", "1ABC", "api_key_env: is not an environment variable name"),
        ("up", "http://h", "openai", "A" * 101, "api_key_env: is not an environment variable name"),
    ],
)
def test_provider_fields_are_checked_with_errors_naming_the_field(
    name: str, url: str, protocol: str, env: str | None, error: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        make_provider(name, url, protocol, env)
    assert error in caught.value.message


@pytest.mark.parametrize(
    ("url", "env"),
    [
        ("https://user:s3cr3t-value@api.example.com/v1", None),
        ("https://:s3cr3t-value@api.example.com", None),
        ("https://api.example.com/v1?api_key=s3cr3t-value", None),
        ("ftp://u:s3cr3t-value@h", None),
        ("https://api.example.com", "sk-s3cr3t-value"),  # the key itself, passed by mistake
    ],
)
def test_a_refused_credential_is_never_echoed(url: str, env: str | None) -> None:
    with pytest.raises(InvalidInput) as caught:
        make_provider("up", url, "openai", env)
    assert "s3cr3t" not in caught.value.message
    if "@" in url:
        assert "put the key in an environment variable and pass --api-key-env" in caught.value.message


def test_accepted_urls() -> None:
    assert make_provider("up", "http://[::1]:8080").base_url == "http://[::1]:8080"
    assert make_provider("up", "HTTPS://Api.Example.com/v1").base_url == "HTTPS://Api.Example.com/v1"
    assert make_provider("up", "http://h:8080/", "oip").protocol == "oip"


# -- the service on fakes ----------------------------------------------------------------------------------


def service(store: FakeStore, published: set[str] | None = None) -> RoutingService:
    return RoutingService(store, lambda: datetime(2026, 1, 1, tzinfo=UTC), published_models=published)


def test_the_service_applies_under_the_routing_lock_and_checks_the_injected_catalogue() -> None:
    store = FakeStore()
    svc = service(store, {"a", "b"})
    (change,) = svc.apply(MINIMAL)
    assert (change.action, change.revision) == ("created", 1)
    assert store.locks == [(Lock.ROUTING, "")]
    with pytest.raises(InvalidInput, match=r"routes\[0\]\.targets\[0\]\.model: model 'zz' is not published"):
        svc.apply(MINIMAL.replace("model: a", "model: zz@1.0.0"))
    with pytest.raises(InvalidInput, match="'a' is a published model; a route of that name would shadow it"):
        svc.apply(MINIMAL.replace("name: chat", "name: a").replace("model: a", "model: b"))
    # an explicit set (or callable) passed to apply wins over the constructor's
    (change,) = svc.apply(MINIMAL.replace("model: a", "model: zz"), models=lambda: {"zz"})
    assert (change.action, change.revision) == ("changed", 2)
    assert [r.spec.targets[0].model for r in svc.routes()] == ["zz"]
    assert [r.action for r, _ in store.state.audit] == ["route.created", "route.changed"]


def test_the_service_refuses_unknown_names_and_keeps_providers() -> None:
    store = FakeStore()
    svc = service(store)
    with pytest.raises(NotFound, match="no route named 'nope'"):
        svc.route("nope")
    with pytest.raises(NotFound, match="no provider named 'nope'"):
        svc.remove_provider("nope")
    change = svc.add_provider("up", "http://h:1/v1", api_key_env="UP_KEY")
    assert change.action == "created"
    assert svc.providers() == [
        Provider("up", "http://h:1/v1", "openai", "UP_KEY", "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00")
    ]
