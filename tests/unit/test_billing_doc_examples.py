"""Every worked example with numbers in docs/billing.md, computed by the real code and compared with the literal
the document writes. Each test also checks that the literal is still in the document, so neither can drift.

Rating examples go through the real ``Rater`` and ``build_lines`` over a small in-memory stand-in for the
economy's repositories (only the methods rating reads and writes); limits go through the real ``Limiter`` and the
gateway's error mapping; the YAML and JSON blocks are parsed from the document itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from modelmarket.billing.charges import ChargeModel, Tier, token_amount
from modelmarket.billing.ledger import split
from modelmarket.billing.lifecycle import Line, build_lines, invoice_id
from modelmarket.billing.period import Period
from modelmarket.billing.plans import (
    PlanSpec,
    PlanVersion,
    Subscription,
    parse_plans,
    prorate,
    remaining_days,
    segments,
)
from modelmarket.billing.ports import LedgerTxn, PriceRecord, RatedEvent
from modelmarket.billing.pricing import (
    DEMAND_WEIGHT,
    LATENCY_WEIGHT,
    POPULARITY_WEIGHT,
    QUALITY_WEIGHT,
    RATIO_CAP,
    DemandInputs,
    PriceBook,
    compute_factor,
)
from modelmarket.billing.rating import PLATFORM_REVENUE, Rater, payable, receivable
from modelmarket.core.errors import InvalidInput, QuotaExceeded, RateLimited
from modelmarket.core.money import round_minor
from modelmarket.gateway.errors import extra_fields_for, headers_for, message_for, status_for
from modelmarket.gateway.limits import AccountPolicy, Limiter, LimitSet, SeedUsage, Usage
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.registry.manifest import parse_manifest

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "billing.md").read_text()
DEMO_PLANS = (ROOT / "src" / "modelmarket" / "demo" / "plans.yaml").read_text()
F = Fraction
IMAGE, TOKENS, AUDIO, REQUEST = UnitKind.IMAGE, UnitKind.TOKENS_1K, UnitKind.AUDIO_MINUTE, UnitKind.REQUEST
JAN, FEB, MAR = Period(2026, 1), Period(2026, 2), Period(2026, 3)
CONSUMER, PROVIDER = "acc_consumer", "acc_provider"
DIGITS = Decimal("0.0010")
SENTIMENT = Decimal("0.0200")


def _words(text: str) -> str:
    return " ".join(text.split())


def in_doc(*snippets: str) -> None:
    """Each snippet is written in docs/billing.md (the literal the test compares with; line breaks and
    indentation aside)."""
    flat = _words(DOC)
    for snippet in snippets:
        assert _words(snippet) in flat, f"docs/billing.md no longer says: {snippet!r}"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.DOTALL)


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def usd(value: Fraction | Decimal) -> Decimal:
    return round_minor(value, "USD")


# -- plans from the document -------------------------------------------------------------------------------------


def doc_plans() -> dict[str, PlanSpec]:
    """The plans of the document's second YAML block (the one the examples use)."""
    return {p.name: p for p in parse_plans(blocks("yaml")[1], "docs/billing.md")}


def versions(*extra: PlanVersion) -> list[PlanVersion]:
    return [PlanVersion(p.name, 1, p, "2025-01-01T00:00:00+00:00") for p in doc_plans().values()] + list(extra)


def sub(seq: int, plan: str, effective: datetime, version: int = 1, account: str = CONSUMER) -> Subscription:
    return Subscription(seq, account, plan, version, effective.isoformat(), effective.isoformat())


# -- a small stand-in for the repositories rating uses -----------------------------------------------------------


class _Plans:
    def __init__(self, plans: list[PlanVersion], subs: list[Subscription]) -> None:
        self._plans, self._subs = plans, subs

    def plan_versions(self, name: str | None = None) -> list[PlanVersion]:
        return [p for p in self._plans if name is None or p.name == name]

    def subscriptions(self, account_id: str | None = None) -> list[Subscription]:
        mine = [s for s in self._subs if account_id is None or s.account_id == account_id]
        return sorted(mine, key=lambda s: (s.effective_at, s.seq))


class _Ledger:
    def __init__(self, closed: dict[tuple[str, str, str], int]) -> None:
        self.closed = closed
        self.counter_values: dict[tuple[str, str, str, str], int] = {}
        self.rows: list[RatedEvent] = []
        self.txns: list[LedgerTxn] = []

    def closed_periods(self, account_ids: Sequence[str] | None = None) -> dict[tuple[str, str, str], int]:
        return dict(self.closed)

    def setting(self, name: str) -> str | None:
        return "0.80" if name == "provider_share" else None

    def counters(self, keys: Sequence[tuple[str, str, str, str]]) -> dict[tuple[str, str, str, str], int]:
        return {k: self.counter_values[k] for k in keys if k in self.counter_values}

    def put_counters(self, values: dict[tuple[str, str, str, str], int], existing: set[object]) -> None:
        self.counter_values.update(values)

    def add_rated(self, rows: Sequence[RatedEvent]) -> None:
        self.rows.extend(rows)

    def add_txns(self, txns: Sequence[LedgerTxn]) -> None:
        self.txns.extend(txns)


