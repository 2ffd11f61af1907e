"""In-memory fakes of every port: service tests run on them in milliseconds.

A ``FakeStore`` is a unit-of-work factory over plain dicts. A write transaction works on a deep copy of the
state and swaps it in only when the block ends without an exception, so a failed service call leaves nothing
half-written, exactly as a rolled-back SQL transaction would. Locks are recorded, so a test can check that a
service asked for the lock it needs.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from modelmarket.accounts.ports import Account, StoredKey
from modelmarket.audit.ports import StoredAuditRecord
from modelmarket.audit.records import AuditRecord
from modelmarket.billing.plans import PlanVersion, Subscription
from modelmarket.billing.ports import (
    DynamicPricing,
    LedgerEntry,
    LedgerTxn,
    Payout,
    PriceRecord,
    RatedEvent,
    StoredInvoice,
    StoredLimits,
    StoredUsage,
)
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.core.uow import Lock
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.ports import CallStats, DailyUsage, KeptAnswer, KeyLookup, LogRecord, ModelActivity, Reject
from modelmarket.metering.units import UnitKind
from modelmarket.registry.ports import StoredAlias, StoredModel, StoredVersion
from modelmarket.routing.ports import StoredRoute
from modelmarket.routing.spec import Provider

CounterKey = tuple[str, str, str, str]


@dataclass
class _State:
    accounts: dict[str, Account] = field(default_factory=dict)
    keys: dict[str, StoredKey] = field(default_factory=dict)
    models: dict[str, StoredModel] = field(default_factory=dict)
    versions: dict[str, StoredVersion] = field(default_factory=dict)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)
    offsets: dict[str, int] = field(default_factory=dict)
    halted: dict[str, str] = field(default_factory=dict)
    events: dict[str, tuple[int, UsageEvent]] = field(default_factory=dict)
    daily: dict[tuple[str, str, str, UnitKind, str], DailyUsage] = field(default_factory=dict)
    rejects: dict[tuple[int, int], Reject] = field(default_factory=dict)
    audit: list[tuple[AuditRecord, str]] = field(default_factory=list)
    plan_versions: dict[tuple[str, int], PlanVersion] = field(default_factory=dict)
    subscriptions: dict[int, Subscription] = field(default_factory=dict)
    limits: dict[tuple[str, str], StoredLimits] = field(default_factory=dict)
    price_records: dict[tuple[str, int], PriceRecord] = field(default_factory=dict)
    dynamic_pricing: dict[str, DynamicPricing] = field(default_factory=dict)
    counters: dict[CounterKey, int] = field(default_factory=dict)
    rated: dict[str, RatedEvent] = field(default_factory=dict)
    txns: dict[str, LedgerTxn] = field(default_factory=dict)
    invoices: dict[str, StoredInvoice] = field(default_factory=dict)
    payouts: dict[str, Payout] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    routes: dict[str, StoredRoute] = field(default_factory=dict)
    providers: dict[str, Provider] = field(default_factory=dict)


class FakeAccounts:
    def __init__(self, s: _State) -> None:
        self.s = s

    def add(self, account: Account) -> None:
        self.s.accounts[account.id] = account

    def by_name(self, name: str) -> Account | None:
        return next((a for a in self.s.accounts.values() if a.name == name), None)

    def by_id(self, account_id: str) -> Account | None:
        return self.s.accounts.get(account_id)

    def all(self) -> list[Account]:
        return sorted(self.s.accounts.values(), key=lambda a: a.name)

    def add_key(self, key: StoredKey) -> None:
        self.s.keys[key.id] = key

    def key(self, key_id: str) -> StoredKey | None:
        return self.s.keys.get(key_id)

    def keys_of(self, account_id: str) -> list[StoredKey]:
        return sorted((k for k in self.s.keys.values() if k.account_id == account_id), key=lambda k: k.created_at)

    def revoke_key(self, key_id: str, revoked_at: str) -> None:
        self.s.keys[key_id] = replace(self.s.keys[key_id], revoked_at=revoked_at)

    def active_keys(self) -> list[tuple[str, str, Account]]:
        return [(k.key_hash, k.id, self.s.accounts[k.account_id]) for k in self.s.keys.values() if k.revoked_at is None]


class FakeRegistry:
    def __init__(self, s: _State) -> None:
        self.s = s

    def model(self, name: str) -> StoredModel | None:
        return self.s.models.get(name)

    def add_model(self, model: StoredModel) -> None:
        self.s.models[model.name] = model

    def version(self, model_name: str, version: str) -> StoredVersion | None:
        return next((v for v in self.s.versions.values() if v.model_name == model_name and v.version == version), None)

    def add_version(self, version: StoredVersion) -> None:
        assert self.version(version.model_name, version.version) is None, "unique (model, version)"
        self.s.versions[version.id] = version

    def newest_version(self, model_name: str) -> str | None:
        mine = [v for v in self.s.versions.values() if v.model_name == model_name]
        return max(mine, key=lambda v: v.semver).version if mine else None

    def alias(self, model_name: str, alias: str) -> str | None:
        return self.s.aliases.get((model_name, alias))

    def set_alias(self, alias: StoredAlias, updated_at: str) -> None:
        self.s.aliases[(alias.model_name, alias.alias)] = alias.version

    def models(self) -> list[StoredModel]:
        return sorted(self.s.models.values())

    def version_index(self) -> list[tuple[str, str]]:
        return [(v.id, v.model_name) for v in self.s.versions.values()]

    def versions(self, ids: Sequence[str]) -> list[StoredVersion]:
        return [self.s.versions[i] for i in ids if i in self.s.versions]

    def aliases(self) -> list[StoredAlias]:
        return [StoredAlias(m, a, v) for (m, a), v in self.s.aliases.items()]


class FakeUsage:
    def __init__(self, s: _State) -> None:
        self.s = s

    def offset(self, consumer: str) -> int:
        return self.s.offsets.get(consumer, 0)

    def save_offset(self, consumer: str, offset: int) -> None:
        self.s.offsets[consumer] = offset

    def halted(self, consumer: str) -> str | None:
        return self.s.halted.get(consumer)

    def set_halted(self, consumer: str, reason: str | None) -> None:
        if reason is None:
            self.s.halted.pop(consumer, None)
        else:
            self.s.halted[consumer] = reason

    def known_event_ids(self, event_ids: Sequence[str]) -> set[str]:
        return {i for i in event_ids if i in self.s.events}

    def add_events(self, events: Sequence[tuple[int, UsageEvent]]) -> None:
        for offset, event in events:
            assert event.id not in self.s.events, "event ids are unique"
            self.s.events[event.id] = (offset, event)

    def daily(self, keys: Collection[tuple[str, str, str, UnitKind, str]]) -> dict[Any, DailyUsage]:
        return {k: self.s.daily[k] for k in keys if k in self.s.daily}

    def put_daily(self, rows: Sequence[DailyUsage], existing: Collection[tuple[str, str, str, UnitKind, str]]) -> None:
        for row in rows:
            assert (row.key in self.s.daily) == (row.key in existing), f"daily {row.key}: insert or update as told"
            self.s.daily[row.key] = row

    def add_rejects(self, rejects: Sequence[Reject]) -> None:
        for r in rejects:
            self.s.rejects.setdefault((r.partition, r.log_offset), r)

    def daily_usage(self, account_id: str, since: str | None, until: str | None) -> list[DailyUsage]:
        return [
            d
            for d in self.s.daily.values()
            if d.account_id == account_id and (since is None or d.day >= since) and (until is None or d.day <= until)
        ]

    def daily_usage_all(self) -> list[DailyUsage]:
        return [self.s.daily[k] for k in sorted(self.s.daily)]

    def clear_derived(self, consumer: str) -> None:
        self.s.events.clear()
        self.s.daily.clear()
        self.s.rejects.clear()
        self.s.offsets[consumer] = 0

    def call_stats(self, since: str, until: str, latency_of: Collection[str] = ()) -> list[CallStats]:
        latencies: dict[str, list[Decimal]] = {}
        for _, e in self.s.events.values():
            if since <= e.time.isoformat() < until:
                latencies.setdefault(e.model, []).append(e.latency_ms)
        return [
            CallStats(name, len(ms), sorted(ms)[(len(ms) + 1) // 2 - 1] if name in latency_of else None)
            for name, ms in sorted(latencies.items())
        ]

    def model_activity(
        self, model_names: Collection[str], since_day: str, until_day: str, latency_sample_max: int
    ) -> list[ModelActivity]:
        """Counts from the per-day rows; percentiles (nearest rank) of the latest events, as the SQL one."""
        calls: dict[str, int] = {}
        for d in self.s.daily.values():
            if d.model_name in model_names and since_day <= d.day <= until_day:
                calls[d.model_name] = calls.get(d.model_name, 0) + d.events
        out = []
        for name in sorted(n for n, c in calls.items() if c > 0):
            events = [e for _, e in self.s.events.values() if e.model == name]
            in_days = [e for e in events if since_day <= e.time.isoformat()[:10] <= until_day]  # as stored
            in_days.sort(key=lambda e: e.time.isoformat(), reverse=True)
            sample = sorted(e.latency_ms for e in in_days[:latency_sample_max])
            n = len(sample)
            p50, p95 = (sample[(n * p + 99) // 100 - 1] if n else None for p in (50, 95))
            out.append(ModelActivity(name, calls[name], p50, p95))
        return out


class FakePlans:
    """``PlanRepository``: plan versions, subscriptions, limits and price records, ordered as the SQL one orders."""

    def __init__(self, s: _State) -> None:
        self.s = s

    def plan_versions(self, name: str | None = None) -> list[PlanVersion]:
        return [v for k, v in sorted(self.s.plan_versions.items()) if name is None or k[0] == name]

    def add_plan_version(self, plan: PlanVersion) -> None:
        assert (plan.name, plan.version) not in self.s.plan_versions, "unique (plan, version)"
        self.s.plan_versions[(plan.name, plan.version)] = plan

    def subscriptions(self, account_id: str | None = None) -> list[Subscription]:
        mine = [x for x in self.s.subscriptions.values() if account_id is None or x.account_id == account_id]
        return sorted(mine, key=lambda x: (x.account_id, x.effective_at, x.seq))

    def add_subscription(self, sub: Subscription) -> None:
        assert sub.seq not in self.s.subscriptions, "unique subscription seq"
        self.s.subscriptions[sub.seq] = sub

    def next_subscription_seq(self) -> int:
        return max(self.s.subscriptions, default=0) + 1

    def limits(self, account_id: str | None = None) -> list[StoredLimits]:
        return [v for k, v in sorted(self.s.limits.items()) if account_id is None or k[0] == account_id]

    def put_limits(self, limits: StoredLimits) -> None:
        self.s.limits[(limits.account_id, limits.key_id)] = limits

    def price_records(self, model_name: str | None = None) -> list[PriceRecord]:
        return [v for k, v in sorted(self.s.price_records.items()) if model_name is None or k[0] == model_name]

    def add_price_record(self, record: PriceRecord) -> None:
        assert (record.model_name, record.seq) not in self.s.price_records, "unique (model, seq)"
        self.s.price_records[(record.model_name, record.seq)] = record

    def dynamic_pricing(self) -> list[DynamicPricing]:
        return [self.s.dynamic_pricing[k] for k in sorted(self.s.dynamic_pricing)]

    def put_dynamic_pricing(self, config: DynamicPricing) -> None:
        self.s.dynamic_pricing[config.model_name] = config


class FakeLedger:
    """``LedgerRepository``: rating counters, rated events, transactions with their entries, invoices, payouts."""

    def __init__(self, s: _State) -> None:
        self.s = s

    def counters(self, keys: Sequence[CounterKey]) -> dict[CounterKey, int]:
        return {k: self.s.counters[k] for k in keys if k in self.s.counters}

    def put_counters(self, values: dict[CounterKey, int], existing: set[CounterKey]) -> None:
        for key, value in values.items():
            assert (key in self.s.counters) == (key in existing), f"counter {key}: insert or update as told"
            self.s.counters[key] = value

    def add_rated(self, rows: Sequence[RatedEvent]) -> None:
        """Records each usage event with its rating, as the SQL store does (one row per event)."""
        for row in rows:
            assert row.usage is not None, "a rated event comes with its usage event"
            assert row.event_id not in self.s.rated, "an event is rated once"
            assert row.event_id not in self.s.events, "event ids are unique"
            self.s.events[row.event_id] = (row.log_offset, row.usage)
            self.s.rated[row.event_id] = row._replace(usage=None)  # as read back

    def add_txns(self, txns: Sequence[LedgerTxn]) -> None:
        for txn in txns:
            assert txn.id not in self.s.txns, "unique transaction id"
            assert all(e.txn_id == txn.id for e in txn.entries), "entries belong to their transaction"
            self.s.txns[txn.id] = replace(txn, memo=txn.memo[:300])

    def rated(
        self,
        *,
        account_id: str | None = None,
        period: str | None = None,
        provider_account_id: str | None = None,
        origin_period: str | None = None,
        txn_id: str | None = None,
    ) -> Iterator[RatedEvent]:
        wanted = {
            "account_id": account_id,
            "period": period,
            "provider_account_id": provider_account_id,
            "origin_period": origin_period,
            "txn_id": txn_id,
        }
        for row in sorted(self.s.rated.values(), key=lambda r: r.log_offset):
            if all(value is None or getattr(row, name) == value for name, value in wanted.items()):
                yield row

    def stored_usage(self, period: str) -> Iterator[StoredUsage]:
        wanted = {period} | {r.origin_period for r in self.s.rated.values() if r.period == period}
        for row in sorted(self.s.rated.values(), key=lambda r: (r.log_offset, r.event_id)):
            if row.origin_period in wanted:
                e = self.s.events[row.event_id][1]
                yield StoredUsage(row, e.unit_price, e.time.isoformat(), e.latency_ms, e.price_factor)

    def txns(
        self,
        *,
        account_id: str | None = None,
        kind: str | None = None,
        period: str | None = None,
        ids: Sequence[str] | None = None,
    ) -> Iterator[LedgerTxn]:
        wanted = {"account_id": account_id, "kind": kind, "period": period}
        for txn_id in sorted(self.s.txns):
            txn = self.s.txns[txn_id]
            if ids is not None and txn_id not in ids:
                continue
            if all(value is None or getattr(txn, name) == value for name, value in wanted.items()):
                yield replace(txn, entries=tuple(sorted(txn.entries, key=lambda e: e.seq)))

    def entries_of(self, ledger_account: str) -> list[LedgerEntry]:
        found = [e for txn in self.s.txns.values() for e in txn.entries if e.ledger_account == ledger_account]
        return sorted(found, key=lambda e: (e.txn_id, e.seq))

    def invoice(self, invoice_id: str) -> StoredInvoice | None:
        return self.s.invoices.get(invoice_id)

    def invoices(self, account_id: str | None = None, period: str | None = None) -> list[StoredInvoice]:
        found = [
            x
            for x in self.s.invoices.values()
            if (account_id is None or x.account_id == account_id) and (period is None or x.period == period)
        ]
        return sorted(found, key=lambda x: (x.period, x.account_id, x.currency))

    def put_invoice(self, invoice: StoredInvoice) -> None:
        self.s.invoices[invoice.id] = invoice

    def billed_accounts(self) -> list[tuple[str, str]]:
        return sorted({(r.account_id, r.period) for r in self.s.rated.values()})

    def billed_periods(self, account_id: str) -> list[str]:
        return sorted({r.period for r in self.s.rated.values() if r.account_id == account_id})

    def closed_periods(self, account_ids: Sequence[str] | None = None) -> dict[tuple[str, str, str], int]:
        return {
            (x.account_id, x.period, x.currency): x.finalized_offset or 0
            for x in self.s.invoices.values()
            if x.status != "draft" and (account_ids is None or x.account_id in account_ids)
        }

    def last_rated_at(self, account_id: str | None) -> str | None:
        times = [
            e.time
            for event_id, (_, e) in self.s.events.items()
            if event_id in self.s.rated and (account_id is None or e.account_id == account_id)
        ]
        return max(times).isoformat() if times else None

    def setting(self, name: str) -> str | None:
        return self.s.settings.get(name)

    def put_setting(self, name: str, value: str) -> None:
        self.s.settings[name] = value

    def payouts(self, period: str | None = None) -> list[Payout]:
        found = [x for x in self.s.payouts.values() if period is None or x.period == period]
        return sorted(found, key=lambda x: (x.period, x.provider_account_id, x.currency, x.seq))

    def add_payout(self, payout: Payout) -> None:
        assert payout.id not in self.s.payouts, "unique payout id"
        self.s.payouts[payout.id] = payout

    def clear_derived(self) -> None:
        self.s.txns = {k: v for k, v in self.s.txns.items() if v.kind != "usage"}
        self.s.rated.clear()
        self.s.events.clear()  # a rated event is its usage event's row
        self.s.counters.clear()


class FakeAudit:
    def __init__(self, s: _State) -> None:
        self.s = s

    def last(self) -> tuple[int, str] | None:
        return (self.s.audit[-1][0].seq, self.s.audit[-1][0].hash) if self.s.audit else None

    def insert(self, record: AuditRecord, payload_json: str) -> None:
        self.s.audit.append((record, payload_json))

    def _stored(self, record: AuditRecord, payload_json: str) -> StoredAuditRecord:
        r = record
        return StoredAuditRecord(r.seq, r.occurred_at, r.actor, r.action, r.subject, payload_json, r.prev_hash, r.hash)

    def scan(self, batch_rows: int) -> Iterator[StoredAuditRecord]:
        for record, payload_json in self.s.audit:
            yield self._stored(record, payload_json)

    def page(self, after_seq: int, limit: int) -> list[StoredAuditRecord]:
        return [self._stored(r, p) for r, p in self.s.audit if r.seq > after_seq][:limit]

    def newest(self) -> StoredAuditRecord | None:
        return self._stored(*self.s.audit[-1]) if self.s.audit else None


class FakeRouting:
    """``RoutingRepository``: routes and providers by name."""

    def __init__(self, s: _State) -> None:
        self.s = s

    def routes(self) -> list[StoredRoute]:
        return [self.s.routes[k] for k in sorted(self.s.routes)]

    def route(self, name: str) -> StoredRoute | None:
        return self.s.routes.get(name)

    def put_route(self, route: StoredRoute) -> None:
        self.s.routes[route.name] = route

    def remove_route(self, name: str) -> bool:
        return self.s.routes.pop(name, None) is not None

    def providers(self) -> list[Provider]:
        return [self.s.providers[k] for k in sorted(self.s.providers)]

    def provider(self, name: str) -> Provider | None:
        return self.s.providers.get(name)

    def put_provider(self, provider: Provider) -> None:
        self.s.providers[provider.name] = provider

    def remove_provider(self, name: str) -> bool:
        return self.s.providers.pop(name, None) is not None


class FakeUnitOfWork:
    def __init__(self, s: _State) -> None:
        self.accounts = FakeAccounts(s)
        self.registry = FakeRegistry(s)
        self.usage = FakeUsage(s)
        self.audit = FakeAudit(s)
        self.plans = FakePlans(s)
        self.ledger = FakeLedger(s)
        self.routing = FakeRouting(s)
        self.locks: list[tuple[Lock, str, bool]] = []

    def lock(self, lock: Lock, key: str = "", *, shared: bool = False) -> None:
        self.locks.append((lock, key, shared))  # one writer at a time already: nothing else to exclude


class FakeStore:
    """``UnitOfWorkFactory`` over in-memory state, with all-or-nothing writes."""

    def __init__(self) -> None:
        self.state = _State()
        self.locks: list[tuple[Lock | None, str]] = []
        self.commits = 0

    @contextmanager
    def write(self, lock: Lock | None = None, key: str = "") -> Iterator[FakeUnitOfWork]:
        self.locks.append((lock, key))
        draft = copy.deepcopy(self.state)
        yield FakeUnitOfWork(draft)
        self.state = draft
        self.commits += 1

    @contextmanager
    def read(self) -> Iterator[FakeUnitOfWork]:
        yield FakeUnitOfWork(copy.deepcopy(self.state))


class FakeEventLog:
    """``EventLog`` as a list; offsets start at 1 and never repeat."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []
        self.closed = 0

    def append_many(self, events: Sequence[tuple[str, bytes]], kept: Sequence[KeptAnswer] = ()) -> set[str]:
        known = {r.event_id for r in self.records}
        duplicates = {k.event_id for k in kept if k.event_id in known}
        for event_id, payload in events:
            if event_id not in known:
                self.records.append(LogRecord(len(self.records) + 1, event_id, payload))
                known.add(event_id)
        return duplicates

    def read(self, after_offset: int, limit: int) -> list[LogRecord]:
        return [r for r in self.records if r.offset > after_offset][:limit]

    def last_offset(self) -> int:
        return self.records[-1].offset if self.records else 0

    def ack(self, upto_offset: int) -> None:
        """Nothing to forget: the reader's offset is in the store (as the embedded log)."""

    def lookup(self, event_id: str) -> KeyLookup:
        return KeyLookup(any(r.event_id == event_id for r in self.records), None)

    def close(self) -> None:
        self.closed += 1


class FakeBlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs: dict[str, bytes] = {}

    def put_file(self, src: Path, expected_sha256: str | None = None) -> tuple[str, int]:
        data = src.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            raise InvalidInput(f"{src} changed while it was being published")
        self.blobs[digest] = data
        return digest, len(data)

    def path(self, digest: str) -> Path:
        if digest not in self.blobs:
            raise NotFound(f"blob sha256:{digest} is not in the blob store")
        out = self.root / digest
        out.write_bytes(self.blobs[digest])
        return out

    def exists(self, digest: str) -> bool:
        return digest in self.blobs


class FakeRuntimes:
    """``RuntimeCatalog``: a fixed set of names; ``refuse`` maps a parameter name to the message to refuse it."""

    def __init__(
        self, names: Iterable[str] = ("onnx", "vader", "pocketsphinx"), refuse: Mapping[str, str] = {}
    ) -> None:
        self._names = tuple(names)
        self.refuse = dict(refuse)
        self.validated: list[tuple[str, dict[str, Any], list[str]]] = []

    def names(self) -> Iterable[str]:
        return self._names

    def validate(self, runtime: str, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        self.validated.append((runtime, dict(parameters), list(artifacts)))
        for name, message in self.refuse.items():
            if name in parameters:
                raise InvalidInput(f"parameters.{name}: {message}")
