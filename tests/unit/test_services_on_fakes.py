"""Service code on the in-memory fakes of its ports (tests/fakes.py): the rules, in milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from fakes import FakeBlobStore, FakeEventLog, FakeRuntimes, FakeStore
from modelmarket.accounts import AccountService
from modelmarket.audit import AuditService
from modelmarket.billing import InvoiceDoc, InvoiceService, LedgerService, Period, PlanService, Rater
from modelmarket.billing.charges import ChargeModel, Tier
from modelmarket.billing.enforcement import policies
from modelmarket.billing.rating import payable, receivable
from modelmarket.core.errors import AlreadyExists, Conflict, InvalidInput, MeteringHalted, NotFound, PermissionDenied
from modelmarket.core.ids import hash_api_key
from modelmarket.core.uow import Lock
from modelmarket.metering import MeteringService, UnitKind, UsageEvent, UsageService
from modelmarket.registry import CatalogueLoader, RegistryService

T0 = datetime(2026, 1, 31, 23, 0, tzinfo=UTC)
SHARE = Decimal("0.80")
JAN = Period(2026, 1)


def clock() -> datetime:
    return T0


@pytest.fixture()
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture()
def accounts(store: FakeStore) -> AccountService:
    return AccountService(store, clock)


# -- accounts -------------------------------------------------------------------------------------------------
def test_account_and_key_lifecycle_is_audited_and_revocation_removes_the_key(
    store: FakeStore, accounts: AccountService
) -> None:
    alice = accounts.create("alice", "consumer")
    with pytest.raises(AlreadyExists):
        accounts.create("alice", "provider")
    issued = accounts.issue_key("alice")
    assert accounts.key_index().authenticate(issued.secret) == alice
    assert hash_api_key(issued.secret) not in repr(store.state.audit)  # the audit never holds the key or its hash

    revoked = accounts.revoke_key(issued.key_id)

    assert revoked.revoked_at == T0.isoformat()
    assert accounts.key_index().authenticate(issued.secret) is None
    actions = [r.action for r, _ in store.state.audit]
    assert actions == ["account.created", "key.created", "key.revoked"]
    assert AuditService(store).verify().ok
    with pytest.raises(NotFound):
        accounts.revoke_key("key_missing")


def test_a_refused_account_writes_nothing(store: FakeStore, accounts: AccountService) -> None:
    with pytest.raises(InvalidInput, match="role"):
        accounts.create("bob", "admin")
    with pytest.raises(InvalidInput, match="name"):
        accounts.create("bad name!", "consumer")
    assert store.state.accounts == {} and store.state.audit == []


# -- registry -------------------------------------------------------------------------------------------------
@pytest.fixture()
def package(tmp_path: Path) -> Callable[..., Path]:
    made = iter(range(1_000))

    def make(name: str = "m", version: str = "1.0.0", data: bytes = b"weights", provider: str = "acme") -> Path:
        root = tmp_path / f"pkg-{next(made)}"
        root.mkdir()
        (root / "model.bin").write_bytes(data)
        (root / "modelmarket.yaml").write_text(
            f"name: {name}\nversion: {version}\ntask: t\nmodality: text\nruntime: vader\nprovider: {provider}\n"
            "license: MIT\nartifacts: [{path: model.bin}]\n"
            "inputs: [{name: text, datatype: BYTES, shape: [-1]}]\n"
            "outputs: [{name: label, datatype: BYTES, shape: [-1]}]\n"
            "pricing: {unit: tokens_1k, price_per_iu: '0.02', currency: USD}\ncard: {summary: s}\n"
        )
        return root

    return make


@pytest.fixture()
def registry(store: FakeStore, accounts: AccountService, tmp_path: Path) -> RegistryService:
    accounts.create("acme", "provider")
    accounts.create("other", "provider")
    return RegistryService(store, FakeBlobStore(tmp_path), clock, FakeRuntimes(refuse={"threads": "must be 1-64"}))


def test_publish_records_the_version_its_blobs_and_latest_under_the_publish_lock(
    store: FakeStore, registry: RegistryService, package: Callable[..., Path]
) -> None:
    result = registry.publish(package())
    assert result.created and result.version.artifacts[0].path == "model.bin"
    assert registry.blobs.exists(result.version.artifacts[0].sha256)  # type: ignore[attr-defined]
    assert (Lock.PUBLISH, "m") in store.locks
    assert registry.catalogue().resolve("m").version == "1.0.0"
    again = registry.publish(package())  # same bytes: a no-op
    assert not again.created and again.version.id == result.version.id


def test_a_refused_republish_stores_no_blob(registry: RegistryService, package: Callable[..., Path]) -> None:
    registry.publish(package(data=b"one"))
    blobs: FakeBlobStore = registry.blobs  # type: ignore[assignment]
    before = set(blobs.blobs)
    with pytest.raises(Conflict, match="immutable"):
        registry.publish(package(data=b"two"))
    assert set(blobs.blobs) == before


def test_runtime_parameters_are_checked_before_anything_is_stored(
    store: FakeStore, registry: RegistryService, package: Callable[..., Path]
) -> None:
    pkg = package()
    text = (pkg / "modelmarket.yaml").read_text().replace("card:", "parameters: {threads: 0}\ncard:")
    (pkg / "modelmarket.yaml").write_text(text)
    with pytest.raises(InvalidInput, match=r"parameters\.threads: must be 1-64"):
        registry.publish(pkg)
    assert store.state.versions == {} and not registry.blobs.blobs  # type: ignore[attr-defined]


def test_another_provider_cannot_publish_into_a_model(registry: RegistryService, package: Callable[..., Path]) -> None:
    registry.publish(package())
    with pytest.raises(PermissionDenied):
        registry.publish(package(version="1.0.1", provider="other"))


def test_versions_sort_by_semver_and_latest_follows_the_newest(
    registry: RegistryService, package: Callable[..., Path]
) -> None:
    for version in ("1.9.0", "1.10.0", "1.2.0"):
        registry.publish(package(version=version, data=version.encode()))
    entry = registry.catalogue().get("m")
    assert [v.version for v in entry.sorted_versions()] == ["1.2.0", "1.9.0", "1.10.0"]
    assert entry.resolve(None).version == "1.10.0"
    registry.move_alias("m", "stable", "1.2.0")
    assert registry.catalogue().resolve("m", "stable").version == "1.2.0"
    with pytest.raises(NotFound):
        registry.move_alias("m", "stable", "9.9.9")


def test_catalogue_loader_reuses_parsed_versions_and_reads_only_new_ones(
    store: FakeStore, registry: RegistryService, package: Callable[..., Path]
) -> None:
    registry.publish(package(version="1.0.0", data=b"a"))
    loader = CatalogueLoader(store)
    first = loader.load().resolve("m", "1.0.0")
    registry.publish(package(version="1.1.0", data=b"b"))
    second = loader.load()
    assert second.resolve("m", "1.0.0") is first  # the same parsed record, not re-read
    assert second.resolve("m").version == "1.1.0"


# -- metering, usage and billing ------------------------------------------------------------------------------
def event(n: int, quantity: int = 7, unit: UnitKind = UnitKind.AUDIO_MINUTE, when: datetime = T0) -> UsageEvent:
    return UsageEvent(
        id=f"req_{n}",
        source="modelmarket/gw",
        account_id="acc_c",
        time=when,
        model="speech",
        version="1.0.0",
        provider_account_id="acc_p",
        unit_kind=unit,
        quantity=quantity,
        unit_price=Decimal("0.006"),
        currency="USD",
        latency_ms=Decimal("1.5"),
    )


@pytest.fixture()
def log() -> FakeEventLog:
    return FakeEventLog()


@pytest.fixture()
def metering(store: FakeStore, log: FakeEventLog) -> MeteringService:
    return MeteringService(store, lambda: log, clock, poll_s=0.01, batch_max=2, projectors=(Rater(SHARE, clock),))


def test_metering_applies_each_event_once_and_sets_rejects_aside(
    store: FakeStore, log: FakeEventLog, metering: MeteringService
) -> None:
    log.append_many([(e.id, e.encode()) for e in (event(1), event(2), event(3))])
    log.records.append(log.records[0].__class__(4, "req_1", event(1).encode()))  # a duplicate at a new offset
    log.append_many([("junk", b"{not json")])
    assert metering.catch_up() == 5
    assert set(store.state.events) == {"req_1", "req_2", "req_3"}
    assert list(store.state.rejects) == [(0, 5)]
    (day,) = store.state.daily.values()
    assert (day.events, day.quantity_base, day.amount_numerator) == (3, 21, Decimal("0.126"))
    assert all(lock == Lock.METERING for lock, _ in store.locks[-3:])
    assert metering.catch_up() == 0


def test_a_truncated_log_halts_metering_and_leaves_it_halted_until_resumed(
    store: FakeStore, log: FakeEventLog, metering: MeteringService
) -> None:
    log.append_many([(e.id, e.encode()) for e in (event(1), event(2))])
    metering.catch_up()
    log.records.clear()  # the log was replaced by an empty one

    with pytest.raises(MeteringHalted, match="replaced or truncated"):
        metering.catch_up()
    assert "replaced or truncated" in (metering.halted() or "")
    log.append_many([(event(9).id, event(9).encode())])
    with pytest.raises(MeteringHalted):  # still halted: nothing is skipped silently
        metering.catch_up()
    assert "req_9" not in store.state.events
    metering.resume()
    assert metering.halted() is None


def test_usage_is_exact_in_base_units_and_dates_must_exist(store: FakeStore, metering: MeteringService) -> None:
    log: FakeEventLog = metering.open_log()  # type: ignore[assignment]
    log.append_many([(e.id, e.encode()) for e in (event(1, 1), event(2, 1))])
    usage = UsageService(store, metering)
    summary = usage.summary("acc_c", "2026-01-01", "2026-01-31")
    (line,) = summary.models
    assert (line.quantity_base, line.iu_exact, line.amount_exact) == (2, Fraction(2, 60), Fraction(12, 60000))
    assert summary.to_json()["models"][0]["iu"] == "1/30"
    for bad in ("2026-02-30", "2026-13-01", "26-01-01", "2026-1-1"):
        with pytest.raises(InvalidInput, match="is not a date"):
            usage.summary("acc_c", bad)
    with pytest.raises(InvalidInput, match="after"):
        usage.summary("acc_c", "2026-02-01", "2026-01-01")


def test_invoice_of_a_pinned_period_rounds_once_per_line(store: FakeStore, metering: MeteringService) -> None:
    log: FakeEventLog = metering.open_log()  # type: ignore[assignment]
    log.append_many([(f"req_{n}", event(n, 1).encode()) for n in range(1, 61)])  # 60 seconds at 0.006/min
    log.append_many([("req_late", event(99, 1, when=datetime(2026, 2, 1, 0, 0, tzinfo=UTC)).encode())])
    invoices = InvoiceService(store, metering, clock, grace_s=0)
    (invoice,) = invoices.invoices("acc_c", JAN)
    assert invoice.events == 60 and invoice.total == Decimal("0.01")  # 0.006 exactly, rounded once
    assert invoice.lines[0].amount_exact == Fraction(6, 1000)
    assert store.state.invoices[invoice.id].status == "draft"  # the draft is kept, with its lines
    (statement,) = LedgerService(store, metering, clock, metering.open_log).statements(JAN, "acc_p")
    assert statement.provider_amount + statement.platform_fee == statement.gross
    with pytest.raises(InvalidInput, match="period 2026-03 has not started"):  # no usage landed on it
        invoices.invoices("acc_c", Period(2026, 3))
    assert [d.period for d in invoices.invoices("acc_c", Period(2026, 2))] == ["2026-02"]  # the late event did


def test_audit_verify_on_fakes_catches_an_edited_record(store: FakeStore, accounts: AccountService) -> None:
    accounts.create("a", "consumer")
    accounts.create("b", "consumer")
    record, payload = store.state.audit[0]
    store.state.audit[0] = (record, payload.replace('"consumer"', '"operator"'))
    result = AuditService(store).verify()
    assert not result.ok and result.first_broken_seq == 1


def test_fakes_roll_back_a_failed_write(store: FakeStore, accounts: AccountService) -> None:
    accounts.create("kept", "consumer")
    with pytest.raises(RuntimeError), store.write() as uow:
        uow.accounts.add(accounts.list()[0].__class__("acc_x", "lost", "consumer", T0.isoformat()))
        raise RuntimeError("boom")
    assert [a.name for a in accounts.list()] == ["kept"]


def test_a_text_priced_model_without_a_bytes_input_is_refused(
    store: FakeStore, registry: RegistryService, package: Callable[..., Path]
) -> None:
    pkg = package()
    manifest = (
        (pkg / "modelmarket.yaml")
        .read_text()
        .replace("datatype: BYTES, shape: [-1]}]\noutputs", "datatype: INT64, shape: [-1]}]\noutputs")
    )
    (pkg / "modelmarket.yaml").write_text(manifest)
    with pytest.raises(InvalidInput, match=r"pricing\.unit: tokens_1k is counted on BYTES inputs"):
        registry.publish(pkg)
    assert store.state.versions == {}


def test_audit_verify_names_a_record_edited_into_json_it_cannot_hash(
    store: FakeStore, accounts: AccountService
) -> None:
    accounts.create("a", "consumer")
    record, _ = store.state.audit[0]
    store.state.audit[0] = (record, '{"role": 1.5}')
    result = AuditService(store).verify()
    assert not result.ok and result.first_broken_seq == 1 and "edited" in (result.reason or "")


# -- the economy: plans, rating, invoices, the ledger --------------------------------------------------------
PLANS = """
plans:
- {name: free, kind: free, currency: USD, grant: {image: 5}, limits: {rpm: 60}}
- {name: pro, kind: subscription, currency: USD, fee: "31.00", included: {image: 100}, overage: {image: "0.01"}}
"""


class MovingClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, iso: str) -> None:
        self.now = datetime.fromisoformat(iso).replace(tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def set(self, iso: str) -> None:
        self.now = datetime.fromisoformat(iso).replace(tzinfo=UTC)


@dataclass
class Economy:
    store: FakeStore
    log: FakeEventLog
    clock: MovingClock
    metering: MeteringService
    plans: PlanService
    invoices: InvoiceService
    ledger: LedgerService

    def append(self, *events: UsageEvent) -> None:
        self.log.append_many([(e.id, e.encode()) for e in events])


def economy_on(store: FakeStore, log: FakeEventLog, rater: Rater | None = None) -> Economy:
    moving = MovingClock("2026-01-01T00:00:00")
    rater = rater or Rater(SHARE, moving)
    metering = MeteringService(store, lambda: log, moving, poll_s=0.01, batch_max=2, projectors=(rater,))
    return Economy(
        store,
        log,
        moving,
        metering,
        PlanService(store, moving),
        InvoiceService(store, metering, moving, grace_s=0),
        LedgerService(store, metering, moving, lambda: log),
    )


@pytest.fixture()
def eco(store: FakeStore, log: FakeEventLog) -> Economy:
    return economy_on(store, log)


_calls = iter(range(1, 1_000_000))


def images(account: str, quantity: int, day: str = "2026-01-10", price: str = "0.002") -> UsageEvent:
    """A call to ``digits`` (not published here: rated at the price stamped on the event) of ``quantity`` images."""
    return UsageEvent(
        id=f"img_{next(_calls)}",
        source="modelmarket/gw",
        account_id=account,
        time=datetime.fromisoformat(f"{day}T12:00:00+00:00"),
        model="digits",
        version="1.0.0",
        provider_account_id="acc_p",
        unit_kind=UnitKind.IMAGE,
        quantity=quantity,
        unit_price=Decimal(price),
        currency="USD",
        latency_ms=Decimal("2"),
    )


def lines(doc: InvoiceDoc) -> list[tuple[str, str | None, int, str, str]]:
    """(type, model, events, IU, amount) of each line of an invoice."""
    return [(li.type, li.model, li.events, str(li.quantity_iu), str(li.amount)) for li in doc.lines]


def plans_state(store: FakeStore) -> tuple[object, ...]:
    s = store.state
    return (dict(s.plan_versions), dict(s.subscriptions), list(s.audit))


def test_plans_apply_by_version_move_subscribers_and_a_refused_file_writes_nothing(
    store: FakeStore, eco: Economy
) -> None:
    assert [(r.name, r.version, r.action) for r in eco.plans.apply(PLANS)] == [
        ("free", 1, "created"),
        ("pro", 1, "created"),
    ]
    assert [r.action for r in eco.plans.apply(PLANS)] == ["unchanged", "unchanged"]
    first = eco.plans.subscribe("acc_c", "pro")  # the first plan starts at once
    assert (first.plan_name, first.plan_version, first.effective_at) == ("pro", 1, "2026-01-01T00:00:00+00:00")
    assert eco.plans.subscribe("acc_c", "pro") == first  # already on it: nothing new

    eco.clock.set("2026-01-15T00:00:00")
    changed = eco.plans.apply(PLANS.replace('fee: "31.00"', 'fee: "40.00"'))
    assert [(r.name, r.version, r.action, r.moved) for r in changed] == [
        ("free", 1, "unchanged", 0),
        ("pro", 2, "changed", 1),
    ]
    moved = store.state.subscriptions[2]
    assert (moved.plan_name, moved.plan_version, moved.effective_at) == ("pro", 2, "2026-02-01T00:00:00+00:00")
    assert eco.plans.in_force("acc_c")[0] == first  # until the next period
    assert eco.plans.in_force("acc_c", datetime(2026, 2, 2, tzinfo=UTC))[0] == moved

    before = plans_state(store)
    with pytest.raises(InvalidInput, match="its currency cannot change"):
        eco.plans.apply(
            PLANS.replace(
                "name: pro, kind: subscription, currency: USD", "name: pro, kind: subscription, currency: EUR"
            )
        )
    assert plans_state(store) == before  # the new version was added, then rolled back with the whole write
    with pytest.raises(NotFound, match="no plan named 'gold'"):
        eco.plans.subscribe("acc_c", "gold")
    actions = [r.action for r, _ in store.state.audit]
    assert actions == ["plan.created", "plan.created", "subscription.changed", "plan.changed"]
    assert all(lock == Lock.PLANS for lock, _ in store.locks if lock is not Lock.METERING)


def test_limits_merge_clear_and_make_the_gateway_policy(store: FakeStore, eco: Economy) -> None:
    eco.plans.apply(PLANS)
    eco.plans.subscribe("acc_f", "free")
    eco.plans.set_limits("acc_f", None, rpm=10, iu_per_day={UnitKind.IMAGE: Fraction(3)}, budget=None)
    merged = eco.plans.set_limits("acc_f", None, rpm=None, iu_per_day=None, budget=Decimal("5"))
    assert (merged.rpm, merged.iu_per_day, merged.budget) == (10, {UnitKind.IMAGE: Fraction(3)}, Decimal("5"))
    eco.plans.set_limits("acc_f", "key_1", rpm=2, iu_per_day=None, budget=None)
    with pytest.raises(InvalidInput, match="rpm: must be between 1 and"):
        eco.plans.set_limits("acc_f", None, rpm=0, iu_per_day=None, budget=None)
    with store.read() as uow:
        policy = policies(uow, eco.clock())["acc_f"]
    assert (policy.plan, policy.hard_cap, policy.grant) == ("free", True, {UnitKind.IMAGE: Fraction(5)})
    assert (policy.limits.rpm, policy.limits.budget, policy.key_limits["key_1"].rpm) == (10, Decimal("5"), 2)

    cleared = eco.plans.set_limits("acc_f", None, rpm=None, iu_per_day=None, budget=None, clear=True)
    assert (cleared.rpm, cleared.iu_per_day, cleared.budget) == (None, {}, None)
    with store.read() as uow:
        assert policies(uow, eco.clock())["acc_f"].limits.rpm == 60  # the plan's own limit shows through again
    assert [x.key_id for x in eco.plans.limits("acc_f")] == ["", "key_1"]


def test_rating_a_free_grant_and_a_subscription_with_included_iu_then_overage(store: FakeStore, eco: Economy) -> None:
    eco.plans.apply(PLANS)
    eco.plans.subscribe("acc_free", "free")
    eco.plans.subscribe("acc_pro", "pro")  # from 2026-01-01: the whole of January
    # batches of two events (batch_max): the included IU counter carries from one batch to the next
    eco.append(images("acc_free", 2), images("acc_free", 2), *(images("acc_pro", 40) for _ in range(3)))

    (free,) = eco.invoices.invoices("acc_free", JAN)
    assert lines(free) == [("granted", "digits", 2, "4", "0.00")]  # 4 of the 5 granted images, billed at 0
    (pro,) = eco.invoices.invoices("acc_pro", JAN)
    assert lines(pro) == [
        ("fee", None, 0, "0", "31.00"),  # 31/31 days of 31.00
        ("included", "digits", 3, "100", "0.00"),
        ("overage", "digits", 3, "20", "0.20"),  # 120 - 100 images at the plan's 0.01
    ]
    assert (pro.total, pro.events) == (Decimal("31.20"), 3)
    rated = sorted(store.state.rated.values(), key=lambda r: r.log_offset)
    assert [(r.granted_base, r.amount, r.provider_amount) for r in rated[2:]] == [
        (40, Fraction(0), Fraction(0)),
        (40, Fraction(0), Fraction(0)),
        (20, Fraction("0.20"), Fraction("0.16")),  # the third call crosses the included 100
    ]
    assert all(r.amount == 0 and r.plan_name == "free" for r in rated[:2])
    [balance] = eco.ledger.balances("acc_pro")
    assert (balance.ledger_account, balance.exact) == (receivable("acc_pro"), Fraction("0.20"))  # fee: at finalize


def test_the_rater_prices_a_tiered_charge_from_its_charge_source(store: FakeStore, log: FakeEventLog) -> None:
    graduated = ChargeModel("graduated", (Tier(10, Decimal("0.01")), Tier(None, Decimal("0.005"))))
    asked: list[tuple[str, str]] = []

    def charges(uow: object, model: str, version: str) -> ChargeModel:
        asked.append((model, version))
        return graduated

    eco = economy_on(store, log, Rater(SHARE, MovingClock("2026-02-01T00:00:00"), charges=charges))
    eco.append(images("acc_c", 4, price="0.01"), images("acc_c", 7, price="0.01"), images("acc_c", 30, price="0.01"))
    (invoice,) = eco.invoices.invoices("acc_c", JAN)
    # 41 images graduated: 10 x 0.01 + 31 x 0.005 = 0.255 -> 0.26 (half to even); each call pays its marginal
    assert lines(invoice) == [("usage", "digits", 3, "41", "0.26")]
    assert sorted(r.amount for r in store.state.rated.values()) == [
        Fraction("0.04"),
        Fraction("0.065"),
        Fraction("0.15"),
    ]
    assert set(asked) == {("digits", "1.0.0")}


def test_invoice_draft_finalize_adjust_and_void(store: FakeStore, eco: Economy) -> None:
    eco.plans.apply(PLANS)
    eco.plans.subscribe("acc_pro", "pro")
    eco.append(*(images("acc_pro", 40) for _ in range(3)))
    (draft,) = eco.invoices.invoices("acc_pro", JAN)
    assert (draft.status, store.state.invoices[draft.id].status) == ("draft", "draft")

    eco.clock.set("2026-02-05T00:00:00")
    final = eco.invoices.finalize(draft.id)
    assert (final.status, final.lines, final.total) == ("finalized", draft.lines, Decimal("31.20"))
    assert (Lock.METERING, "") in store.locks
    [fee] = [t for t in store.state.txns.values() if t.kind == "fee"]
    assert [(e.ledger_account, e.amount) for e in fee.entries] == [
        (receivable("acc_pro"), Fraction(31)),
        ("revenue:platform", Fraction(-31)),
    ]
    assert store.state.audit[-1][0].action == "invoice.finalized"
    with pytest.raises(Conflict, match="already finalized"):
        eco.invoices.finalize(draft.id)

    eco.append(images("acc_pro", 10, day="2026-01-20"))  # January's, read after January was finalized
    (january,) = eco.invoices.invoices("acc_pro", JAN)
    assert january == final  # a finalized invoice never changes
    (february,) = eco.invoices.invoices("acc_pro", Period(2026, 2))
    assert lines(february) == [
        ("fee", None, 0, "0", "31.00"),
        ("adjustment", "digits", 1, "10", "0.10"),  # past the included 100 of January: overage at 0.01
    ]

    with pytest.raises(InvalidInput, match="say why"):
        eco.invoices.void(final.id, " ")
    with pytest.raises(Conflict, match="only a finalized invoice"):
        eco.invoices.void(february.id, "wrong")
    voided = eco.invoices.void(final.id, "billed twice")
    assert (voided.status, voided.void_reason, voided.to_json()["credit_note"]["amount"]) == (
        "void",
        "billed twice",
        "-31.20",
    )
    [credit] = [t for t in store.state.txns.values() if t.kind == "credit"]
    assert sum(e.amount for e in credit.entries) == 0
    # receivable: usage 0.20 + fee 31 - credit 31.20 + the late usage 0.10
    assert [b.exact for b in eco.ledger.balances("acc_pro")] == [Fraction("0.10")]
    assert eco.ledger.verify().ok


def test_ledger_verify_payouts_and_rebuild(store: FakeStore, eco: Economy) -> None:
    eco.append(images("acc_a", 10, price="0.0125"), images("acc_b", 2, price="0.0125"))  # 0.125 + 0.025
    report = eco.ledger.verify()
    assert (report.ok, report.rated_events) == (True, 2)
    (statement,) = eco.ledger.statements(JAN)
    assert (statement.gross, statement.provider_amount, statement.platform_fee) == (
        Decimal("0.15"),
        Decimal("0.12"),
        Decimal("0.03"),
    )

    eco.clock.set("2026-02-10T00:00:00")
    [paid] = eco.ledger.run_payouts(JAN)
    assert (paid.provider_account_id, paid.amount, paid.currency, paid.seq) == ("acc_p", Decimal("0.12"), "USD", 1)
    assert eco.ledger.run_payouts(JAN) == []  # paid once
    assert [b.exact for b in eco.ledger.balances("acc_p")] == [Fraction(0)]
    eco.append(images("acc_b", 4, day="2026-01-30", price="0.0125"))  # late, but January is still a draft
    [late] = eco.ledger.run_payouts(JAN)
    assert (late.amount, late.seq) == (Decimal("0.04"), 2)  # only what January earned since: 0.05 x 0.8
    assert [p.amount for p in eco.ledger.payouts(JAN)] == [Decimal("0.12"), Decimal("0.04")]
    assert [b.ledger_account for b in eco.ledger.balances("acc_p")] == [payable("acc_p")]

    assert eco.ledger.rebuild().identical
    usage_txn = next(t for t in store.state.txns.values() if t.kind == "usage")
    tampered = replace(usage_txn.entries[0], amount=Fraction(999))
    store.state.txns[usage_txn.id] = replace(usage_txn, entries=(tampered, *usage_txn.entries[1:]))
    broken = eco.ledger.verify()
    assert not broken.ok and f"transaction {usage_txn.id} does not balance in USD" in (broken.violation or "")
    repaired = eco.ledger.rebuild()
    assert not repaired.identical and eco.ledger.verify().ok
    assert len(store.state.payouts) == 2  # payouts are facts: a rebuild keeps them
