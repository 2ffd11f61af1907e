"""Routes and providers on SQLite and PostgreSQL: apply, re-apply, prune and remove routes; add, update and
remove providers; every change audited in the same transaction; an API key's value never reaches the store or the
audit log; and the CLI (click's CliRunner) over the same store."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from sqlalchemy import select

from engines import developer_setting
from modelmarket.adapters.store import SqlStore
from modelmarket.adapters.store import schema as t
from modelmarket.audit import chain
from modelmarket.cli.main import cli
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.demo._sentiment import build_sentiment
from modelmarket.registry.manifest import MANIFEST_NAME
from modelmarket.routing import Router, RoutingService

pytestmark = pytest.mark.timeout(120)

PUBLISHED = {"smollm2-135m-instruct", "smol-upstream", "minilm-embed"}
ROUTES = """\
routes:
  - name: chat
    targets:
      - {model: smollm2-135m-instruct, weight: 80}
      - {model: smol-upstream, weight: 20}
    fallbacks: [smollm2-135m-instruct@1.0.0]
  - name: embed
    strategy: least-busy
    targets: [{model: minilm-embed}]
"""


class StepClock:
    """Each reading one second after the last (so updated_at shows which write came last)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture()
def svc(store: SqlStore) -> RoutingService:
    return RoutingService(store, StepClock(), published_models=lambda: PUBLISHED)


def audit_log(store: SqlStore) -> list[tuple[str, str, dict[str, Any]]]:
    with store.read() as uow:
        assert chain.verify(uow.audit).ok
        return [(r.action, r.subject, r.payload) for r in chain.list_records(uow.audit, 1000)]


def every_stored_value(store: SqlStore) -> str:
    """Every row of every table, as text."""
    out = []
    with store.read() as uow:
        for table in t.metadata.sorted_tables:
            out += [repr(tuple(row)) for row in uow.conn.execute(select(table))]
    return "\n".join(out)


# -- routes ----------------------------------------------------------------------------------------------------


def test_apply_creates_then_reapplying_changes_nothing_then_a_change_is_the_next_revision(
    store: SqlStore, svc: RoutingService
) -> None:
    first = svc.apply(ROUTES)
    assert [(c.name, c.action, c.revision) for c in first] == [("chat", "created", 1), ("embed", "created", 1)]
    stored = {r.name: r for r in svc.routes()}
    assert list(stored) == ["chat", "embed"]
    assert stored["chat"].spec.targets[1].weight == 20
    assert stored["chat"].digest == first[0].digest
    assert stored["chat"].updated_at == "2026-03-01T00:00:01+00:00"

    again = svc.apply(ROUTES)
    assert [(c.action, c.revision) for c in again] == [("unchanged", 1), ("unchanged", 1)]
    assert {r.name: r for r in svc.routes()} == stored  # not even updated_at moved

    changed = svc.apply(ROUTES.replace("weight: 20", "weight: 30"))
    assert [(c.name, c.action, c.revision) for c in changed] == [("chat", "changed", 2), ("embed", "unchanged", 1)]
    chat = svc.route("chat")
    assert (chat.revision, chat.spec.targets[1].weight) == (2, 30)
    assert chat.digest != stored["chat"].digest

    log = audit_log(store)
    assert [(a, s) for a, s, _ in log] == [
        ("route.created", "chat"),
        ("route.created", "embed"),
        ("route.changed", "chat"),
    ]
    assert log[2][2]["revision"] == 2
    assert log[2][2]["digest"] == chat.digest
    assert log[2][2]["spec"]["targets"][1] == {"model": "smol-upstream", "weight": 30}
    assert log[2][2]["spec"]["timeout_s"] == "60.0"  # seconds as decimal text: the audit chain holds no floats