class _Uow:
    def __init__(self, plans: _Plans, ledger: _Ledger) -> None:
        self.plans = plans
        self.ledger = ledger


class Book:
    """Plans, subscriptions and charge models; ``rate`` applies one metering batch through the real Rater."""

    def __init__(
        self,
        subs: Iterable[Subscription] = (),
        plans: list[PlanVersion] | None = None,
        charges: dict[str, ChargeModel] | None = None,
        closed: dict[tuple[str, str, str], int] | None = None,
    ) -> None:
        self.plans = plans if plans is not None else versions()
        self.subs = list(subs)
        self.charges = charges or {}
        self.uow = _Uow(_Plans(self.plans, self.subs), _Ledger(closed or {}))
        self.rater = Rater(Decimal("0.80"), lambda: at(2026, 4, 1), self._charge)

    def _charge(self, uow: object, model: str, version: str) -> ChargeModel:
        return self.charges.get(model) or ChargeModel("per_unit", (Tier(None, Decimal(0)),))

    @property
    def rows(self) -> list[RatedEvent]:
        return self.uow.ledger.rows

    def rate(self, *events: tuple[int, UsageEvent]) -> list[RatedEvent]:
        before = len(self.rows)
        self.rater.apply(self.uow, list(events))
        return self.rows[before:]

    def lines(self, period: Period, currency: str = "USD", account: str = CONSUMER) -> list[Line]:
        rows = [r for r in self.rows if r.account_id == account and r.period == period.label]
        plans = {(p.name, p.version): p for p in self.plans}
        segs = segments([s for s in self.subs if s.account_id == account], period)
        return build_lines(rows, plans, segs, period, currency)


def event(
    offset: int,
    when: datetime,
    quantity: int,
    model: str = "digits",
    price: Decimal = DIGITS,
    unit: UnitKind = IMAGE,
    *,
    factor: str = "1",
    quantity_out: int = 0,
    account: str = CONSUMER,
) -> tuple[int, UsageEvent]:
    """A usage event as the gateway writes it: ``price`` is the stamped price per IU (factor included)."""
    e = UsageEvent(
        id=f"evt_{offset}",
        source="modelmarket/gateway-1",
        account_id=account,
        time=when,
        model=model,
        version="1.0.0",
        provider_account_id=PROVIDER,
        unit_kind=unit,
        quantity=quantity,
        unit_price=price,
        currency="USD",
        latency_ms=Decimal(1),
        price_factor=Decimal(factor),
        quantity_out=quantity_out,
    )
    return offset, e


def total(lines: list[Line]) -> Decimal:
    return sum((line.amount for line in lines), Decimal(0))


def summary(lines: list[Line]) -> list[tuple[str, Fraction, Decimal]]:
    return [(line.type, line.quantity_iu, line.amount) for line in lines]


TIERS = (Tier(1000, Decimal("0.002")), Tier(None, Decimal("0.001")))
GRADUATED = ChargeModel("graduated", TIERS)
VOLUME = ChargeModel("volume", TIERS)
PACKAGE = ChargeModel("package", package_iu=1000, price_per_package=Decimal("0.05"))


# -- 1. where every amount comes from ----------------------------------------------------------------------------


def test_usage_shows_the_list_amount_and_the_invoice_the_plan() -> None:
    book = Book([sub(1, "pro", at(2025, 12, 1))])
    events = [event(1, at(2026, 1, 5), 10_000), event(2, at(2026, 1, 20), 2_500)]
    book.rate(*events)

    assert sum((e.amount for _, e in events), F(0)) == F("12.5")  # /api/usage: quantity x stamped unit_price
    assert total(book.lines(JAN)) == Decimal("22.50")
    in_doc('`"amount": "12.5"`', "20.00 + 2,500 x 0.0010 = **22.50**")


# -- 2. plans ----------------------------------------------------------------------------------------------------


def test_the_yaml_blocks_are_valid_plans_and_the_first_is_the_demo_file() -> None:
    demo = blocks("yaml")[0]
    assert [p.digest for p in parse_plans(demo)] == [p.digest for p in parse_plans(DEMO_PLANS)]
    plans = doc_plans()
    assert {p.kind for p in plans.values()} == {"free", "payg", "subscription", "enterprise"}
    assert plans["team"].overage == {IMAGE: Decimal("0.0008")}
    assert plans["team"].limits.budget == Decimal("250.00")
    assert plans["acme-enterprise"].rates == {"digits": Decimal("0.0008")}

    wrong = demo.replace('fee: "20.00",', 'fee: "20.00", rates: {digits: "0.0008"},')
    with pytest.raises(InvalidInput) as refused:
        parse_plans(wrong)
    message = "plans[2] (pro): rates: a subscription plan has no rates (only fee, included, overage)"
    assert refused.value.message == message
    in_doc(f"`{message}`")


