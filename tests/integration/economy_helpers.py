"""A platform with published, priced models and a pinned clock, for the economy tests (tests/integration).

Models are copies of the session's demo packages with their ``name:`` and ``pricing:`` (and for a second
provider, ``provider:``) replaced; usage reaches billing only through the event log, as from the gateway.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import text

from engines import append_to_log
from modelmarket.adapters.store import SqlStore
from modelmarket.billing.ledger import Balance
from modelmarket.billing.lifecycle import InvoiceDoc
from modelmarket.billing.period import Period
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.core.money import decimal_text, exact_text
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.registry.manifest import MANIFEST_NAME
from modelmarket.settings import Settings

PROVIDER = "demo-provider"
OTHER_PROVIDER = "other-provider"
IMAGE, TOKENS, AUDIO = UnitKind.IMAGE, UnitKind.TOKENS_1K, UnitKind.AUDIO_MINUTE
_ids = itertools.count(1)
_copies = itertools.count(1)

IMAGE_TIERS = [
    {"up_to": 10, "price_per_iu": "0.01"},
    {"up_to": 100, "price_per_iu": "0.005"},
    {"price_per_iu": "0.002"},
]
# name -> (demo package to copy, manifest fields to replace). ``digits`` is published as built (image, 0.0010).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "digits-b": ("digits", {"pricing": {"unit": "image", "currency": "USD", "price_per_iu": "0.0010"}}),
    "digits-grad": (
        "digits",
        {
            "pricing": {
                "unit": "image",
                "currency": "USD",
                "charge": "graduated",
                "tiers": IMAGE_TIERS,
            }
        },
    ),
    "digits-vol": (
        "digits",
        {
            "pricing": {
                "unit": "image",
                "currency": "USD",
                "charge": "volume",
                "tiers": IMAGE_TIERS,
            }
        },
    ),
    "digits-pkg": (
        "digits",
        {
            "pricing": {
                "unit": "image",
                "currency": "USD",
                "charge": "package",
                "package_iu": 25,
                "price_per_package": "0.30",
            }
        },
    ),
    "text-grad": (  # tokens_1k: 1,000 tokens are one IU
        "sentiment",
        {
            "pricing": {
                "unit": "tokens_1k",
                "currency": "USD",
                "charge": "graduated",
                "tiers": [{"up_to": 2, "price_per_iu": "0.10"}, {"price_per_iu": "0.05"}],
            }
        },
    ),
    "text-split": (  # input and output tokens priced apart
        "sentiment",
        {
            "pricing": {
                "unit": "tokens_1k",
                "currency": "USD",
                "input_price_per_iu": "0.01",
                "output_price_per_iu": "0.03",
            }
        },
    ),
    # The (small) sentiment package stands in for an audio model: billing reads only its pricing, and the
    # registry needs a BYTES input for a unit counted on audio.
    "audio-pkg": (
        "sentiment",
        {
            "pricing": {
                "unit": "audio_minute",
                "currency": "USD",
                "charge": "package",
                "package_iu": 1,
                "price_per_package": "0.06",
            }
        },
    ),
    "digits-eur": ("digits", {"pricing": {"unit": "image", "currency": "EUR", "price_per_iu": "0.0020"}}),
    "digits-o": (  # the same list price as digits, from a second provider
        "digits",
        {"provider": OTHER_PROVIDER, "pricing": {"unit": "image", "currency": "USD", "price_per_iu": "0.0010"}},
    ),
}

PLANS = """
plans:
- {name: free, kind: free, currency: USD, grant: {image: 5}}
- {name: pro, kind: subscription, currency: USD, fee: "20.00", included: {image: 10000}}
- name: pro-plus
  kind: subscription
  currency: USD
  fee: "50.00"
  included: {image: 10000}
  overage: {image: "0.0008"}
- {name: team, kind: subscription, currency: USD, fee: "60.00", included: {image: 30000}}
- name: ent
  kind: enterprise
  currency: USD
  rates: {digits: "0.0005"}
  commitment: "100.00"
