"""The gateway's economy: how it prices a call for the limiter and how a reload seeds the limiter's counters."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from modelmarket.billing.enforcement import Limits, Policy, Used
from modelmarket.core.errors import QuotaExceeded
from modelmarket.gateway.economy import Economy, Priced
from modelmarket.gateway.limits import Usage
from modelmarket.metering.units import UnitKind
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.registry.manifest import parse_manifest

IMAGE = UnitKind.IMAGE
NOW = datetime(2024, 5, 14, 12, tzinfo=UTC)
LIST = Priced(Decimal("1"), Decimal("1"))


def version(**pricing: Any) -> VersionRecord:
    manifest = parse_manifest(
        {
            "name": "m",
            "version": "1.0.0",
            "task": "t",
            "modality": "image",
            "runtime": "vader",
            "provider": "p",
            "license": "MIT",
            "artifacts": [{"path": "a"}],
            "inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
            "pricing": {"unit": "image", "currency": "USD", **pricing},
            "card": {"summary": "s"},
        }
    )
    return VersionRecord("v1", "m", "1.0.0", "d" * 64, manifest, "acc_p", (), "2024-01-01T00:00:00Z")


def policy(
    *,
    included: dict[UnitKind, Fraction] | None = None,
    limits: Limits | None = None,
    key_limits: dict[str, Limits] | None = None,
    rates: dict[str, Decimal] | None = None,
    overage: dict[UnitKind, Decimal] | None = None,
) -> Policy:
    return Policy(
        account_id="acc",
        currency="USD",
        plan="pro",
        grant={},
        included=included or {},
        hard_cap=False,
        limits=limits or Limits(),
        key_limits=key_limits or {},
        rates=rates or {},
        overage=overage or {},
    )


class Store:
    def __init__(self, *policies: Policy) -> None:
        self.policies = {p.account_id: p for p in policies}
        self.used: dict[str, Used] = {}
        self.loads: list[list[str]] = []

    def load_policies(self, at: datetime) -> dict[str, Policy]:
        return dict(self.policies)

    def load_used(self, account_ids: list[str], day: date, currencies: dict[str, str]) -> dict[str, Used]:
        self.loads.append(account_ids)
        return {a: self.used.get(a, Used({}, {}, Fraction(0))) for a in account_ids}


def economy_of(store: Store) -> Economy:
    economy = Economy(store.load_policies, store.load_used, None, lambda: NOW, refresh_s=60)
    asyncio.run(economy.reload())
    return economy


def test_a_plan_rate_of_zero_is_a_rate_not_the_list_price() -> None:
    store = Store(policy(rates={"m": Decimal("0")}, limits=Limits(budget=Decimal("0.50"))))
    economy = economy_of(store)
    ticket = economy.admit("acc", None, version(price_per_iu="1"), 10, LIST, NOW)
    assert ticket.cost == 0


def test_an_overage_rate_of_zero_is_a_rate_too() -> None:
    store = Store(policy(overage={IMAGE: Decimal("0")}, limits=Limits(budget=Decimal("0.50"))))
    economy = economy_of(store)
    assert economy.admit("acc", None, version(price_per_iu="1"), 10, LIST, NOW).cost == 0


def test_a_package_call_crossing_the_included_iu_is_estimated_at_the_blocks_it_can_start() -> None:
    store = Store(policy(included={IMAGE: Fraction(1000)}, limits=Limits(budget=Decimal("1"))))
    economy = economy_of(store)
    package = version(charge="package", package_iu=1000, price_per_package="0.05")
    ticket = economy.admit("acc", None, package, 1001, Priced(Decimal("0.05"), Decimal("2")), NOW)
    assert ticket.cost == Fraction(1, 10)  # 1 billable image starts a block of 0.05, at a dynamic factor of 2
    assert economy.admit("acc", None, package, 1, LIST, NOW).cost == Fraction(5, 100)


def test_per_unit_and_plan_rates_price_the_billable_iu_at_the_rate() -> None:
    store = Store(policy(included={IMAGE: Fraction(10)}, limits=Limits(budget=Decimal("100"))))
    economy = economy_of(store)
    assert economy.admit(
        "acc", None, version(price_per_iu="0.5"), 12, Priced(Decimal("0.6"), Decimal("1.2")), NOW
    ).cost == Fraction(12, 10)
    store.policies["acc"] = policy(
        included={IMAGE: Fraction(10)}, limits=Limits(budget=Decimal("100")), overage={IMAGE: Decimal("0.25")}
    )
    asyncio.run(economy.reload())
    assert economy.admit("acc", None, version(price_per_iu="0.5"), 2, LIST, NOW).cost == Fraction(1, 2)


def test_a_quota_set_on_one_key_keeps_the_other_keys_and_the_accounts_counters() -> None:
    k1 = Limits(iu_per_day={IMAGE: Fraction(500)})
    store = Store(policy(key_limits={"k1": k1}))
    economy = economy_of(store)
    assert store.loads == [["acc"]]
    model, free = version(price_per_iu="0"), Priced(Decimal("0"), Decimal("1"))
    economy.limiter.settle(economy.admit("acc", "k1", model, 480, free, NOW))
    in_flight = economy.admit("acc", "k1", model, 10, free, NOW)
    store.used["acc"] = Used({IMAGE: Fraction(480)}, {IMAGE: Fraction(480)}, Fraction(0))  # no per-key usage
    store.policies["acc"] = policy(key_limits={"k1": k1, "k2": Limits(iu_per_day={IMAGE: Fraction(5)})})
    asyncio.run(economy.reload())
    assert economy.limiter.usage("acc", "k1") == Usage({IMAGE: Fraction(490)}, {IMAGE: Fraction(490)})
    assert economy.limiter.usage("acc") == Usage({IMAGE: Fraction(490)}, {IMAGE: Fraction(490)})
    assert economy.limiter.usage("acc", "k2") == Usage({}, {})
    with pytest.raises(QuotaExceeded):
        economy.admit("acc", "k1", model, 11, free, NOW)
    economy.limiter.cancel(in_flight)
    assert economy.limiter.usage("acc") == Usage({IMAGE: Fraction(480)}, {IMAGE: Fraction(480)})
