"""The verifiable trees on SQLite and PostgreSQL: grown with the audit chain and the metering consumer, signed,
proven, checked offline, and every kind of tampering (an edited, dropped, reordered or cut-off record or event)
caught by ``audit verify``."""

from __future__ import annotations

import itertools
import json
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import LargeBinary, bindparam, text

from engines import append_to_log, developer_setting
from modelmarket.adapters.store import SqlStore
from modelmarket.audit import append
from modelmarket.audit.checkpoints import CheckpointKey, load_public_key, public_key_pem
from modelmarket.audit.merkle import Frontier
from modelmarket.audit.proofs import check_proof, parse_proof
from modelmarket.audit.tree_verify import TreeReport
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.cli.main import cli
from modelmarket.core.errors import Conflict, NotFound, NotReady
from modelmarket.gateway.api_proofs import usage_event_proof
from modelmarket.metering.events import UsageEvent
from modelmarket.metering.units import UnitKind
from modelmarket.settings import Settings

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
_ids = itertools.count(1)


class SteppingClock:
    """Time that a test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture()
def clock() -> SteppingClock:
    return SteppingClock()


@pytest.fixture()
def plat(store: SqlStore, tmp_path: Path, clock: SteppingClock) -> Iterator[Platform]:
    platform = bootstrap(Settings(home=tmp_path / "home"), store=store, clock=clock, runtimes=PluginRuntimes())
    yield platform


def usage(plat: Platform, account_id: str, n: int, apply: bool = True) -> list[str]:
    """``n`` served calls appended to the event log, as the gateway appends them, and applied by metering (unless
    not ``apply``)."""
    events = [
        UsageEvent(
            id=f"req_{next(_ids):010d}",
            source="gateway-1",
            account_id=account_id,
            time=T0 + timedelta(seconds=i),
            model="digits",
            version="1.0.0",
            provider_account_id="acc_provider",
            unit_kind=UnitKind.IMAGE if i % 3 else UnitKind.AUDIO_MINUTE,
            quantity=1 + i % 7,
            unit_price=Decimal("0.0010") if i % 2 else Decimal("0.06"),
            currency="USD",
            latency_ms=Decimal("3.5"),
        )
        for i in range(n)
    ]
    append_to_log(plat, [(e.id, e.encode()) for e in events])
    if apply:
        plat.metering.catch_up()
    return [e.id for e in events]


def sql(plat: Platform, statement: str, **params: Any) -> int:
    with plat.store.engine.begin() as conn:
        return int(conn.execute(text(statement), params).rowcount)


def reports(plat: Platform) -> dict[str, TreeReport]:
    return {r.tree: r for r in plat.audit.verify_trees(batch_rows=7)}  # several pages


def problems(plat: Platform, tree: str) -> str:
    report = reports(plat)[tree]
    assert not report.ok, f"the {tree} tree still verifies"
    return "\n".join(report.problems)


def swap_leaves(plat: Platform, tree: str, a: int, b: int) -> None:
    """Reorder: leaves ``a`` and ``b`` change places (through a free index, the key being unique)."""
    for old, new in ((a, -1), (b, a), (-1, b)):
        sql(
            plat,
            "UPDATE merkle_leaves SET leaf_index = :new WHERE tree = :t AND leaf_index = :old",
            t=tree,
            old=old,
            new=new,
        )


def cut_tail(plat: Platform, tree: str, keep: int) -> None:
    """Cut a tree's tail off as a careful intruder would: its leaves, its subtree heads and its head made to fit."""
    sql(plat, "DELETE FROM merkle_leaves WHERE tree = :t AND leaf_index >= :k", t=tree, k=keep)
    for level in (4, 8):
        sql(
            plat,
            "DELETE FROM merkle_nodes WHERE tree = :t AND level = :l AND node_index >= :i",
            t=tree,
            l=level,
            i=keep >> level,
        )
    with plat.store.engine.begin() as conn:
        hashes = conn.execute(
            text("SELECT leaf_hash FROM merkle_leaves WHERE tree = :t ORDER BY leaf_index"), {"t": tree}
        ).scalars()
        frontier = Frontier()
        frontier.extend(bytes(h) for h in hashes)
        stmt = text("UPDATE merkle_heads SET tree_size = :n, frontier = :f WHERE tree = :t").bindparams(
            bindparam("f", type_=LargeBinary)
        )
        conn.execute(stmt, {"n": frontier.size, "f": frontier.encode(), "t": tree})