"""


class PinnedClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def set(self, iso: str) -> None:
        self.now = datetime.fromisoformat(iso).replace(tzinfo=UTC)


def copy_package(demo_dir: Path, package: str, dest_root: Path, name: str, changes: Mapping[str, Any]) -> Path:
    """A private copy of a demo package named ``name``, with top-level manifest fields replaced."""
    dest = dest_root / f"{name}-{next(_copies)}"
    shutil.copytree(demo_dir / package, dest)
    path = dest / MANIFEST_NAME
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc.update(changes, name=name)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return dest


@dataclass
class Economy:
    platform: Platform
    clock: PinnedClock
    providers: dict[str, str]
    """Provider account name -> id."""
    model_provider: dict[str, str] = field(default_factory=dict)
    """Model name -> the id of the provider account that published it."""
    accounts: dict[str, str] = field(default_factory=dict)
    """Consumer name -> account id."""

    def account_name(self, account_id: str) -> str:
        return next(name for name, known in self.accounts.items() if known == account_id)

    def consumer(self, name: str, plan: str | None = None, at: str | None = None) -> str:
        """A consumer account, subscribed to ``plan`` (its first plan: in force from ``at``) when given."""
        if at is not None:
            self.clock.set(at)
        account = self.platform.accounts.create(name, "consumer")
        self.accounts[name] = account.id
        if plan is not None:
            self.platform.plans.subscribe(account.id, plan)
        return account.id

    def event(
        self,
        consumer: str,
        model: str,
        quantity: int,
        day: str,
        *,
        unit: UnitKind = IMAGE,
        price: str = "0.0010",
        currency: str = "USD",
        hour: int = 12,
        quantity_out: int = 0,
        factor: str = "1",
    ) -> UsageEvent:
        """One served call of ``quantity`` base units (images, tokens, seconds) at the list price ``price``."""
        return UsageEvent(
            id=f"evt-{next(_ids):08d}",
            source="gateway-1",
            account_id=self.accounts[consumer],
            time=datetime.fromisoformat(f"{day}T{hour:02d}:00:00+00:00"),
            model=model,
            version="1.0.0",
            provider_account_id=self.model_provider[model],
            unit_kind=unit,
            quantity=quantity,
            unit_price=Decimal(price),
            currency=currency,
            latency_ms=Decimal("3.5"),
            price_factor=Decimal(factor),
            quantity_out=quantity_out,
        )

    def append(self, events: Iterable[UsageEvent], *, log_ids: Iterable[str] | None = None) -> None:
        """Append events to the event log, as the gateway does (``log_ids``: the log's own ids, when not the
        events' ids: the log refuses an id twice, so a second delivery of one event needs another log id)."""
        events = list(events)
        ids = [e.id for e in events] if log_ids is None else list(log_ids)
        append_to_log(self.platform, [(i, e.encode()) for i, e in zip(ids, events, strict=True)])

    def invoice(self, consumer: str, period: str, currency: str = "USD") -> InvoiceDoc:
        docs = self.platform.invoices.invoices(self.accounts[consumer], _period(period))
        (doc,) = [d for d in docs if d.currency == currency]
        return doc

    def receivable(self, consumer: str) -> Balance:
        balances = self.platform.ledger.balances(self.accounts[consumer])
        (balance,) = [b for b in balances if b.ledger_account.startswith("receivable:")]
        return balance

    def sql(self, statement: str, **params: Any) -> int:
        """Run one SQL statement in its own transaction (to tamper with derived rows); returns the rows changed."""
        store: SqlStore = self.platform.store
        with store.engine.begin() as conn:
            return int(conn.execute(text(statement), params).rowcount)


def lines_of(doc: InvoiceDoc) -> list[tuple[str, str | None, str, str]]:
    """(type, model, quantity in IU, amount) of each line, as text."""
    return [(li.type, li.model, exact_text(li.quantity_iu), decimal_text(li.amount)) for li in doc.lines]


def _period(label: str) -> Period:
    return Period(int(label[:4]), int(label[5:]))


def make_economy(
    store: SqlStore, home: Path, demo_dir: Path, models: Iterable[str] = (), *, now: str = "2026-01-01T00:00:00"
) -> Economy:
    """A platform on ``store`` with the plans applied, the providers created, ``digits`` and ``models``
    published, and the clock at ``now`` (UTC)."""
    clock = PinnedClock(datetime.fromisoformat(now).replace(tzinfo=UTC))
    platform = bootstrap(Settings(home=home), store=store, clock=clock, runtimes=PluginRuntimes())
    wanted = list(models)
    names = {PROVIDER} | {MODELS[m][1].get("provider", PROVIDER) for m in wanted}
    providers = {n: platform.accounts.create(n, "provider").id for n in sorted(names)}
    economy = Economy(platform, clock, providers)
    platform.registry.publish(demo_dir / "digits")
    economy.model_provider["digits"] = providers[PROVIDER]
    for name in wanted:
        package, changes = MODELS[name]
        platform.registry.publish(copy_package(demo_dir, package, home / "packages", name, changes))
        economy.model_provider[name] = providers[changes.get("provider", PROVIDER)]
    platform.plans.apply(PLANS)
    return economy
