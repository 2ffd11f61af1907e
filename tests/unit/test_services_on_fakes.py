"""Service code on the in-memory fakes of its ports (tests/fakes.py): the rules, in milliseconds."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from fakes import FakeBlobStore, FakeEventLog, FakeRuntimes, FakeStore
from modelmarket.accounts import AccountService
from modelmarket.audit import AuditService
from modelmarket.billing import BillingService, Period
from modelmarket.core.errors import AlreadyExists, Conflict, InvalidInput, MeteringHalted, NotFound, PermissionDenied
from modelmarket.core.ids import hash_api_key
from modelmarket.core.uow import Lock
from modelmarket.metering import MeteringService, UnitKind, UsageEvent, UsageService
from modelmarket.registry import CatalogueLoader, RegistryService

T0 = datetime(2026, 1, 31, 23, 0, tzinfo=UTC)


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
    return MeteringService(store, lambda: log, clock, poll_s=0.01, batch_max=2)


def test_metering_applies_each_event_once_and_sets_rejects_aside(
    store: FakeStore, log: FakeEventLog, metering: MeteringService
) -> None:
    log.append_many([(e.id, e.encode()) for e in (event(1), event(2), event(3))])
    log.records.append(log.records[0].__class__(4, "req_1", event(1).encode()))  # a duplicate at a new offset
    log.append_many([("junk", b"{not json")])
    assert metering.catch_up() == 5
    assert set(store.state.events) == {"req_1", "req_2", "req_3"}
    assert list(store.state.rejects) == [5]
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
    billing = BillingService(store, metering, Decimal("0.80"))
    (invoice,) = billing.invoices("acc_c", Period(2026, 1))
    assert invoice.events == 60 and invoice.total == Decimal("0.01")  # 0.006 exactly, rounded once
    assert invoice.lines[0].amount_exact == Fraction(6, 1000)
    (statement,) = billing.statements("acc_p", Period(2026, 1))
    assert statement.provider_amount + statement.platform_fee == statement.gross
    assert billing.invoices("acc_c", Period(2026, 3)) == []


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