def test_routes_not_in_the_file_stay_unless_pruned(store: SqlStore, svc: RoutingService) -> None:
    svc.apply(ROUTES)
    only_chat = ROUTES.split("  - name: embed")[0]
    assert [c.action for c in svc.apply(only_chat)] == ["unchanged"]
    assert [r.name for r in svc.routes()] == ["chat", "embed"]

    pruned = svc.apply(only_chat, prune=True)
    assert [(c.name, c.action, c.revision) for c in pruned] == [("chat", "unchanged", 1), ("embed", "removed", 1)]
    assert [r.name for r in svc.routes()] == ["chat"]
    assert audit_log(store)[-1][:2] == ("route.removed", "embed")

    assert [(c.name, c.action) for c in svc.apply("routes: []", prune=True)] == [("chat", "removed")]
    assert svc.routes() == []


def test_remove_a_route(store: SqlStore, svc: RoutingService) -> None:
    svc.apply(ROUTES)
    change = svc.remove_route("embed")
    assert (change.action, change.revision) == ("removed", 1)
    with pytest.raises(NotFound, match="no route named 'embed'"):
        svc.route("embed")
    with pytest.raises(NotFound, match="no route named 'embed'"):
        svc.remove_route("embed")
    assert [(a, s) for a, s, _ in audit_log(store)][-1] == ("route.removed", "embed")
    # re-creating it starts a new history at revision 1
    assert [(c.name, c.action, c.revision) for c in svc.apply(ROUTES)][1] == ("embed", "created", 1)


def test_a_bad_file_applies_nothing(store: SqlStore, svc: RoutingService) -> None:
    svc.apply(ROUTES)
    before = (svc.routes(), audit_log(store))
    bad = ROUTES.replace("weight: 20", "weight: 30") + "  - name: other\n    targets: [{model: not-published}]\n"
    with pytest.raises(InvalidInput, match=r"routes\[2\]\.targets\[0\]\.model: model 'not-published' is not published"):
        svc.apply(bad, prune=True)
    shadow = ROUTES.replace("name: embed", "name: minilm-embed").replace(
        "{model: minilm-embed}", "{model: smol-upstream}"
    )
    with pytest.raises(InvalidInput, match="'minilm-embed' is a published model; a route of that name would shadow"):
        svc.apply(shadow)
    with pytest.raises(InvalidInput, match=r"routes\[0\]\.targets\[1\]\.weight"):
        svc.apply(ROUTES.replace("weight: 20", "weight: -1"))
    assert (svc.routes(), audit_log(store)) == before


def test_the_stored_routes_make_the_gateways_table(svc: RoutingService) -> None:
    svc.apply(ROUTES)
    router = Router(svc.table())
    assert router.table.names() == ["chat", "embed"]
    plan = router.plan("chat", "key-1")
    assert sorted(plan[:2]) == ["smol-upstream", "smollm2-135m-instruct"]
    assert plan[2:] == ["smollm2-135m-instruct@1.0.0"]
    assert router.plan("embed") == ["minilm-embed"]


# -- providers -------------------------------------------------------------------------------------------------


@pytest.fixture()
def sentinel(monkeypatch: pytest.MonkeyPatch) -> str:
    value = f"sk-sentinel-{uuid.uuid4().hex}"
    monkeypatch.setenv("MM_TEST_UPSTREAM_KEY", value)
    return value


def test_providers_add_update_remove_audited_and_the_key_is_never_stored(
    store: SqlStore, svc: RoutingService, sentinel: str
) -> None:
    created = svc.add_provider("upstream", "https://api.example.com/v1/", api_key_env="MM_TEST_UPSTREAM_KEY")
    assert created.action == "created"
    p = svc.provider("upstream")
    assert (p.base_url, p.protocol, p.api_key_env) == ("https://api.example.com/v1", "openai", "MM_TEST_UPSTREAM_KEY")
    assert p.api_key() == sentinel  # read from the environment at call time

    same = svc.add_provider("upstream", "https://api.example.com/v1", api_key_env="MM_TEST_UPSTREAM_KEY")
    assert same.action == "unchanged"
    assert svc.provider("upstream").updated_at == p.updated_at

    changed = svc.add_provider("upstream", "http://127.0.0.1:9000", protocol="oip", api_key_env="MM_TEST_UPSTREAM_KEY")
    assert changed.action == "changed"
    assert changed.changed == (
        ("base_url", "https://api.example.com/v1", "http://127.0.0.1:9000"),
        ("protocol", "openai", "oip"),
    )
    q = svc.provider("upstream")
    assert (q.created_at, q.protocol) == (p.created_at, "oip")
    assert q.updated_at > p.updated_at

    svc.add_provider("other", "http://h:1")
    assert [x.name for x in svc.providers()] == ["other", "upstream"]
    svc.remove_provider("upstream")
    with pytest.raises(NotFound, match="no provider named 'upstream'"):
        svc.provider("upstream")
    with pytest.raises(NotFound):
        svc.remove_provider("upstream")

    log = audit_log(store)
    assert [(a, s) for a, s, _ in log] == [
        ("provider.created", "upstream"),
        ("provider.changed", "upstream"),
        ("provider.created", "other"),
        ("provider.removed", "upstream"),
    ]
    assert log[0][2] == {
        "base_url": "https://api.example.com/v1",
        "protocol": "openai",
        "api_key_env": "MM_TEST_UPSTREAM_KEY",
    }
    assert sentinel not in every_stored_value(store)
    assert sentinel not in json.dumps(log)