def test_the_plan_in_force_at_an_events_time() -> None:
    pro_v2 = PlanVersion("pro", 2, doc_plans()["pro"].model_copy(update={"fee": Decimal("25.00")}), "2026-02-10")
    subs = [
        sub(1, "free", at(2026, 1, 5, 10)),
        sub(2, "pro", at(2026, 2, 1)),
        sub(3, "pro", at(2026, 3, 1), version=2),
    ]
    book = Book(subs, versions(pro_v2))
    rows = book.rate(
        event(1, at(2026, 1, 5, 9, 59, 59), 1),
        event(2, at(2026, 1, 20, 12), 1),
        event(3, at(2026, 2, 1), 1),
        event(4, at(2026, 3, 15, 8), 1),
    )

    assert [(r.plan_name, r.plan_version) for r in rows] == [("payg", 0), ("free", 1), ("pro", 1), ("pro", 2)]
    in_doc(
        "| 2026-01-05T09:59:59Z | payg v0 (implicit) |",
        "| 2026-01-20T12:00:00Z | free v1 |",
        "| 2026-02-01T00:00:00Z | pro v1 |",
        "| 2026-03-15T08:00:00Z | pro v2 |",
    )


# -- 3. charge models --------------------------------------------------------------------------------------------


def test_per_unit() -> None:
    digits = Book().rate(event(1, at(2026, 1, 2), 2), event(2, at(2026, 1, 2), 5), event(3, at(2026, 1, 2), 3))
    audio = Book().rate(event(4, at(2026, 1, 2), 90, "speech-to-text", Decimal("0.0060"), AUDIO))

    assert sum(r.amount for r in digits) == F("0.010")
    assert (AUDIO.iu(90), audio[0].amount) == (F(3, 2), F("0.009"))
    in_doc("| digits | 2 + 5 + 3 images | 10 | 0.010 |", "| speech-to-text | 90 seconds | 3/2 | 0.009 |")


def test_graduated_marginals_in_two_orders() -> None:
    assert [GRADUATED.marginal(F(a), F(b)) for a, b in [(0, 600), (600, 1200), (1200, 1500)]] == [
        F("1.2"),
        F("1.0"),
        F("0.3"),
    ]
    assert GRADUATED.total(F(1500)) == F("2.5")
    assert [GRADUATED.marginal(F(a), F(b)) for a, b in [(0, 300), (300, 900), (900, 1500)]] == [
        F("0.6"),
        F("1.2"),
        F("0.7"),
    ]
    in_doc(
        "| 600 IU | 0 -> 600 | 600 x 0.002 = 1.2 |",
        "| 600 IU | 600 -> 1200 | 400 x 0.002 + 200 x 0.001 = 1.0 |",
        "| 300 IU | 1200 -> 1500 | 300 x 0.001 = 0.3 |",
        "| total | 1500 | 1000 x 0.002 + 500 x 0.001 = **2.5** |",
        "give 0.6, 1.2 and 0.7: the same 2.5",
    )


def test_volume_marginals_can_be_negative_and_totals_do_not_depend_on_order() -> None:
    assert (VOLUME.total(F(1500)), VOLUME.total(F(1000)), VOLUME.total(F(1001))) == (F("1.5"), F(2), F("1.001"))
    forward = [VOLUME.marginal(F(a), F(b)) for a, b in [(0, 600), (600, 1000), (1000, 1001)]]
    backward = [VOLUME.marginal(F(a), F(b)) for a, b in [(0, 1), (1, 401), (401, 1001)]]
    assert forward == [F("1.2"), F("0.8"), F("-0.999")]
    assert backward == [F("0.002"), F("0.8"), F("0.199")]
    assert sum(forward) == sum(backward) == F("1.001")

    # Through rating, one event per batch: the negative marginal is a negative usage transaction, and both
    # orders invoice the same line.
    totals = []
    for sizes in ([600, 400, 1], [1, 400, 600]):
        book = Book(charges={"vol": VOLUME})
        for n, size in enumerate(sizes, 1):
            book.rate(event(n, at(2026, 1, 2 + n), size, "vol", Decimal("0.002")))
        totals.append(summary(book.lines(JAN)))
        receivables = [t.entries[0].amount for t in book.uow.ledger.txns]
        assert sum(receivables, F(0)) == F("1.001")
    assert totals[0] == totals[1] == [("usage", F(1001), Decimal("1.00"))]
    in_doc(
        "1,500 IU cost 1500 x 0.001 = **1.5**; 1,000 IU cost 1000 x 0.002 = 2; 1,001 IU cost 1001 x 0.001 = 1.001",
        "| 600 IU | 0 -> 600 | 1.2 | 1.2 |",
        "| 400 IU | 600 -> 1000 | 2 | 0.8 |",
        "| 1 IU | 1000 -> 1001 | 1.001 | **-0.999** |",
        "In the order 1, 400, 600 the marginals are 0.002, 0.8 and 0.199: the same total, 1.001.",
    )