def put_back_checkpoint(plat: Platform, tree: str, size: int) -> None:
    """What an intruder without the key can still do after cutting a tail: put the genuine checkpoint the history
    kept for the shorter tree back as the latest, and drop the later ones from the history."""
    sql(
        plat,
        "UPDATE merkle_heads SET checkpoint_size = c.tree_size, checkpoint_root = c.root, "
        "checkpoint_signed_at = c.signed_at, checkpoint_key_id = c.key_id, checkpoint_signature = c.signature "
        "FROM merkle_checkpoints c WHERE c.tree = :t AND c.tree_size = :n AND merkle_heads.tree = :t",
        t=tree,
        n=size,
    )
    sql(plat, "DELETE FROM merkle_checkpoints WHERE tree = :t AND tree_size > :n", t=tree, n=size)


def forget_checkpoints(plat: Platform, tree: str) -> None:
    sql(
        plat,
        "UPDATE merkle_heads SET checkpoint_size = NULL, checkpoint_root = NULL, checkpoint_signed_at = NULL, "
        "checkpoint_key_id = NULL, checkpoint_signature = NULL WHERE tree = :t",
        t=tree,
    )
    sql(plat, "DELETE FROM merkle_checkpoints WHERE tree = :t", t=tree)


# -- growing, signing, proving ------------------------------------------------------------------------------------


def test_both_trees_grow_with_their_rows_and_every_proof_checks(plat: Platform, clock: SteppingClock) -> None:
    alice = plat.accounts.create("alice", "consumer").id
    plat.accounts.create("bob", "consumer")
    ids = usage(plat, alice, 20)
    clock.now += timedelta(seconds=2)
    ids += usage(plat, alice, 17)

    found = reports(plat)
    assert found["usage"].ok and found["audit"].ok, (found["usage"].problems, found["audit"].problems)
    assert (found["usage"].leaves, found["usage"].checkpoint.size) == (37, 37)  # type: ignore[union-attr]
    assert (found["audit"].leaves, found["audit"].checkpoint.size) == (2, 2)  # type: ignore[union-attr]

    key = plat.audit.key.public_key()  # type: ignore[union-attr]
    for event_id in ids:
        proof = plat.audit.prove(event_id)
        assert (proof.tree, proof.checkpoint.size) == ("usage", 37)
        assert orjson.loads(proof.leaf_data)["event_id"] == event_id
        assert check_proof(parse_proof(orjson.dumps(proof.to_json())), key).ok
    record = plat.audit.prove("audit:2")
    assert orjson.loads(record.leaf_data)["subject"] == "bob"
    assert check_proof(record, key).ok


def test_the_history_keeps_a_usage_checkpoint_per_interval_and_the_head_covers_every_batch(
    plat: Platform, clock: SteppingClock
) -> None:
    alice = plat.accounts.create("alice", "consumer").id
    sizes = []
    for step_s in (0.0, 0.3, 0.3, 0.5, 0.2):  # batches at 0, 0.3, 0.6, 1.1 and 1.3 s
        clock.now += timedelta(seconds=step_s)
        usage(plat, alice, 3)
        sizes.append(plat.audit.prove(f"req_{next(_ids) - 1:010d}").checkpoint.size)
    assert sizes == [3, 6, 9, 12, 15]  # each applied batch is covered when it commits
    with plat.store.read() as uow:
        history = [cp.size for cp in uow.proofs.checkpoints("usage", 0, 100)]
    assert history == [3, 12]  # MODELMARKET_USAGE_CHECKPOINT_S apart (1 s)