def test_a_refused_provider_writes_nothing(store: SqlStore, svc: RoutingService) -> None:
    with pytest.raises(InvalidInput, match="put the key in an environment variable and pass --api-key-env"):
        svc.add_provider("up", "https://user:pw@h/v1")
    with pytest.raises(InvalidInput, match="api_key_env"):
        svc.add_provider("up", "https://h/v1", api_key_env="sk-not-a-name")
    assert svc.providers() == []
    assert audit_log(store) == []


# -- the CLI ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sentiment_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pkg")
    build_sentiment(root / "sentiment", root / "examples", progress=lambda _: None)
    return root / "sentiment"


def renamed(package: Path, dest: Path, name: str) -> Path:
    shutil.copytree(package, dest / name)
    path = dest / name / MANIFEST_NAME
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["name"] = name
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return dest / name


@dataclass
class Mm:
    runner: CliRunner
    dir: Path

    def run(self, *args: str, code: int = 0) -> Result:
        result = self.runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == code, f"modelmarket {' '.join(args)}: {result.exit_code}\n{result.output}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def file(self, name: str, text: str) -> str:
        path = self.dir / name
        path.write_text(text)
        return str(path)


@pytest.fixture()
def mm(store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sentiment_package: Path) -> Iterator[Mm]:
    """The CLI on the test's store (SQLite or PostgreSQL), with models sent-a and sent-b published."""
    for name in list(os.environ):
        if developer_setting(name):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MODELMARKET_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MODELMARKET_GATE_REVIEW", "auto")  # the gate approves what passes its stages
    monkeypatch.setenv("MODELMARKET_DATABASE_URL", store.url)
    mm = Mm(CliRunner(), tmp_path)
    mm.run("accounts", "create", "demo-provider", "--role", "provider")
    for name in ("sent-a", "sent-b"):
        mm.run("publish", str(renamed(sentiment_package, tmp_path, name)))
    yield mm


CLI_ROUTES = """\
routes:
  - name: mood
    targets: [{model: sent-a, weight: 3}, {model: sent-b}]
    fallbacks: [sent-a@1.0.0]
    retries: {attempts: 2, backoff_ms: 50}
  - name: mood-fast
    strategy: lowest-latency
    targets: [{model: sent-b}, {model: sent-a}]
"""