def test_a_negative_volume_marginal_is_posted_as_a_negative_usage_transaction() -> None:
    book = Book(charges={"vol": VOLUME})
    book.rate(event(1, at(2026, 1, 2), 1000, "vol", Decimal("0.002")))
    book.rate(event(2, at(2026, 1, 3), 1, "vol", Decimal("0.002")))
    last = book.uow.ledger.txns[-1]
    assert [e.amount for e in last.entries] == [F("-0.999"), F("0.7992"), F("0.1998")]


def test_package() -> None:
    assert [PACKAGE.total(F(q)) for q in (1, 1000, 1001, 2500)] == [F("0.05"), F("0.05"), F("0.10"), F("0.15")]
    assert [PACKAGE.marginal(F(0), F(999)), PACKAGE.marginal(F(999), F(1001))] == [F("0.05"), F("0.05")]
    in_doc(
        "1 IU -> 0.05; 1,000 IU -> 0.05; 1,001 IU -> 0.10; 2,500 IU -> 3 packages = 0.15",
        "Two events of 999 and 2 IU: 0.05, then 0.05",
    )


def test_split_token_prices_and_the_factor_on_tiers() -> None:
    pricing = parse_manifest(
        {
            "name": "m",
            "version": "1.0.0",
            "task": "t",
            "modality": "text",
            "runtime": "vader",
            "provider": "p",
            "license": "MIT",
            "artifacts": [{"path": "a"}],
            "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
            "pricing": {
                "unit": "tokens_1k",
                "currency": "USD",
                "input_price_per_iu": "0.01",
                "output_price_per_iu": "0.03",
            },
            "card": {"summary": "s"},
        }
    ).pricing
    assert token_amount(pricing, 1500, 500) == F("0.03")

    split_prices = ChargeModel("per_unit", (Tier(None, Decimal("0.01")),), output_price_per_iu=Decimal("0.03"))
    book = Book(charges={"text": split_prices})
    rated = book.rate(
        event(1, at(2026, 1, 2), 2000, "text", Decimal("0.01"), TOKENS, quantity_out=500),
        event(2, at(2026, 1, 2), 2000, "text", Decimal("0.01"), TOKENS),  # as the gateway writes it today
    )
    assert [r.amount for r in rated] == [F("0.03"), F("0.02")]
    assert split_prices.estimate_per_iu() == F("0.03")  # the limiter's estimate: the higher price

    factored = Book(charges={"grad": GRADUATED}).rate(event(1, at(2026, 1, 2), 1500, "grad", factor="1.5"))
    assert factored[0].amount == F("3.75")
    in_doc(
        "1.5 x 0.01 + 0.5 x 0.03 = **0.03**",
        "with a stamped factor of 1.5 cost 2.5 x 1.5 = 3.75",
    )


# -- 4. grants, included IU, overage, proration ------------------------------------------------------------------


def test_a_free_plan_grants_everything() -> None:
    book = Book([sub(1, "free", at(2025, 12, 1))])
    rows = book.rate(event(1, at(2026, 1, 2), 60), event(2, at(2026, 1, 3), 40))

    assert [(r.granted_base, r.amount) for r in rows] == [(60, F(0)), (40, F(0))]
    assert summary(book.lines(JAN)) == [("granted", F(100), Decimal("0.00"))]
    in_doc("calls of 60 and 40 images are served and invoiced as `granted` 100 images, 0.00")


def test_subscription_included_then_overage_at_list_or_plan_rate() -> None:
    pro = Book([sub(1, "pro", at(2025, 12, 1))])
    pro.rate(event(1, at(2026, 1, 5), 10_000), event(2, at(2026, 1, 20), 2_500))
    assert summary(pro.lines(JAN)) == [
        ("fee", F(0), Decimal("20.00")),
        ("included", F(10_000), Decimal("0.00")),
        ("overage", F(2_500), Decimal("2.50")),
    ]
    assert total(pro.lines(JAN)) == Decimal("22.50")

    team = Book([sub(1, "team", at(2025, 12, 1))])
    team.rate(*(event(n, at(2026, 1, n), 20_000 if n < 4 else 2_000) for n in range(1, 5)))
    assert summary(team.lines(JAN)) == [
        ("fee", F(0), Decimal("99.00")),
        ("included", F(50_000), Decimal("0.00")),
        ("overage", F(12_000), Decimal("9.60")),
    ]
    assert total(team.lines(JAN)) == Decimal("108.60")
    in_doc(
        "overage 2,500 images at list = 2.50; total **22.50**",
        "overage 12,000 x 0.0008 = 9.60; total **108.60**",
    )