def test_an_event_not_applied_or_not_signed_is_not_proven(plat: Platform, store: SqlStore) -> None:
    with pytest.raises(NotFound, match="no usage event req_nope in the usage tree"):
        plat.audit.prove("req_nope")
    alice = plat.accounts.create("alice", "consumer").id
    store.signer = None  # a store nobody signs for: the leaves are there, no checkpoint covers them
    plat.metering.projectors[1].signer = None  # type: ignore[attr-defined]
    (event_id,) = usage(plat, alice, 1)
    with pytest.raises(NotReady, match=f"usage event {event_id} is not covered by a signed checkpoint yet"):
        plat.audit.prove(event_id)
    with pytest.raises(NotFound, match="no usage event"):
        plat.audit.prove_usage_event(event_id, "acc_someone_else")  # another account's: as if unknown


def applied_ids(plat: Platform) -> set[str]:
    with plat.store.engine.connect() as conn:
        return set(conn.execute(text("SELECT event_id FROM usage_events")).scalars())


def test_asking_for_an_unknown_event_never_catches_metering_up(plat: Platform) -> None:
    alice = plat.accounts.create("alice", "consumer").id
    bob = plat.accounts.create("bob", "consumer").id
    applied = usage(plat, alice, 2)
    (pending,) = usage(plat, alice, 1, apply=False)  # in the log, not applied yet
    not_found = []
    for event_id, account in (("req_made_up", bob), (applied[0], bob), ("x" * 65, bob), (pending, bob)):
        with pytest.raises(NotFound) as exc:
            usage_event_proof(plat.audit, plat.usage, event_id, account)
        not_found.append(str(exc.value).replace(repr(event_id[:64]), "ID"))
    assert set(not_found) == {"no usage event ID (not applied yet, or unknown)"}  # all alike
    assert applied_ids(plat) == {*applied, pending}  # the one id the log holds was caught up for
    (later,) = usage(plat, alice, 1, apply=False)
    for event_id in ("req_made_up", applied[1]):
        with pytest.raises(NotFound):
            usage_event_proof(plat.audit, plat.usage, event_id, bob)
    assert later not in applied_ids(plat)  # no catch-up: made-up ids take no metering lock
    assert usage_event_proof(plat.audit, plat.usage, later, alice)["leaf_index"] == 3


def test_a_metering_rebuild_grows_the_same_tree_again(plat: Platform) -> None:
    alice = plat.accounts.create("alice", "consumer").id
    ids = usage(plat, alice, 40)
    before = plat.audit.prove(ids[7])
    plat.metering.rebuild()
    after = plat.audit.prove(ids[7])
    assert (after.checkpoint.size, after.checkpoint.root) == (before.checkpoint.size, before.checkpoint.root)
    assert after.audit_path == before.audit_path
    assert reports(plat)["usage"].ok


def _migrate(store: SqlStore, action: str, target: str) -> None:
    from alembic import command
    from alembic.config import Config

    from modelmarket.adapters.store.engine import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, target)


def test_the_migration_builds_the_trees_of_a_store_that_has_records(plat: Platform, store: SqlStore) -> None:
    alice = plat.accounts.create("alice", "consumer").id
    plat.accounts.create("bob", "consumer")
    ids = usage(plat, alice, 21)
    with store.read() as uow:
        heads = {tree: uow.proofs.head(tree) for tree in ("audit", "usage")}
    _migrate(store, "downgrade", "m0006")
    _migrate(store, "upgrade", "head")

    with store.read() as uow:
        for tree, before in heads.items():
            rebuilt = uow.proofs.head(tree)
            assert rebuilt is not None and before is not None
            assert (rebuilt.size, rebuilt.frontier, rebuilt.checkpoint) == (before.size, before.frontier, None)
    # The downgrade dropped the signed checkpoints: a home that signs, and keeps the latest ones, sees it.
    found = problems(plat, "audit")
    assert "the audit tree has 2 leaves but no signed checkpoint, and this home has a key" in found
    assert "the store's latest audit checkpoint (none) is older than the one this home signed last" in found
    assert "the usage tree has 21 leaves but no signed checkpoint" in problems(plat, "usage")
    with pytest.raises(NotReady, match="not covered by a signed checkpoint yet"):
        plat.audit.prove(ids[0])  # the migration has no key: nothing is signed until the next append
    plat.accounts.create("carol", "consumer")
    ids += usage(plat, alice, 1)
    assert plat.audit.prove("audit:1").checkpoint.size == 3
    assert plat.audit.prove(ids[0]).checkpoint.size == 22
    assert all(r.ok for r in reports(plat).values())


