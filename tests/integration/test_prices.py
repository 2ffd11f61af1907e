"""List prices, dynamic pricing and the price history on a real store (SQLite and PostgreSQL), and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from modelmarket.adapters.store import SqlStore
from modelmarket.audit import chain as audit
from modelmarket.billing.pricing import PriceService
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.cli.main import cli
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.lab.ports import StoredFeedback
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.ports import CallStats
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

pytestmark = pytest.mark.timeout(180)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
MANIFEST_PRICE = Decimal("0.0010")  # the demo digits model's price per image
_ids = count(1)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def platform(store: SqlStore, tmp_path: Path, clock: Clock, demo_dir: Path) -> Platform:
    plat = bootstrap(Settings(home=tmp_path / "home"), store=store, clock=clock, runtimes=PluginRuntimes())
    plat.accounts.create("demo-provider", "provider")
    plat.registry.publish(demo_dir / "digits")
    return plat


@pytest.fixture()
def prices(platform: Platform) -> PriceService:
    return PriceService(platform.store, platform.clock)


def audit_records(store: SqlStore, prefix: str = "price.") -> list[audit.AuditRecord]:
    with store.read() as uow:
        return [r for r in audit.list_records(uow.audit, limit=1000) if r.action.startswith(prefix)]


def calls(store: SqlStore, model: str, at: datetime, latencies_ms: list[str]) -> None:
    """Served calls of ``model`` at ``at``, one per latency, written as the metering consumer writes them."""
    events = [
        UsageEvent(
            id=f"evt-{next(_ids):08d}",
            source="gateway-1",
            account_id="acct-consumer",
            time=at,
            model=model,
            version="1.0.0",
            provider_account_id="acct-provider",
            unit_kind=UnitKind.IMAGE,
            quantity=1,
            unit_price=MANIFEST_PRICE,
            currency="USD",
            latency_ms=Decimal(ms),
        )
        for ms in latencies_ms
    ]
    with store.write() as uow:
        uow.usage.add_events([(next(_ids), e) for e in events])


# -- list prices ------------------------------------------------------------------------------------------------


def test_list_prices_take_effect_when_set_and_never_retroactively(platform: Platform, prices: PriceService) -> None:
    later = prices.set_list_price("digits", Decimal("0.07"), T0 + timedelta(hours=1), actor="alice")
    now = prices.set_list_price("digits", Decimal("0.06"), actor="alice", reason="launch offer")
    assert (later.seq, later.effective_at, later.source) == (1, "2026-03-01T13:00:00+00:00", "list")
    assert (now.seq, now.effective_at, now.reason) == (2, T0.isoformat(), "launch offer")
    assert later.reason == "list price set by alice"

    book = prices.book()
    assert book.unit_price(MANIFEST_PRICE, "digits", T0 - timedelta(seconds=1)) == MANIFEST_PRICE
    assert book.unit_price(MANIFEST_PRICE, "digits", T0) == Decimal("0.06")
    assert book.unit_price(MANIFEST_PRICE, "digits", T0 + timedelta(hours=1)) == Decimal("0.07")
    assert [r.seq for r in prices.history("digits")] == [1, 2]

    with pytest.raises(InvalidInput, match="never retroactive"):
        prices.set_list_price("digits", Decimal("0.05"), T0 - timedelta(microseconds=1))
    with pytest.raises(InvalidInput, match="UTC offset"):
        prices.set_list_price("digits", Decimal("0.05"), datetime(2027, 1, 1))
    with pytest.raises(InvalidInput, match=r"^price: "):
        prices.set_list_price("digits", Decimal("0.00000000001"))
    with pytest.raises(NotFound, match="'nope'"):
        prices.set_list_price("nope", Decimal("0.05"))
    with pytest.raises(NotFound, match="'nope'"):
        prices.history("nope")
    assert [r.seq for r in prices.history("digits")] == [1, 2]  # nothing written by a refusal

    records = audit_records(platform.store)
    assert [(r.action, r.subject, r.actor) for r in records] == [
        ("price.set", "digits", "alice"),
        ("price.set", "digits", "alice"),
    ]
    assert records[0].payload["list_price"] == "0.07"
    assert records[0].payload["effective_at"] == "2026-03-01T13:00:00+00:00"
    assert records[1].payload["previous_list_price"] is None  # at T0 the manifest's price was in force


# -- dynamic pricing --------------------------------------------------------------------------------------------


def test_call_stats_count_a_range_and_take_a_numeric_median(platform: Platform) -> None:
    calls(platform.store, "digits", T0 - timedelta(seconds=30), ["9", "100", "10"])  # as text, "9" sorts last
    calls(platform.store, "digits", T0, ["1"])  # the end of a range is excluded
    calls(platform.store, "sentiment", T0 - timedelta(hours=2), ["5", "7"])
    since, until = (T0 - timedelta(hours=24)).isoformat(), T0.isoformat()
    with platform.store.read() as uow:
        assert uow.usage.call_stats(since, until, ["digits"]) == [
            CallStats("digits", 3, Decimal("10")),
            CallStats("sentiment", 2, None),
        ]
        assert uow.usage.call_stats(since, until, ["sentiment"])[1] == CallStats("sentiment", 2, Decimal("5"))
        assert uow.usage.call_stats((T0 - timedelta(minutes=5)).isoformat(), until) == [CallStats("digits", 3, None)]


def test_recompute_writes_a_record_only_when_the_factor_changes(
    platform: Platform, prices: PriceService, clock: Clock
) -> None:
    store = platform.store
    assert prices.recompute() == []  # nothing enabled: nothing read, nothing written
    prices.enable_dynamic("digits", Decimal("0.5"), Decimal("2"))
    # digits: 9 calls 2 h ago at 80 ms and 3 in the last minute at 120 ms; sentiment: 12 calls in the day
    calls(store, "digits", T0 - timedelta(hours=2), ["80"] * 9)
    calls(store, "digits", T0 - timedelta(minutes=1), ["120"] * 3)
    calls(store, "sentiment", T0 - timedelta(hours=3), ["40"] * 12)

    first = prices.recompute()
    # r = 3 x 86400 / (12 x 300) = 72 -> 4; q = 120 / 80 = 1.5; p = 12 x 2 / 24 = 1: raw = 1 + 0.75 + 0.05 = 1.8
    assert [(r.model_name, r.seq, r.source, r.factor, r.list_price) for r in first] == [
        ("digits", 1, "dynamic", Decimal("1.8"), None)
    ]
    assert first[0].effective_at == T0.isoformat()
    assert prices.book().unit_price(MANIFEST_PRICE, "digits", T0) == Decimal("0.00180")

    assert prices.recompute() == []  # same inputs, same factor: no churn
    clock.now = T0 + timedelta(seconds=20)
    assert prices.recompute() == []  # the window moved, the factor did not

    clock.now = T0 + timedelta(minutes=10)  # the window is empty now: r = 0, q = 1, p = 1: raw 0.75
    second = prices.recompute()
    assert [(r.seq, r.factor, r.effective_at) for r in second] == [(2, Decimal("0.75"), clock.now.isoformat())]

    prices.set_list_price("digits", Decimal("0.0200"))
    book = prices.book()
    assert book.unit_price(MANIFEST_PRICE, "digits", clock.now) == Decimal("0.015")  # 0.02 x 0.75, exactly
    assert book.unit_price(MANIFEST_PRICE, "digits", T0) == Decimal("0.00180")  # the past is unchanged

    changes = audit_records(store, "price.changed")
    assert [(r.payload["old_factor"], r.payload["new_factor"]) for r in changes] == [("1", "1.8"), ("1.8", "0.75")]
    inputs = changes[0].payload["inputs"]
    assert (inputs["window_calls"], inputs["reference_calls"], inputs["all_calls"], inputs["active_models"]) == (
        3,
        12,
        24,
        2,
    )
    assert (inputs["demand"], inputs["latency"], inputs["popularity"], inputs["raw"]) == ("72", "1.5", "1", "1.8")
    assert (inputs["latency_ms_p50_window"], inputs["latency_ms_p50_reference"]) == ("120", "80")
    assert platform.audit.verify().ok


def test_new_bounds_clamp_at_once_and_turning_off_returns_to_1(
    platform: Platform, prices: PriceService, clock: Clock
) -> None:
    prices.enable_dynamic("digits", Decimal("0.5"), Decimal("2"))
    calls(platform.store, "digits", T0 - timedelta(minutes=1), ["50"] * 4)
    assert [r.factor for r in prices.recompute()] == [Decimal("1.75")]  # r = 288 -> 4, q = 1, p = 1

    config = prices.enable_dynamic("digits", Decimal("0.9"), Decimal("1.5"))
    assert (config.min_factor, config.max_factor, config.enabled) == (Decimal("0.9"), Decimal("1.5"), True)
    assert [(r.seq, r.factor, r.reason) for r in prices.history("digits")][-1] == (
        2,
        Decimal("1.5"),
        "dynamic bounds set to [0.9, 1.5]",
    )
    assert prices.recompute() == []  # clamped to the same 1.5

    off = prices.disable_dynamic("digits")
    assert off.enabled is False
    assert prices.history("digits")[-1].factor == Decimal(1)
    assert prices.recompute() == []  # disabled models are not recomputed
    assert prices.disable_dynamic("digits") == off  # idempotent, nothing written
    assert len(prices.history("digits")) == 3
    actions = [r.action for r in audit_records(platform.store)]
    assert actions == [
        "price.dynamic.enabled",
        "price.changed",
        "price.dynamic.enabled",
        "price.changed",
        "price.dynamic.disabled",
        "price.changed",
    ]
    with pytest.raises(NotFound):
        prices.disable_dynamic("nope")
    with pytest.raises(InvalidInput, match=r"^max_factor: "):
        prices.enable_dynamic("digits", Decimal("0.5"), Decimal("11"))
    with pytest.raises(InvalidInput, match="in the past"):
        prices.recompute(T0 - timedelta(minutes=1))


# -- the CLI ----------------------------------------------------------------------------------------------------


def run(platform: Platform, *args: str) -> Any:
    result = CliRunner().invoke(cli, ["prices", *args], obj={"platform": platform})
    return result


def run_json(platform: Platform, *args: str) -> Any:
    result = run(platform, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_cli_set_history_dynamic_recompute(platform: Platform, clock: Clock) -> None:
    later = (T0 + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    record = run_json(platform, "set", "digits", "0.0020", "--at", later, "--reason", "spring prices")
    assert record == {
        "model": "digits",
        "seq": 1,
        "effective_at": "2026-03-02T12:00:00+00:00",
        "source": "list",
        "list_price": "0.0020",
        "factor": "1",
        "reason": "spring prices",
        "created_at": T0.isoformat(),
    }
    assert run_json(platform, "dynamic", "digits", "--min", "0.5", "--max", "2")["enabled"] is True
    calls(platform.store, "digits", T0 - timedelta(minutes=1), ["50"] * 4)
    recomputed = run_json(platform, "recompute")
    assert [(r["model"], r["seq"], r["source"], r["factor"]) for r in recomputed] == [("digits", 2, "dynamic", "1.75")]
    assert run_json(platform, "recompute") == []

    history = run_json(platform, "history", "digits")
    assert (history["model"], history["version"], history["manifest_price_per_iu"]) == ("digits", "1.0.0", "0.0010")
    assert [(r["seq"], r["source"], r["price_per_iu"], r["currency"]) for r in history["records"]] == [
        (1, "list", "0.003500", "USD"),  # from tomorrow: 0.0020 x the factor 1.75 in force by then
        (2, "dynamic", "0.001750", "USD"),  # from now: the manifest's 0.0010 x 1.75
    ]
    text = run(platform, "history", "digits")
    assert text.exit_code == 0, text.output
    assert "SEQ  EFFECTIVE" in text.output and "spring prices" in text.output and "0.003500 USD" in text.output

    assert run_json(platform, "dynamic", "digits", "--off") == {
        "model": "digits",
        "enabled": False,
        "min_factor": "0.5",
        "max_factor": "2",
        "updated_at": T0.isoformat(),
    }

    past = run(platform, "set", "digits", "0.05", "--at", "2026-01-01T00:00:00Z")
    assert past.exit_code == 1 and "never retroactive" in past.output
    for bad in (["set", "digits", "1e-3"], ["set", "digits", "0.05", "--at", "tomorrow"], ["history", "nope"]):
        result = run(platform, *bad)
        assert result.exit_code == 1 and result.output.startswith("Error: "), (bad, result.output)
    assert run(platform, "dynamic", "digits", "--min", "0.5").exit_code == 2  # --max missing: a usage error
    assert run(platform, "dynamic", "digits", "--off", "--min", "0.5").exit_code == 2
    assert len(run_json(platform, "history", "digits")["records"]) == 3


def test_feedback_on_a_models_calls_moves_its_factor(platform: Platform, prices: PriceService, clock: Clock) -> None:
    prices.enable_dynamic("digits", Decimal("0.5"), Decimal("2"))
    calls(platform.store, "digits", T0 - timedelta(hours=2), ["80"] * 9)
    calls(platform.store, "digits", T0 - timedelta(minutes=1), ["120"] * 3)
    calls(platform.store, "sentiment", T0 - timedelta(hours=3), ["40"] * 12)
    scored = [  # 20 more calls of digits 30 min ago, from 5 accounts, each scored 5 (the lab's feedback)
        UsageEvent(
            id=f"scored-{i}",
            source="gateway-1",
            account_id=f"acct-{i % 5}",
            time=T0 - timedelta(minutes=30),
            model="digits",
            version="1.0.0",
            provider_account_id="acct-provider",
            unit_kind=UnitKind.IMAGE,
            quantity=1,
            unit_price=MANIFEST_PRICE,
            currency="USD",
            latency_ms=Decimal(80),
        )
        for i in range(20)
    ]
    old = T0 - timedelta(days=3)  # a call of three days ago, scored now: outside the reference period
    stale = replace(scored[0], id="stale", time=old)
    by_provider = replace(scored[0], id="own", account_id="acct-provider")  # its provider's own score: left out
    with platform.store.write() as uow:
        uow.usage.add_events([(next(_ids), e) for e in [*scored, stale, by_provider]])
        for e in [*scored, stale, by_provider]:
            now = T0.isoformat()
            score = 5 if e.id.startswith("scored") else 1
            uow.lab.put_feedback(StoredFeedback(e.id, e.account_id, "digits", "1.0.0", score, None, now, now))
    (record,) = prices.recompute()
    # digits made 33 calls in the day (9 + 3 + 20 + its provider's 1; the stale one is older), 3 in the window:
    # r = 3 x 86400 / (33 x 300) -> 4 (capped); q = 120 / 80 = 1.5; p = 33 x 2 / 45 = 22/15; f = 100 / 20 / 3 = 5/3
    # raw = 1 + 3/4 + 1/10 x 1/2 + 1/20 x 7/15 + 1/20 x 2/3 = 1.8 + 17/300 = 1.85666... -> 1.8567
    assert record.factor == Decimal("1.8567") and "feedback x1.6667" in record.reason
    inputs = audit_records(platform.store, "price.changed")[0].payload["inputs"]
    assert (inputs["feedback_calls"], inputs["feedback_score_sum"], inputs["feedback_accounts"]) == (20, 100, 5)
    assert inputs["quality"] == "5/3"