def test_proration_of_a_plan_started_on_the_17th() -> None:
    start = date(2026, 1, 17)
    days = remaining_days(start, JAN)
    assert days == 15
    assert prorate(Decimal("20.00"), days, JAN) == F(300, 31)
    assert usd(F(300, 31)) == Decimal("9.68")
    assert int(prorate(10_000, days, JAN)) == 4838

    book = Book([sub(1, "pro", at(2026, 1, 17, 9))])
    images, tokens = book.rate(
        event(1, at(2026, 1, 20), 5_000),
        event(2, at(2026, 1, 20), 500_000, "sentiment", SENTIMENT, TOKENS),
    )
    assert (images.granted_base, tokens.granted_base) == (4838, 483_870)
    in_doc(
        "| fee of pro | 20.00 x 15/31 | 300/31 | 9.68 |",
        "| included images of pro | 10,000 x 15/31 | 150000/31 = 4838.709... | 4,838 images |",
        "| included tokens of pro | 1,000 IU x 15/31 | 15000/31 = 483.870967... IU | 483,870 tokens |",
    )


def test_worked_mid_period_change() -> None:
    book = Book([sub(1, "basic", at(2025, 12, 5)), sub(2, "pro", at(2026, 1, 17, 9))])
    rows = book.rate(event(1, at(2026, 1, 10), 1_200), event(2, at(2026, 1, 20), 5_000), event(3, at(2026, 1, 25), 100))

    assert [(r.plan_name, r.granted_base, r.quantity_base - r.granted_base, r.amount) for r in rows] == [
        ("basic", 1000, 200, F("0.2")),
        ("pro", 4838, 162, F("0.162")),
        ("pro", 0, 100, F("0.1")),
    ]
    lines = book.lines(JAN)
    assert [(x.type, x.description, x.quantity_iu, x.amount_exact, x.amount) for x in lines] == [
        ("fee", "plan basic v1 fee, 2026-01-01..2026-01-16 (16/31 days)", F(0), F(160, 31), Decimal("5.16")),
        ("fee", "plan pro v1 fee, 2026-01-17..2026-01-31 (15/31 days)", F(0), F(300, 31), Decimal("9.68")),
        ("included", "digits: included by the plan", F(5838), F(0), Decimal("0.00")),
        ("overage", "digits: overage", F(462), F("0.462"), Decimal("0.46")),
    ]
    assert total(lines) == Decimal("15.30")

    early = Book([sub(1, "basic", at(2025, 12, 5)), sub(2, "pro", at(2026, 1, 17, 9))])
    assert early.rate(event(1, at(2026, 1, 17, 8, 59), 1))[0].plan_name == "basic"
    in_doc(
        "| 2026-01-10 | 1,200 | basic | 1,000 (all of basic's) | 200 | 0.2 |",
        "| 2026-01-20 | 5,000 | pro | 4,838 (all of pro's) | 162 | 0.162 |",
        "| 2026-01-25 | 100 | pro | 0 | 100 | 0.1 |",
        "| fee | plan basic v1 fee, 2026-01-01..2026-01-16 (16/31 days) | | 160/31 -> 5.16 |",
        "| fee | plan pro v1 fee, 2026-01-17..2026-01-31 (15/31 days) | | 300/31 -> 9.68 |",
        "| included | digits: included by the plan | 5,838 images | 0.00 |",
        "| overage | digits: overage | 462 images | 0.462 -> 0.46 |",
        "| total | | | **15.30** |",
    )


# -- 5. enterprise -----------------------------------------------------------------------------------------------


def _enterprise_usage(book: Book) -> None:
    book.rate(*(event(n, at(2026, 1, 17 + n), 10_000) for n in range(1, 6)))
    book.rate(*(event(n, at(2026, 1, 17 + n - 5), 25_000, "sentiment", SENTIMENT, TOKENS) for n in range(6, 10)))


def test_enterprise_rates_and_shortfall_for_a_whole_month() -> None:
    book = Book([sub(1, "acme-enterprise", at(2025, 12, 1))])
    _enterprise_usage(book)
    lines = book.lines(JAN)

    documented = next(json.loads(b) for b in blocks("json") if b.lstrip().startswith("["))
    assert [line.to_json() for line in lines] == documented
    assert total(lines) == Decimal("100.00")
    in_doc("Total **100.00**.")