# -- tampering with usage events ----------------------------------------------------------------------------------


@pytest.fixture()
def served(plat: Platform) -> list[str]:
    alice = plat.accounts.create("alice", "consumer").id
    ids = usage(plat, alice, 37)
    assert reports(plat)["usage"].ok
    return ids


def test_an_edited_usage_event_is_named(plat: Platform, served: list[str]) -> None:
    sql(plat, "UPDATE usage_events SET quantity_base = quantity_base + 1 WHERE event_id = :e", e=served[11])
    assert f"usage event {served[11]} (leaf 11) does not match its leaf: it was edited" in problems(plat, "usage")
    with pytest.raises(Exception, match="was changed since it was added"):
        plat.audit.prove(served[11])


def test_a_dropped_usage_event_is_named(plat: Platform, served: list[str]) -> None:
    sql(plat, "DELETE FROM usage_events WHERE event_id = :e", e=served[20])
    assert f"usage event {served[20]} (leaf 20) is no longer in the store: it was dropped" in problems(plat, "usage")


def test_a_usage_event_dropped_with_its_leaf_is_caught(plat: Platform, served: list[str]) -> None:
    sql(plat, "DELETE FROM usage_events WHERE event_id = :e", e=served[5])
    sql(plat, "DELETE FROM merkle_leaves WHERE tree = 'usage' AND ref = :e", e=served[5])
    found = problems(plat, "usage")
    assert "leaf 5 of the usage tree is missing (the next one stored is leaf 6)" in found
    assert "covers usage events the store no longer has: 1 of 37" in found


def test_reordered_usage_events_are_caught(plat: Platform, served: list[str]) -> None:
    swap_leaves(plat, "usage", 3, 30)
    found = problems(plat, "usage")
    assert "usage events were reordered" in found
    assert "is not the one its checkpoint (size 37" in found


def test_usage_events_whose_offsets_were_swapped_are_caught(plat: Platform, served: list[str]) -> None:
    sql(plat, "UPDATE usage_events SET log_offset = -log_offset WHERE event_id IN (:a, :b)", a=served[2], b=served[9])
    sql(plat, "UPDATE usage_events SET log_offset = 3 WHERE event_id = :b", b=served[9])
    sql(plat, "UPDATE usage_events SET log_offset = 10 WHERE event_id = :a", a=served[2])
    found = problems(plat, "usage")
    assert f"usage event {served[2]} (leaf 2) does not match its leaf" in found
    assert f"usage event {served[9]} (leaf 9) does not match its leaf" in found


def test_a_cut_off_usage_tail_is_caught_against_the_latest_checkpoint(plat: Platform, served: list[str]) -> None:
    for event_id in served[32:]:
        sql(plat, "DELETE FROM usage_events WHERE event_id = :e", e=event_id)
    cut_tail(plat, "usage", 32)
    found = problems(plat, "usage")
    assert (
        "the latest checkpoint (size 37, signed at 2026-03-02T09:00:00.000000+00:00) covers usage events the " in found
    )
    assert "store no longer has: 5 of 37" in found


