"""Catalogue search on a real store (SQLite and PostgreSQL): measured figures from usage events metered through the
event log, ``GET /api/models`` through the in-process gateway, and ``modelmarket models search`` (CliRunner)."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import event

from engines import append_to_log
from modelmarket.adapters.store import SqlStore
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.cli.main import cli
from modelmarket.gateway.api import ApiContext, build_router
from modelmarket.gateway.app import GatewayApp, GatewayParts
from modelmarket.gateway.auth import authenticate
from modelmarket.gateway.dataplane import DataPlane
from modelmarket.gateway.state import GatewayState
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.ports import ModelActivity
from modelmarket.metering.units import UnitKind
from modelmarket.registry import CatalogueLoader
from modelmarket.registry.search import LATENCY_SAMPLE_MAX
from modelmarket.settings import Settings

pytestmark = pytest.mark.timeout(180)

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
TODAY, WEEK_START = "2026-03-10", "2026-03-04"
_ids = itertools.count(1)
PRICES = {"digits": "0.0010", "sentiment": "0.0200", "speech-to-text": "0.0060"}
UNITS = {"digits": UnitKind.IMAGE, "sentiment": UnitKind.TOKENS_1K, "speech-to-text": UnitKind.AUDIO_MINUTE}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture()
def platform(store: SqlStore, tmp_path: Path, demo_dir: Path) -> Iterator[Platform]:
    plat = bootstrap(Settings(home=tmp_path / "home"), store=store, clock=Clock(), runtimes=PluginRuntimes())
    plat.accounts.create("demo-provider", "provider")
    plat.accounts.create("buyer", "consumer")
    for name in ("digits", "sentiment", "speech-to-text"):
        plat.registry.publish(demo_dir / name)
    yield plat


def serve(platform: Platform, model: str, latencies_ms: list[str], at: datetime) -> None:
    """Served calls of ``model``, one a minute from ``at``, appended to the event log as the gateway appends them,
    then metered (the metering service applies the log to ``usage_events`` and ``usage_daily``)."""
    with platform.store.read() as uow:
        buyer = uow.accounts.by_name("buyer")
        provider = uow.accounts.by_name("demo-provider")
    assert buyer is not None and provider is not None
    events = [
        UsageEvent(
            id=f"evt-{next(_ids):08d}",
            source="gateway-1",
            account_id=buyer.id,
            time=at + timedelta(minutes=i),
            model=model,
            version="1.0.0",
            provider_account_id=provider.id,
            unit_kind=UNITS[model],
            quantity=1,
            unit_price=Decimal(PRICES[model]),
            currency="USD",
            latency_ms=Decimal(ms),
        )
        for i, ms in enumerate(latencies_ms)
    ]
    append_to_log(platform, [(e.id, e.encode()) for e in events])
    platform.metering.catch_up()


@pytest.fixture()
def traffic(platform: Platform) -> Platform:
    """digits: 5 calls today (and 2 eight days ago, outside the window); sentiment: 3 yesterday; speech: none."""
    serve(platform, "digits", ["900", "900"], T0 - timedelta(days=8))
    serve(platform, "digits", ["5", "1", "4", "2", "3"], T0 - timedelta(hours=1))
    serve(platform, "sentiment", ["10", "30", "20"], T0 - timedelta(days=1))
    return platform


def activity(platform: Platform, sample_max: int = LATENCY_SAMPLE_MAX) -> list[ModelActivity]:
    with platform.store.read() as uow:
        return uow.usage.model_activity(["digits", "sentiment", "speech-to-text"], WEEK_START, TODAY, sample_max)


# -- the repository ----------------------------------------------------------------------------------------------


def test_activity_counts_the_days_and_takes_percentiles_of_the_latest_calls(traffic: Platform) -> None:
    assert activity(traffic) == [
        ModelActivity("digits", 5, Decimal("3"), Decimal("5")),  # the calls 8 days ago are outside the window
        ModelActivity("sentiment", 3, Decimal("20"), Decimal("30")),
    ]
    # The sample is the latest calls: digits' last two took 2 and 3 ms; counts are every call of the window.
    assert activity(traffic, sample_max=2)[0] == ModelActivity("digits", 5, Decimal("2"), Decimal("3"))
    with traffic.store.read() as uow:
        assert uow.usage.model_activity(["sentiment"], WEEK_START, TODAY, 10) == [activity(traffic)[1]]
        assert uow.usage.model_activity(["digits"], "2026-03-02", "2026-03-02", 10) == [
            ModelActivity("digits", 2, Decimal("900"), Decimal("900"))
        ]
        assert uow.usage.model_activity([], WEEK_START, TODAY, 10) == []


@dataclass
class Statements:
    sql: list[tuple[str, Any]]


@pytest.fixture()
def statements(platform: Platform) -> Iterator[Statements]:
    """Every SQL statement the store runs while the test runs."""
    seen = Statements([])

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        seen.sql.append((statement, parameters))

    event.listen(platform.store.engine, "before_cursor_execute", record)
    yield seen
    event.remove(platform.store.engine, "before_cursor_execute", record)


def test_the_latency_sample_reads_along_the_model_time_index(traffic: Platform, statements: Statements) -> None:
    if traffic.store.engine.dialect.name != "sqlite":
        pytest.skip("EXPLAIN QUERY PLAN is SQLite's; PostgreSQL's planner picks by table statistics")
    statements.sql.clear()
    activity(traffic)
    reads = [(s, p) for s, p in statements.sql if "FROM usage_events" in s]
    assert len(reads) == 2  # one per model with calls (speech-to-text had none)
    with traffic.store.engine.connect() as conn:
        for statement, parameters in reads:
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters))
            assert "ix_usage_events_model_time" in plan and "SCAN usage_events" not in plan, plan
            assert "TEMP B-TREE" not in plan, plan  # ordered by the index itself: LIMIT stops the read


# -- the HTTP route, in process -----------------------------------------------------------------------------------


class NoRunners:
    async def pool_for(self, version: Any) -> Any:
        raise AssertionError("the catalogue needs no runner")

    def is_ready(self, version: Any) -> bool:
        return True

    def preloaded_ready(self) -> bool:
        return True

    def not_ready_reasons(self) -> list[str]:
        return []

    def start_monitor(self) -> None: ...

    async def stop(self) -> None: ...


class NoWriter:
    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class Gateway:
    client: httpx.AsyncClient
    platform: Platform

    async def models(self, **params: str) -> dict[str, Any]:
        response = await self.client.get("/api/models", params=params)
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc

    async def names(self, **params: str) -> list[str]:
        return [m["name"] for m in (await self.models(**params))["models"]]


async def start(platform: Platform, cache_refresh_s: float) -> tuple[GatewayApp, httpx.AsyncClient]:
    state = GatewayState(platform.accounts.key_index, CatalogueLoader(platform.store).load, refresh_s=60)
    plane = DataPlane(state, NoRunners(), NoWriter(), platform.clock, source="t", max_request_bytes=1 << 20)

    async def auth(request: Any) -> Any:
        return await authenticate(state, request.scope)

    ctx = ApiContext(
        lambda: state.catalogue,
        platform.usage,
        platform.invoices,
        platform.prices.book,
        platform.clock,
        cache_refresh_s=cache_refresh_s,
    )
    app = GatewayApp(GatewayParts(plane, state, build_router(ctx, auth), NoWriter(), NoRunners(), None, 1 << 20, False))
    await app.startup()
    return app, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture()
async def gateway(traffic: Platform) -> AsyncIterator[Gateway]:
    app, client = await start(traffic, cache_refresh_s=3600)
    async with client:
        yield Gateway(client, traffic)
    await app.shutdown()


@pytest.mark.anyio
async def test_api_models_carries_protocols_and_measured_figures_from_real_traffic(gateway: Gateway) -> None:
    doc = await gateway.models()
    assert (doc["total"], doc["next_cursor"]) == (3, None)
    by_name = {m["name"]: m for m in doc["models"]}
    assert list(by_name) == ["digits", "sentiment", "speech-to-text"]
    assert by_name["digits"]["measured"] == {"latency_ms_p50": "3", "latency_ms_p95": "5", "calls_7d": 5}
    assert by_name["sentiment"]["measured"] == {"latency_ms_p50": "20", "latency_ms_p95": "30", "calls_7d": 3}
    assert by_name["speech-to-text"]["measured"] == {"latency_ms_p50": None, "latency_ms_p95": None, "calls_7d": 0}
    assert by_name["speech-to-text"]["protocols"] == ["oip", "openai"]
    assert by_name["digits"]["protocols"] == ["oip"]
    digits = by_name["digits"]
    assert digits["pricing"] == {"unit": "image", "price_per_iu": "0.0010", "currency": "USD"}
    assert digits["iu"] == {"unit": "image", "base_unit": "image", "base_units_per_iu": 1}
    assert digits["price_now"]["price_per_iu"] == "0.001"
    assert (digits["versions"], digits["aliases"]) == (["1.0.0"], {"latest": "1.0.0"})


@pytest.mark.anyio
async def test_api_models_sorts_filters_and_searches(gateway: Gateway) -> None:
    assert await gateway.names(sort="popularity") == ["digits", "sentiment", "speech-to-text"]
    assert await gateway.names(sort="popularity", order="asc") == ["speech-to-text", "sentiment", "digits"]
    assert await gateway.names(sort="latency", order="desc") == ["sentiment", "digits", "speech-to-text"]
    assert await gateway.names(sort="price") == ["digits", "speech-to-text", "sentiment"]
    assert await gateway.names(protocol="openai") == ["speech-to-text"]
    assert await gateway.names(modality="text") == ["sentiment"]
    assert await gateway.names(task="IMAGE-classification", runtime="onnx") == ["digits"]
    assert await gateway.names(license="mit") == ["sentiment"]
    assert await gateway.names(provider="demo-provider") == ["digits", "sentiment", "speech-to-text"]
    assert await gateway.names(max_price="0.006") == ["digits", "speech-to-text"]
    assert await gateway.names(q="Speech") == ["speech-to-text"]
    assert await gateway.names(q="onnx image") == ["digits"]
    assert await gateway.names(colour="blue", q="") == ["digits", "sentiment", "speech-to-text"]  # ignored


@pytest.mark.anyio
async def test_max_price_compares_the_price_in_force(gateway: Gateway) -> None:
    gateway.platform.prices.set_list_price("digits", Decimal("0.0100"))
    gateway.platform.prices.set_list_price("speech-to-text", Decimal("0.0001"))
    assert await gateway.names(max_price="0.006") == ["speech-to-text"]
    assert (await gateway.models(q="digits"))["models"][0]["price_now"]["price_per_iu"] == "0.01"


@pytest.mark.anyio
async def test_walking_the_cursor_yields_every_model_once(gateway: Gateway) -> None:
    seen: list[str] = []
    params = {"sort": "popularity", "limit": "1"}
    for _ in range(10):
        doc = await gateway.models(**params)
        assert doc["total"] == 3
        seen += [m["name"] for m in doc["models"]]
        if doc["next_cursor"] is None:
            break
        params["cursor"] = doc["next_cursor"]
    assert seen == ["digits", "sentiment", "speech-to-text"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"sort": "cheapest"}, "sort"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"max_price": "cheap"}, "max_price"),
        ({"protocol": "grpc"}, "protocol"),
        ({"order": "sideways"}, "order"),
    ],
)
async def test_bad_parameters_answer_400_naming_them(gateway: Gateway, params: dict[str, str], named: str) -> None:
    response = await gateway.client.get("/api/models", params=params)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{named}: ")


@pytest.mark.anyio
async def test_measured_figures_are_cached_for_the_refresh_interval(traffic: Platform, statements: Statements) -> None:
    app, client = await start(traffic, cache_refresh_s=3600)
    async with client:
        gw = Gateway(client, traffic)
        statements.sql.clear()
        await asyncio.gather(*[gw.models() for _ in range(10)])
        daily_reads = [s for s, _ in statements.sql if "usage_daily" in s]
        assert len(daily_reads) == 1  # ten requests, one read
        serve(traffic, "speech-to-text", ["7"], T0 - timedelta(minutes=5))
        statements.sql.clear()
        doc = await gw.models(q="speech")
        assert doc["models"][0]["measured"]["calls_7d"] == 0  # still the cached figures
        assert [s for s, _ in statements.sql if "usage_" in s] == []
    await app.shutdown()

    app, client = await start(traffic, cache_refresh_s=0)  # a fresh read on every request
    async with client:
        doc = await Gateway(client, traffic).models(q="speech")
        assert doc["models"][0]["measured"] == {"latency_ms_p50": "7", "latency_ms_p95": "7", "calls_7d": 1}
    await app.shutdown()


# -- the CLI ---------------------------------------------------------------------------------------------------------


def run_cli(platform: Platform, *args: str) -> str:
    result = CliRunner().invoke(cli, ["models", "search", *args], obj={"platform": platform})
    assert result.exit_code == 0, result.output
    return result.output


def test_cli_search_prints_a_table_with_measured_figures(traffic: Platform) -> None:
    out = run_cli(traffic, "--sort", "popularity")
    lines = out.splitlines()
    assert lines[0].split() == ["MODEL", "TASK", "PRICE", "UNIT", "P50", "MS", "CALLS", "7D"]
    assert lines[1].split() == ["digits", "image-classification", "0.0010", "USD", "image", "3", "5"]
    assert lines[2].split() == ["sentiment", "text-classification", "0.0200", "USD", "tokens_1k", "20", "3"]
    assert lines[3].split() == [
        "speech-to-text",
        "automatic-speech-recognition",
        "0.0060",
        "USD",
        "audio_minute",
        "-",
        "0",
    ]
    assert lines[4] == "1-3 of 3 models"


def test_cli_search_json_is_the_api_shape_and_pages(traffic: Platform) -> None:
    doc = json.loads(run_cli(traffic, "text", "--protocol", "openai", "--json"))
    assert [m["name"] for m in doc["models"]] == ["speech-to-text"]
    assert (doc["total"], doc["next_cursor"]) == (1, None)
    assert doc["models"][0]["measured"]["calls_7d"] == 0
    first = json.loads(run_cli(traffic, "--sort", "latency", "--limit", "2", "--json"))
    assert [m["name"] for m in first["models"]] == ["digits", "sentiment"] and first["total"] == 3
    rest = json.loads(run_cli(traffic, "--sort", "latency", "--limit", "2", "--cursor", first["next_cursor"], "--json"))
    assert [m["name"] for m in rest["models"]] == ["speech-to-text"] and rest["next_cursor"] is None
    assert json.loads(run_cli(traffic, "--max-price", "0.001", "--json"))["total"] == 1
    assert json.loads(run_cli(traffic, "--license", "MIT", "--provider", "demo-provider", "--json"))["total"] == 1


def test_cli_search_refuses_bad_values_naming_the_option(traffic: Platform) -> None:
    for args, named in (
        (["--max-price", "abc"], "--max-price"),
        (["--limit", "0"], "--limit"),
        (["--cursor", "x"], "--cursor"),
        (["x" * 300], "QUERY"),
    ):
        result = CliRunner().invoke(cli, ["models", "search", *args], obj={"platform": traffic})
        assert result.exit_code == 2 and f"Error: {named}: " in result.output, result.output
    result = CliRunner().invoke(cli, ["models", "search", "--sort", "cheapest"], obj={"platform": traffic})
    assert result.exit_code == 2 and "cheapest" in result.output


def test_cli_search_help_explains_every_option() -> None:
    out = CliRunner().invoke(cli, ["models", "search", "--help"]).output
    for option in ("--task", "--modality", "--protocol", "--runtime", "--license", "--provider", "--max-price",
                   "--sort", "--order", "--limit", "--cursor", "--json"):  # fmt: skip
        assert option in out
    assert "popularity" in out and "openai" in out