def test_enterprise_commitment_prorated_from_the_17th() -> None:
    book = Book([sub(1, "acme-enterprise", at(2026, 1, 17, 9))])
    _enterprise_usage(book)
    lines = book.lines(JAN)

    shortfall = lines[-1]
    assert (shortfall.type, shortfall.amount_exact, shortfall.amount) == ("shortfall", F(198, 31), Decimal("6.39"))
    assert F(1500, 31) - 42 == F(198, 31)
    assert total(lines) == Decimal("48.39")
    in_doc("the shortfall 1500/31 - 42 = 198/31 -> **6.39**", "40.00 + 2.00 + 6.39 = **48.39**")


# -- 6. limits ---------------------------------------------------------------------------------------------------

DAY, PERIOD = date(2026, 1, 10), "2026-01"


def _admit(limiter: Limiter, account: str, quantity: int, *, key: str | None = None, price: str = "0.0010") -> Fraction:
    ticket = limiter.admit(
        account_id=account,
        key_id=key,
        unit_kind=IMAGE,
        quantity_iu=F(quantity),
        price_per_iu=F(price),
        day=DAY,
        period=PERIOD,
    )
    return ticket.cost


def _body(exc: Exception) -> dict[str, object]:
    return {"error": message_for(exc), **extra_fields_for(exc)}


def _documented_bodies() -> list[dict[str, object]]:
    return [json.loads(b) for b in blocks("json") if b.lstrip().startswith("{")]


def test_rpm_sliding_window_and_retry_after() -> None:
    now = [0.0]
    limiter = Limiter(monotonic=lambda: now[0])
    limiter.set_policies({"a": AccountPolicy("a", "USD", limits=LimitSet(rpm=60))})
    for i in range(60):
        now[0] = i * 0.5
        _admit(limiter, "a", 1)
    now[0] = 45.0
    with pytest.raises(RateLimited) as refused:
        _admit(limiter, "a", 1)
    assert (status_for(refused.value), headers_for(refused.value)) == (429, [(b"retry-after", b"15")])
    assert _body(refused.value) in _documented_bodies()
    now[0] = 60.0
    _admit(limiter, "a", 1)
    in_doc("a call at t = 45 s gets 429 with `Retry-After: 15`", "a call at t = 60 s is admitted")


def test_key_daily_quota() -> None:
    limiter = Limiter()
    quota = LimitSet(iu_per_day={IMAGE: F(500)})
    limiter.set_policies({"b": AccountPolicy("b", "USD", key_limits={"key_1": quota})})
    limiter.seed(DAY, PERIOD, {"b": SeedUsage()})
    _admit(limiter, "b", 480, key="key_1")
    with pytest.raises(QuotaExceeded) as refused:
        _admit(limiter, "b", 30, key="key_1")
    assert status_for(refused.value) == 402
    assert _body(refused.value) in _documented_bodies()
    _admit(limiter, "b", 20, key="key_1")
    in_doc("that used 480 today: a call of 30 images is refused; one of 20 is admitted")


def test_monthly_budget() -> None:
    limiter = Limiter()
    limiter.set_policies({"c": AccountPolicy("c", "USD", limits=LimitSet(budget=Decimal("5.00")))})
    limiter.seed(DAY, PERIOD, {"c": SeedUsage(Usage({}, {IMAGE: F(4990)}, F("4.99")))})
    with pytest.raises(QuotaExceeded) as refused:
        _admit(limiter, "c", 20)
    assert status_for(refused.value) == 402
    assert _body(refused.value) in _documented_bodies()
    assert _admit(limiter, "c", 10) == F("0.01")
    usage = limiter.usage("c")
    assert usage is not None and usage.spend_period == F(5)
    in_doc(
        "a call of 20 images (0.02) is refused; a call of 10 (0.01) is admitted and brings the spend to exactly 5.00"
    )


def test_budget_cost_counts_only_iu_beyond_the_included_ones() -> None:
    limiter = Limiter()
    policy = AccountPolicy("p", "USD", included={IMAGE: F(10_000)}, limits=LimitSet(budget=Decimal("100")))
    limiter.set_policies({"p": policy})
    limiter.seed(DAY, PERIOD, {"p": SeedUsage(Usage({}, {IMAGE: F(9_990)}, F(0)))})
    assert _admit(limiter, "p", 30) == F("0.02")
    in_doc("with 9,990 images used this month: a call of 30 images costs 20 x 0.0010 = 0.02")


def test_budget_estimate_of_a_volume_charge_whose_later_tier_is_dearer() -> None:
    dearer = ChargeModel("volume", (Tier(1000, Decimal("0.001")), Tier(None, Decimal("0.002"))))
    assert dearer.estimate_per_iu() == F("1.002")
    assert dearer.marginal(F(1000), F(1001)) == F("1.002")  # the bound is reached
    in_doc("one more IU may cost up to 0.002 + 1000 x (0.002 - 0.001) = 1.002")