def test_a_usage_event_added_behind_the_platforms_back_is_caught(plat: Platform, served: list[str]) -> None:
    sql(
        plat,
        "INSERT INTO usage_events (event_id, account_id, model_name, version, provider_account_id, unit_kind, "
        "quantity_base, unit_price, amount_numerator, currency, occurred_at, day, latency_ms, log_offset) "
        "SELECT 'req_forged', account_id, model_name, version, provider_account_id, unit_kind, quantity_base, "
        "unit_price, amount_numerator, currency, occurred_at, day, latency_ms, 999999 FROM usage_events "
        "WHERE event_id = :e",
        e=served[0],
    )
    assert "1 usage event(s) in the store are not in the usage tree (e.g. req_forged)" in problems(plat, "usage")


# -- tampering with audit records -----------------------------------------------------------------------------


@pytest.fixture()
def chained(plat: Platform) -> Platform:
    for name in ("alice", "bob", "carol", "dave", "erin", "frank"):
        plat.accounts.create(name, "consumer")
    assert plat.audit.verify().ok and reports(plat)["audit"].ok
    return plat


def test_an_edited_audit_record_is_named_by_the_tree_too(chained: Platform) -> None:
    sql(chained, "UPDATE audit_log SET subject = 'mallory' WHERE seq = 3")
    assert "audit record seq 3 (leaf 2) does not match its leaf: it was edited" in problems(chained, "audit")


def test_a_dropped_audit_record_is_named(chained: Platform) -> None:
    sql(chained, "DELETE FROM audit_log WHERE seq = 4")
    assert "audit record seq 4 (leaf 3) is no longer in the store: it was dropped" in problems(chained, "audit")


def test_reordered_audit_records_are_caught(chained: Platform) -> None:
    swap_leaves(chained, "audit", 1, 4)
    found = problems(chained, "audit")
    assert "leaf 1 of the audit tree names seq 5: records were reordered" in found


def test_an_audit_tail_cut_off_passes_the_chain_but_not_the_tree(chained: Platform) -> None:
    sql(chained, "DELETE FROM audit_log WHERE seq > 4")
    cut_tail(chained, "audit", 4)
    assert chained.audit.verify().ok  # the chain alone cannot tell a tail cut off from one never written
    assert "covers audit records the store no longer has: 2 of 6" in problems(chained, "audit")


def test_an_audit_tail_cut_off_with_an_older_genuine_checkpoint_put_back_is_caught(chained: Platform) -> None:
    kept = chained.settings.keys_dir / "latest-checkpoint.audit.json"
    assert json.loads(kept.read_text())["size"] == 6  # the latest checkpoint, kept outside the store
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    sql(chained, "DELETE FROM audit_log WHERE seq > 4")
    cut_tail(chained, "audit", 4)
    put_back_checkpoint(chained, "audit", 4)
    assert chained.audit.verify().ok  # chain, leaves, stored heads and the store's checkpoints all agree
    found = problems(chained, "audit")
    assert "the store's latest audit checkpoint (size 4, signed at " in found
    assert "is older than the one this home signed last and keeps outside the store (size 6, " in found
    assert "audit records were cut off the tail" in found

    for name in ("mallory", "oscar", "trent"):  # the platform goes on: the tree grows past the size it had
        chained.accounts.create(name, "consumer")
    assert json.loads(kept.read_text())["size"] == 6  # a tree that does not extend the kept copy never replaces it
    assert "the audit tree's root at 6 leaves is not the one the checkpoint kept outside the store (size 6" in (
        problems(chained, "audit")
    )


def test_audit_checkpoints_removed_from_the_store_are_caught(chained: Platform) -> None:
    sql(chained, "DELETE FROM audit_log WHERE seq > 5")
    cut_tail(chained, "audit", 5)
    forget_checkpoints(chained, "audit")
    found = problems(chained, "audit")
    assert "the audit tree has 5 leaves but no signed checkpoint, and this home has a key" in found
    assert "the store's latest audit checkpoint (none) is older than the one this home signed last" in found