def test_cli_routes_apply_list_show_remove(mm: Mm, store: SqlStore) -> None:
    path = mm.file("routes.yaml", CLI_ROUTES)
    out = mm.run("routes", "apply", path).stdout
    assert "mood       created  r1" in out
    assert "mood-fast  created  r1" in out
    again = mm.run("routes", "apply", path).stdout
    assert "nothing changed: every route is as declared" in again

    listed = mm.json("routes", "list")
    assert [(r["name"], r["revision"], r["strategy"]) for r in listed] == [
        ("mood", 1, "weighted"),
        ("mood-fast", 1, "lowest-latency"),
    ]
    assert "sent-a (3), sent-b (1)" in mm.run("routes", "list").stdout
    shown = mm.run("routes", "show", "mood").stdout
    assert "target sent-a  weight 3 (75.0%)" in shown
    assert "fallback sent-a@1.0.0" in shown
    assert "retries: 2 extra attempt(s) per target, backoff 50 ms doubled per attempt" in shown
    assert mm.json("routes", "show", "mood")["targets"] == [
        {"model": "sent-a", "weight": 3},
        {"model": "sent-b", "weight": 1},
    ]

    only = mm.file("only.yaml", CLI_ROUTES.split("  - name: mood-fast")[0])
    pruned = mm.json("routes", "apply", only, "--prune")
    assert [(r["route"], r["action"]) for r in pruned] == [("mood", "unchanged"), ("mood-fast", "removed")]
    assert "route mood removed (it was revision 1)" in mm.run("routes", "remove", "mood").stdout
    assert "no routes yet" in mm.run("routes", "list").stdout
    assert "no route named 'mood'" in mm.run("routes", "show", "mood", code=1).output
    actions = [a for a, _, _ in audit_log(store) if a.startswith("route.")]
    assert actions == ["route.created", "route.created", "route.removed", "route.removed"]


def test_cli_routes_apply_checks_the_catalogue_and_names_the_file(mm: Mm) -> None:
    shadow = mm.file("shadow.yaml", "routes: [{name: sent-a, targets: [{model: sent-b}]}]")
    out = mm.run("routes", "apply", shadow, code=1).output
    assert f"{shadow}: routes[0].name: 'sent-a' is a published model; a route of that name would shadow it" in out
    unknown = mm.file("unknown.yaml", "routes: [{name: mood, targets: [{model: sent-a}, {model: nope@1.0.0}]}]")
    out = mm.run("routes", "apply", unknown, code=1).output
    assert "routes[0].targets[1].model: model 'nope' is not published (route 'mood')" in out
    bad = mm.file("bad.yaml", "routes: [{name: mood, targets: [{model: sent-a, weight: 0}]}]")
    assert "routes[0].targets[0].weight: must be between 1" in mm.run("routes", "apply", bad, code=1).output
    assert mm.json("routes", "list") == []


def test_cli_providers_never_print_or_store_the_key(mm: Mm, store: SqlStore, sentinel: str) -> None:
    add = ("providers", "add", "upstream", "--base-url", "https://api.example.com/v1", "--api-key-env")
    out = mm.run(*add, "MM_TEST_UPSTREAM_KEY").stdout
    assert (
        out.strip()
        == "provider upstream added: openai at https://api.example.com/v1, API key from $MM_TEST_UPSTREAM_KEY"
    )
    assert mm.run(*add, "MM_TEST_UPSTREAM_KEY").stdout.strip() == "provider upstream: unchanged"
    out = mm.run("providers", "add", "upstream", "--base-url", "https://api.example.com/v2").stdout
    assert out.strip() == (
        "provider upstream changed: base_url https://api.example.com/v1 -> https://api.example.com/v2; "
        "api_key_env MM_TEST_UPSTREAM_KEY -> (none)"
    )
    mm.run(*add, "MM_TEST_UPSTREAM_KEY")
    listed = mm.run("providers", "list").stdout
    assert "upstream  openai    https://api.example.com/v1  MM_TEST_UPSTREAM_KEY" in listed
    [doc] = mm.json("providers", "list")
    assert {k: doc[k] for k in ("name", "protocol", "api_key_env")} == {
        "name": "upstream",
        "protocol": "openai",
        "api_key_env": "MM_TEST_UPSTREAM_KEY",
    }
    in_url = mm.run("providers", "add", "x", "--base-url", f"https://u:{sentinel}@h", code=1).output
    assert "put the key in an environment variable and pass --api-key-env" in in_url
    as_name = mm.run("providers", "add", "x", "--base-url", "https://h", "--api-key-env", sentinel, code=1).output
    assert "api_key_env: is not an environment variable name" in as_name
    assert mm.run("providers", "remove", "upstream").stdout.strip() == "provider upstream removed"
    assert "no provider named 'upstream'" in mm.run("providers", "remove", "upstream", code=1).output
    assert "no providers yet" in mm.run("providers", "list").stdout
    for text in (in_url, as_name, listed, json.dumps(audit_log(store)), every_stored_value(store)):
        assert sentinel not in text