def test_free_grant_hard_cap() -> None:
    limiter = Limiter()
    policy = AccountPolicy("d", "USD", grant={IMAGE: F(100)}, hard_cap_grant=True)
    limiter.set_policies({"d": policy})
    limiter.seed(DAY, PERIOD, {"d": SeedUsage()})
    _admit(limiter, "d", 60)
    _admit(limiter, "d", 40)
    with pytest.raises(QuotaExceeded) as refused:
        _admit(limiter, "d", 1)
    assert status_for(refused.value) == 402
    assert _body(refused.value) in _documented_bodies()
    with pytest.raises(QuotaExceeded) as no_grant:
        limiter.admit(
            account_id="d", key_id=None, unit_kind=REQUEST, quantity_iu=F(1), price_per_iu=F(0), day=DAY, period=PERIOD
        )
    assert _body(no_grant.value) in _documented_bodies()


def test_every_documented_error_body_is_one_the_code_produces() -> None:
    assert len(_documented_bodies()) == 5  # rpm, iu_per_day, budget, grant, grant of 0: each checked above


# -- 7. dynamic pricing ------------------------------------------------------------------------------------------


def test_the_dynamic_factor_worked_example() -> None:
    busy = DemandInputs(30, 2880, 5760, 4, Decimal(120), Decimal(80))
    wide = compute_factor(busy, Decimal("0.5"), Decimal(2))
    assert (wide.demand, wide.latency, wide.popularity, wide.raw) == (F(3), F(3, 2), F(2), F(8, 5))
    assert wide.factor == Decimal("1.6")
    assert compute_factor(busy, Decimal("0.5"), Decimal("1.5")).factor == Decimal("1.5")
    assert DIGITS * wide.factor == Decimal("0.00160")

    quiet = compute_factor(DemandInputs(1, 864, 2592, 3, Decimal(80), Decimal(80)), Decimal("0.5"), Decimal(2))
    assert (quiet.demand, quiet.popularity, quiet.raw, quiet.factor) == (F(1, 3), F(1), F(5, 6), Decimal("0.8333"))

    weights = DEMAND_WEIGHT + LATENCY_WEIGHT + POPULARITY_WEIGHT
    assert (1 - weights, 1 + (RATIO_CAP - 1) * weights) == (F("0.6"), F("2.2"))
    # the feedback term: f = mean score / 3 lies in [1/3, 5/3]
    assert (F("0.6") - QUALITY_WEIGHT * F(2, 3), F("2.2") + QUALITY_WEIGHT * F(2, 3)) == (F(17, 30), F(67, 30))
    in_doc(
        "raw = 1 + 0.25 x 2 + 0.1 x 0.5 + 0.05 x 1 = **1.6**",
        "with [0.5, 1.5] it is **1.5**",
        "0.0010 x 1.6 = 0.00160 per image",
        "raw = 1 - 1/6 = 5/6, factor **0.8333**",
        "(always within [17/30, 67/30]: without feedback within [0.6, 2.2]",
    )


def test_the_price_history_example() -> None:
    def record(seq: int, when: datetime, source: str, value: str) -> PriceRecord:
        price, factor = (Decimal(value), Decimal(1)) if source == "list" else (None, Decimal(value))
        return PriceRecord("digits", seq, when.isoformat(), price, factor, source, "", when.isoformat())

    book = PriceBook.build(
        [
            record(1, at(2026, 3, 1), "dynamic", "1.6"),
            record(2, at(2026, 3, 5), "list", "0.0012"),
            record(3, at(2026, 3, 5, 6), "dynamic", "1"),
        ]
    )
    prices = [state.unit_price(DIGITS) for _, state in book.timeline("digits")]
    assert prices == [Decimal("0.00160"), Decimal("0.00192"), Decimal("0.0012")]
    assert book.unit_price(DIGITS, "digits", at(2026, 2, 28)) == Decimal("0.0010")
    in_doc(
        "| 1 | 2026-03-01T00:00:00Z | dynamic | factor 1.6 | 0.00160 |",
        "| 2 | 2026-03-05T00:00:00Z | list | 0.0012 | 0.00192 |",
        "| 3 | 2026-03-05T06:00:00Z | dynamic | factor 1 | 0.0012 |",
    )


# -- 8. the ledger -----------------------------------------------------------------------------------------------


def test_audio_billed_per_second_is_exact() -> None:
    book = Book()
    book.rate(*(event(n, at(2026, 1, 2), 1, "stt", Decimal("0.05"), AUDIO) for n in range(1, 601)))
    assert book.rows[0].amount == F(1, 1200)
    assert sum((r.amount for r in book.rows), F(0)) == F("0.50")
    assert sum(usd(r.amount) for r in book.rows) == 0  # rounding each call first
    in_doc("one second at 0.05 per minute is 1/1200", "exactly 600/1200 = **0.50**")