def test_a_usage_tail_cut_off_with_an_older_checkpoint_put_back_is_caught(plat: Platform, clock: SteppingClock) -> None:
    alice = plat.accounts.create("alice", "consumer").id
    ids = usage(plat, alice, 10)
    clock.now += timedelta(seconds=2)  # the history keeps a usage checkpoint per MODELMARKET_USAGE_CHECKPOINT_S
    ids += usage(plat, alice, 6)
    assert reports(plat)["usage"].ok
    for event_id in ids[10:]:
        sql(plat, "DELETE FROM usage_events WHERE event_id = :e", e=event_id)
    cut_tail(plat, "usage", 10)
    put_back_checkpoint(plat, "usage", 10)
    assert "the store's latest usage checkpoint (size 10, signed at " in problems(plat, "usage")
    forget_checkpoints(plat, "usage")
    assert "the usage tree has 10 leaves but no signed checkpoint" in problems(plat, "usage")


def test_a_checkpoint_a_consumer_kept_is_extended_until_the_log_is_rewritten(chained: Platform) -> None:
    key = chained.audit.key.public_key()  # type: ignore[union-attr]
    kept = chained.audit.prove("audit:2").checkpoint  # size 6: what a consumer was given earlier
    chained.accounts.create("grace", "consumer")
    grown = chained.audit.prove("audit:3", since=kept)
    assert grown.checkpoint.size == 7 and grown.consistency is not None
    assert check_proof(parse_proof(orjson.dumps(grown.to_json())), key, since=kept).ok

    sql(chained, "DELETE FROM audit_log WHERE seq > 4")
    cut_tail(chained, "audit", 4)
    put_back_checkpoint(chained, "audit", 4)
    with pytest.raises(Conflict, match=r"is smaller than the one given \(size 6, .*its tail was cut off"):
        chained.audit.prove("audit:3", since=kept)
    for name in ("mallory", "oscar", "trent"):
        chained.accounts.create(name, "consumer")
    rewritten = chained.audit.prove("audit:3", since=kept)  # signed by the platform, over the rewritten tree
    result = check_proof(rewritten, key, since=kept)
    assert result.failed == "consistency" and "does not extend the one at the older checkpoint" in result.message


def test_a_rolled_back_append_keeps_no_checkpoint_outside_the_store(chained: Platform) -> None:
    kept = chained.settings.keys_dir / "latest-checkpoint.audit.json"
    before = kept.read_bytes()
    with pytest.raises(RuntimeError, match="changed my mind"), chained.store.write() as uow:
        append(uow.audit, actor="test", action="test.noted", subject="x", payload={}, now=T0)
        raise RuntimeError("changed my mind")
    assert kept.read_bytes() == before
    chained.accounts.create("grace", "consumer")
    assert json.loads(kept.read_text())["size"] == 7
    assert reports(chained)["audit"].ok


def test_a_checkpoint_signed_by_another_key_is_caught(chained: Platform, tmp_path: Path) -> None:
    chained.store.signer = CheckpointKey(tmp_path / "other-keys")
    chained.accounts.create("grace", "consumer")
    assert "is not signed by this home's key" in problems(chained, "audit")


# -- the CLI: prove, check offline with the database gone -----------------------------------------------------