def test_a_usage_transaction() -> None:
    book = Book()
    book.rate(event(1, at(2026, 1, 2), 10))
    (txn,) = book.uow.ledger.txns
    assert [(e.ledger_account, e.amount) for e in txn.entries] == [
        (receivable(CONSUMER), F(1, 100)),
        (payable(PROVIDER), F(-1, 125)),
        (PLATFORM_REVENUE, F(-1, 500)),
    ]
    in_doc("receivable +1/100, payable -1/125 (0.008), revenue:platform -1/500 (0.002)")


def test_the_provider_split_adds_up_exactly() -> None:
    gross_exact = F("1.2345")
    gross, provider, platform = split(gross_exact, gross_exact * F("0.8"), "USD")
    assert (gross, provider, platform) == (Decimal("1.23"), Decimal("0.99"), Decimal("0.24"))
    assert provider + platform == gross
    assert usd(gross_exact - gross_exact * F("0.8")) == Decimal("0.25")
    assert gross_exact * F("0.8") - F(provider) == F("-0.0024")
    in_doc(
        "gross 1.23, provider 0.99, platform fee 1.23 - 0.99 = 0.24 (not the rounded 0.2469 = 0.25)",
        "(here 0.9876 - 0.99 = -0.0024)",
    )


# -- 9. invoice lifecycle ----------------------------------------------------------------------------------------


def test_invoice_ids_are_deterministic() -> None:
    assert invoice_id("acc_demo", "2026-01", "USD") == "inv_8f228377a49567b07ed63666"
    in_doc("-> `inv_8f228377a49567b07ed63666`")


def test_a_late_event_is_an_adjustment_on_the_next_open_invoice() -> None:
    book = Book(closed={(CONSUMER, "2026-01", "USD"): 100})
    (row,) = book.rate(event(101, at(2026, 1, 31, 23, 30), 250))
    assert (row.kind, row.origin_period, row.period, row.amount) == ("adjustment", "2026-01", "2026-02", F("0.25"))
    lines = book.lines(FEB)
    assert [(x.type, x.description, x.quantity_iu, x.amount) for x in lines] == [
        ("adjustment", "digits: usage of 2026-01 that arrived after it was finalized", F(250), Decimal("0.25"))
    ]
    assert book.lines(JAN) == []

    both = Book(closed={(CONSUMER, "2026-01", "USD"): 100, (CONSUMER, "2026-02", "USD"): 100})
    assert both.rate(event(101, at(2026, 1, 31, 23, 30), 250))[0].period == MAR.label
    in_doc(
        "| adjustment | digits: usage of 2026-01 that arrived after it was finalized | 250 images | 0.25 |",
        "Had February also been finalized before offset 101, it would land on March.",
    )


# -- 10. rounding ------------------------------------------------------------------------------------------------


def test_half_to_even_to_the_minor_unit() -> None:
    assert (usd(F("0.025")), usd(F("0.035"))) == (Decimal("0.02"), Decimal("0.04"))
    assert (round_minor(F("12.5"), "JPY"), round_minor(F("13.5"), "JPY")) == (Decimal(12), Decimal(14))
    assert round_minor(F("1.0005"), "KWD") == Decimal("1.000")
    in_doc("0.025 -> 0.02, 0.035 -> 0.04; 12.5 JPY -> 12, 13.5 JPY -> 14")


def test_ledger_balance_and_invoice_total_differ_by_the_rounding_of_lines() -> None:
    book = Book()
    book.rate(
        event(1, at(2026, 1, 2), 7, "stt-a", Decimal("0.0500"), AUDIO),
        event(2, at(2026, 1, 2), 7, "stt-b", Decimal("0.0500"), AUDIO),
    )
    lines = book.lines(JAN)
    assert [(x.amount_exact, x.amount) for x in lines] == [(F(7, 1200), Decimal("0.01"))] * 2
    assert total(lines) == Decimal("0.02")
    receivable_balance = sum(
        (e.amount for t in book.uow.ledger.txns for e in t.entries if e.ledger_account == receivable(CONSUMER)),
        F(0),
    )
    assert receivable_balance == F(7, 600)
    assert usd(receivable_balance) == Decimal("0.01")
    assert receivable_balance - F(total(lines)) == F(-1, 120)  # after the credit note of a void
    in_doc(
        "7/60 x 0.05 = 7/1200 = 0.005833... -> **0.01**, so the invoice total is **0.02**",
        "2 x 7/1200 = 7/600 = 0.011666... (shown rounded as 0.01)",
        "7/600 - 0.02 = **-1/120**",
    )