@pytest.fixture()
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in list(os.environ):
        if developer_setting(name):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("MODELMARKET_HOME", str(home))
    return home


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def test_a_proof_checks_offline_through_the_cli_with_the_database_gone(
    env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("accounts", "create", "alice")
    plat = bootstrap()
    try:
        alice = plat.accounts.get("alice").id
        ids = usage(plat, alice, 9)
    finally:
        plat.close()
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(run("audit", "prove", ids[4]).stdout)
    (tmp_path / "audit-proof.json").write_text(run("audit", "prove", "audit:1").stdout)
    pem = run("audit", "public-key").stdout
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    (tmp_path / "key.pem").write_text(pem)
    assert "OK: usage tree: 9 leaves" in run("audit", "verify").stdout

    if (env / "modelmarket.db").exists():  # the embedded store: moved away (on the real engines, PostgreSQL's
        (env / "modelmarket.db").rename(tmp_path / "moved.db")  # database is the one made unreachable below)
    monkeypatch.setenv("MODELMARKET_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:9/none")
    checked = run("audit", "check-proof", str(proof_file))
    assert checked.stdout.startswith(f"valid: usage event {ids[4]} (digits@1.0.0")
    assert "leaf 4 of the usage tree at its checkpoint (size 9" in checked.stdout
    assert run("audit", "check-proof", str(tmp_path / "audit-proof.json"), "--public-key", str(tmp_path / "key.pem"))
    assert not (env / "modelmarket.db").exists()

    doc = json.loads(proof_file.read_text())
    leaf = json.loads(doc["leaf_data"]) | {"quantity": 1000}
    doc["leaf_data"] = json.dumps(leaf, separators=(",", ":"), sort_keys=True)
    (tmp_path / "altered.json").write_text(json.dumps(doc))
    altered = run("audit", "check-proof", str(tmp_path / "altered.json"), code=1)
    assert altered.stderr.startswith("INVALID: leaf hash:")

    other = tmp_path / "other"
    (tmp_path / "other.pem").write_text(public_key_pem(CheckpointKey(other).public_key()))
    forged = run("audit", "check-proof", str(proof_file), "--public-key", str(tmp_path / "other.pem"), code=1)
    assert forged.stderr.startswith("INVALID: signature:")
    assert load_public_key(pem.encode())  # what public-key prints is what --public-key reads


def test_a_proof_since_a_kept_checkpoint_is_printed_and_checked_offline(env: Path, tmp_path: Path) -> None:
    run("accounts", "create", "alice")
    (tmp_path / "old.json").write_text(run("audit", "prove", "audit:1").stdout)
    run("accounts", "create", "bob")
    run("accounts", "create", "carol")
    new = run("audit", "prove", "audit:1", "--since", str(tmp_path / "old.json")).stdout
    assert json.loads(new)["consistency"]["old_checkpoint"]["size"] == 1
    (tmp_path / "new.json").write_text(new)
    checked = run("audit", "check-proof", str(tmp_path / "new.json"), "--since", str(tmp_path / "old.json"))
    assert checked.stdout.rstrip().endswith(
        "; it extends the checkpoint size 1, signed at "
        + (json.loads((tmp_path / "old.json").read_text())["checkpoint"]["signed_at"])
    )
    (tmp_path / "plain.json").write_text(run("audit", "prove", "audit:1").stdout)
    missing = run("audit", "check-proof", str(tmp_path / "plain.json"), "--since", str(tmp_path / "old.json"), code=1)
    assert missing.stderr.startswith("INVALID: consistency: the proof carries no consistency proof")


def test_audit_verify_names_a_cut_off_tail_and_exits_1(env: Path) -> None:
    for name in ("alice", "bob", "carol"):
        run("accounts", "create", name)
    assert run("audit", "verify").stdout.startswith("OK: 3 audit record(s), chain intact\nOK: audit tree: 3 leaves")
    plat = bootstrap()
    try:
        sql(plat, "DELETE FROM audit_log WHERE seq = 3")
        cut_tail(plat, "audit", 2)
    finally:
        plat.close()
    broken = run("audit", "verify", code=1)
    assert broken.stdout.startswith("OK: 2 audit record(s), chain intact")  # the chain alone sees nothing wrong
    assert "BROKEN: audit tree: 2 leaves, latest checkpoint size 3" in broken.stderr
    assert "covers audit records the store no longer has: 1 of 3" in broken.stderr
    doc = json.loads(run("audit", "verify", "--json", code=1).stdout)
    assert doc["ok"] is False and doc["first_broken_seq"] is None
    assert [(t["tree"], t["ok"]) for t in doc["trees"]] == [("audit", False), ("usage", True)]
