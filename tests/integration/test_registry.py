"""Publishing immutable model versions, the ``latest`` alias and the blob store, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import shutil
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from modelmarket.adapters.store import SqlStore
from modelmarket.adapters.store import schema as t
from modelmarket.audit import chain as audit
from modelmarket.bootstrap import Platform, PluginRuntimes, bootstrap
from modelmarket.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from modelmarket.core.tensors import TensorSpec
from modelmarket.registry import CatalogueLoader, model_summary
from modelmarket.registry.manifest import MANIFEST_NAME
from modelmarket.runtime.plugins import available_runtimes
from modelmarket.settings import Settings

pytestmark = pytest.mark.timeout(180)

PROVIDER = "demo-provider"
NOW = datetime(2026, 1, 20, 9, 30, tzinfo=UTC)
_copies = itertools.count(1)


@pytest.fixture()
def platform(store: SqlStore, tmp_path: Path) -> Platform:
    plat = bootstrap(Settings(home=tmp_path / "home"), store=store, clock=lambda: NOW, runtimes=PluginRuntimes())
    plat.accounts.create(PROVIDER, "provider")
    return plat


def copy_package(demo_dir: Path, name: str, tmp_path: Path, **manifest_changes: Any) -> Path:
    """A private copy of a demo package, with top-level manifest fields replaced."""
    dest = tmp_path / "packages" / f"{name}-{next(_copies)}"
    shutil.copytree(demo_dir / name, dest)
    if manifest_changes:
        path = dest / MANIFEST_NAME
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        doc.update(manifest_changes)
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return dest


def count_rows(store: SqlStore, table: Any) -> int:
    with store.read() as uow:
        return int(uow.conn.execute(select(func.count()).select_from(table)).scalar_one())


def artifact_rows(store: SqlStore) -> list[tuple[Any, ...]]:
    a = t.artifacts.c
    with store.read() as uow:
        rows = uow.conn.execute(select(a.version_id, a.path, a.sha256, a.size_bytes).order_by(a.version_id, a.path))
        return [tuple(r) for r in rows]


def audit_records(store: SqlStore) -> list[audit.AuditRecord]:
    with store.read() as uow:
        return audit.list_records(uow.audit, limit=1000)


def chain_ok(store: SqlStore) -> bool:
    with store.read() as uow:
        return audit.verify(uow.audit).ok


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def blob_files(platform: Platform) -> list[Path]:
    """The artifact files the platform holds: its blob store's, or with S3 its local cache's (the same layout)."""
    base = platform.settings.home / "cache" / "blobs" if platform.settings.blob_url else platform.settings.blobs_dir
    root = base / "sha256"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


# -- publish ---------------------------------------------------------------------------------------------


def test_publish_shows_in_catalogue_and_moves_latest(platform: Platform, demo_dir: Path) -> None:
    provider = platform.accounts.get(PROVIDER)
    result = platform.registry.publish(demo_dir / "digits", actor="alice")
    assert result.created is True
    version = result.version
    assert (version.model_name, version.version, version.provider_account_id) == (
        "digits",
        "1.0.0",
        provider.id,
    )
    onnx = demo_dir / "digits" / "model.onnx"
    assert [(a.path, a.sha256, a.size_bytes) for a in version.artifacts] == [
        ("model.onnx", sha256_of(onnx), onnx.stat().st_size)
    ]
    assert version.created_at == NOW.isoformat()
    # The version's I/O contract is built once, with the record, for the gateway to check requests against.
    assert version.inputs == (TensorSpec("pixels", "FP32", (-1, 64)),)
    assert version.outputs == (TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 10)))
    assert version.output_names == frozenset({"label", "probabilities"})

    catalogue = platform.registry.catalogue()
    assert list(catalogue.models) == ["digits"]
    entry = catalogue.get("digits")
    assert entry.aliases == {"latest": "1.0.0"}
    assert entry.provider_account_id == provider.id
    resolved = catalogue.resolve("digits")
    assert (resolved.id, resolved.digest) == (version.id, version.digest)
    assert resolved.manifest.pricing.unit == "image"
    assert catalogue.resolve("digits", "latest").id == version.id
    assert resolved.inputs == version.inputs and resolved.output_names == version.output_names
    with pytest.raises(NotFound):
        catalogue.resolve("digits", "2.0.0")
    with pytest.raises(NotFound):
        catalogue.get("sentiment")

    published = [(r.action, r.subject, r.actor) for r in audit_records(platform.store)][-2:]
    assert published == [
        ("model.published", "digits@1.0.0", "alice"),
        ("alias.moved", "digits@latest", "alice"),
    ]
    assert chain_ok(platform.store)


def test_republishing_the_same_bytes_is_a_no_op(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    first = platform.registry.publish(demo_dir / "digits")
    audits = count_rows(platform.store, t.audit_log)
    artifacts = artifact_rows(platform.store)

    again = platform.registry.publish(demo_dir / "digits")
    from_copy = platform.registry.publish(copy_package(demo_dir, "digits", tmp_path))  # same bytes elsewhere

    for result in (again, from_copy):
        assert result.created is False
        assert (result.version.id, result.version.digest) == (first.version.id, first.version.digest)
    assert count_rows(platform.store, t.audit_log) == audits
    assert count_rows(platform.store, t.model_versions) == 1
    assert artifact_rows(platform.store) == artifacts


def test_same_version_with_changed_bytes_is_a_conflict(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    original = platform.registry.publish(demo_dir / "digits")
    audits = count_rows(platform.store, t.audit_log)
    artifacts = artifact_rows(platform.store)
    blobs = blob_files(platform)

    changed = copy_package(demo_dir, "digits", tmp_path)
    with (changed / "model.onnx").open("ab") as fh:
        fh.write(b"\x00tampered")
    with pytest.raises(Conflict, match=r"digits 1\.0\.0 is already published with different content"):
        platform.registry.publish(changed)

    assert count_rows(platform.store, t.model_versions) == 1
    assert artifact_rows(platform.store) == artifacts
    assert count_rows(platform.store, t.audit_log) == audits
    assert blob_files(platform) == blobs  # a refused re-publish stores no blob of the changed bytes
    stored = platform.registry.catalogue().resolve("digits", "1.0.0")
    assert (stored.id, stored.digest) == (original.version.id, original.version.digest)
    assert chain_ok(platform.store)


def test_same_version_with_changed_manifest_is_a_conflict(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    platform.registry.publish(demo_dir / "digits")
    repriced = copy_package(
        demo_dir, "digits", tmp_path, pricing={"unit": "image", "price_per_iu": "0.5", "currency": "USD"}
    )
    with pytest.raises(Conflict, match="versions are immutable"):
        platform.registry.publish(repriced)
    assert str(platform.registry.catalogue().resolve("digits").manifest.pricing.price_per_iu) == "0.0010"


def test_latest_follows_semver_not_text_or_time(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    latest_after = []
    for version in ("1.2.0", "1.10.0", "1.9.0"):
        result = platform.registry.publish(copy_package(demo_dir, "digits", tmp_path, version=version))
        assert result.created is True
        latest_after.append(platform.registry.catalogue().get("digits").aliases["latest"])
    # "1.9.0" > "1.10.0" as text, and 1.9.0 is the newest upload; neither makes it latest.
    assert latest_after == ["1.2.0", "1.10.0", "1.10.0"]
    entry = platform.registry.catalogue().get("digits")
    assert entry.resolve(None).version == "1.10.0"
    assert [v.version for v in entry.sorted_versions()] == ["1.2.0", "1.9.0", "1.10.0"]
    moves = [r.payload for r in audit_records(platform.store) if r.action == "alias.moved"]
    assert moves == [{"from": None, "to": "1.2.0"}, {"from": "1.2.0", "to": "1.10.0"}]


def test_another_providers_model_name_is_refused(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    platform.registry.publish(demo_dir / "digits")
    platform.accounts.create("rival", "provider")
    hijack = copy_package(demo_dir, "digits", tmp_path, version="9.0.0", provider="rival")
    with pytest.raises(PermissionDenied, match="belongs to another provider"):
        platform.registry.publish(hijack)
    assert platform.registry.catalogue().get("digits").aliases == {"latest": "1.0.0"}


# -- aliases ---------------------------------------------------------------------------------------------


def test_move_alias_to_unknown_version_or_model(platform: Platform, demo_dir: Path) -> None:
    platform.registry.publish(demo_dir / "digits")
    audits = count_rows(platform.store, t.audit_log)
    with pytest.raises(NotFound, match=r"model 'digits' has no version '2\.0\.0'"):
        platform.registry.move_alias("digits", "stable", "2.0.0")
    with pytest.raises(NotFound, match="model 'nope' is not published"):
        platform.registry.move_alias("nope", "stable", "1.0.0")
    with pytest.raises(InvalidInput, match="alias: 'Stable!'"):
        platform.registry.move_alias("digits", "Stable!", "1.0.0")
    assert platform.registry.catalogue().get("digits").aliases == {"latest": "1.0.0"}
    assert count_rows(platform.store, t.audit_log) == audits


def test_alias_moves_are_audited_and_the_chain_verifies(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    for version in ("1.0.0", "1.1.0"):
        platform.registry.publish(copy_package(demo_dir, "digits", tmp_path, version=version))
    platform.registry.move_alias("digits", "stable", "1.0.0", actor="ops")
    platform.registry.move_alias("digits", "latest", "1.0.0", actor="ops")  # a rollback
    audits = count_rows(platform.store, t.audit_log)
    platform.registry.move_alias("digits", "stable", "1.0.0", actor="ops")  # already there: nothing to record
    assert count_rows(platform.store, t.audit_log) == audits

    last_two = [(r.action, r.subject, r.actor, r.payload) for r in audit_records(platform.store)[-2:]]
    assert last_two == [
        ("alias.moved", "digits@stable", "ops", {"from": None, "to": "1.0.0"}),
        ("alias.moved", "digits@latest", "ops", {"from": "1.1.0", "to": "1.0.0"}),
    ]
    entry = platform.registry.catalogue().get("digits")
    assert entry.aliases == {"latest": "1.0.0", "stable": "1.0.0"}
    assert entry.resolve("latest").version == "1.0.0"
    assert chain_ok(platform.store)


# -- refused packages ------------------------------------------------------------------------------------


def assert_nothing_published(platform: Platform) -> None:
    assert platform.registry.catalogue().models == {}
    assert count_rows(platform.store, t.model_versions) == 0
    assert count_rows(platform.store, t.artifacts) == 0
    assert blob_files(platform) == []


def test_missing_artifact_records_nothing(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    package = copy_package(demo_dir, "sentiment", tmp_path)
    (package / "emoji_utf8_lexicon.txt").unlink()  # artifacts[1]; artifacts[0] is still there
    audits = count_rows(platform.store, t.audit_log)
    with pytest.raises(InvalidInput, match=r"artifacts\[1\]\.path: 'emoji_utf8_lexicon\.txt' does not exist"):
        platform.registry.publish(package)
    assert_nothing_published(platform)
    assert count_rows(platform.store, t.audit_log) == audits


def test_empty_artifact_directory_is_refused(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    package = copy_package(demo_dir, "digits", tmp_path, artifacts=[{"path": "model.onnx"}, {"path": "empty"}])
    (package / "empty").mkdir()
    with pytest.raises(InvalidInput, match=r"artifacts\[1\]\.path: folder 'empty' holds no files"):
        platform.registry.publish(package)
    assert_nothing_published(platform)


def test_unknown_provider_is_refused(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="provider: no account named 'nobody'"):
        platform.registry.publish(copy_package(demo_dir, "digits", tmp_path, provider="nobody"))
    platform.accounts.create("just-a-consumer", "consumer")
    with pytest.raises(InvalidInput, match="provider: account 'just-a-consumer' has role 'consumer'"):
        platform.registry.publish(copy_package(demo_dir, "digits", tmp_path, provider="just-a-consumer"))
    assert platform.registry.catalogue().models == {}
    assert count_rows(platform.store, t.model_versions) == 0


def test_unknown_runtime_lists_the_available_ones(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    installed = available_runtimes()
    assert {"onnx", "vader", "pocketsphinx"} <= set(installed)
    with pytest.raises(InvalidInput, match="runtime: unknown runtime 'tensorflow'") as info:
        platform.registry.publish(copy_package(demo_dir, "digits", tmp_path, runtime="tensorflow"))
    assert f"(available: {', '.join(installed)})" in info.value.message
    assert_nothing_published(platform)


def test_malformed_manifest_is_refused_before_anything_is_stored(
    platform: Platform, demo_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match=r"version: '1\.0' is not a semantic version"):
        platform.registry.publish(copy_package(demo_dir, "digits", tmp_path, version="1.0"))
    assert_nothing_published(platform)


# -- artifacts and blobs ---------------------------------------------------------------------------------


def test_directory_artifacts_expand_to_files_with_relative_paths(
    platform: Platform, demo_dir: Path, tmp_path: Path
) -> None:
    package = copy_package(demo_dir, "digits", tmp_path, artifacts=[{"path": "model.onnx"}, {"path": "extras"}])
    (package / "extras" / "deep" / "deeper").mkdir(parents=True)
    (package / "extras" / "readme.txt").write_text("top\n")
    (package / "extras" / "deep" / "deeper" / "weights.bin").write_bytes(bytes(range(256)))
    (package / "extras" / "deep" / "same.txt").write_text("top\n")  # same bytes as readme.txt

    version = platform.registry.publish(package).version
    by_path = {a.path: a for a in version.artifacts}
    assert sorted(by_path) == [
        "extras/deep/deeper/weights.bin",
        "extras/deep/same.txt",
        "extras/readme.txt",
        "model.onnx",
    ]
    for rel, record in by_path.items():
        assert record.sha256 == sha256_of(package / rel)
        assert record.size_bytes == (package / rel).stat().st_size
    assert len(blob_files(platform)) == 3  # identical contents are stored once


def test_demo_speech_package_directory_is_expanded(platform: Platform, demo_dir: Path) -> None:
    package = demo_dir / "speech-to-text"
    version = platform.registry.publish(package).version
    inside = sorted(p.relative_to(package).as_posix() for p in (package / "en-us").rglob("*") if p.is_file())
    assert inside, "the demo acoustic model directory should hold files"
    paths = [a.path for a in version.artifacts]
    assert sorted(paths) == sorted([*inside, "en-us.lm.bin", "cmudict-en-us.dict", "examples/hello.wav"])
    assert "en-us" not in paths


def test_blobs_are_read_only_files_named_by_their_sha256(platform: Platform, demo_dir: Path) -> None:
    version = platform.registry.publish(demo_dir / "sentiment").version
    assert len(version.artifacts) == 2
    for record in version.artifacts:
        blob = platform.blobs.path(record.sha256)
        assert blob.name == record.sha256
        assert blob.parent.name == record.sha256[:2]
        assert blob.read_bytes() == (demo_dir / "sentiment" / record.path).read_bytes()
        assert sha256_of(blob) == record.sha256
        assert stat.S_IMODE(blob.stat().st_mode) & 0o222 == 0, "blobs must not be writable"
    assert sorted(p.name for p in blob_files(platform)) == sorted(a.sha256 for a in version.artifacts)
    with pytest.raises(NotFound):
        platform.blobs.path("0" * 64)


# -- concurrency -----------------------------------------------------------------------------------------


def test_concurrent_first_publishes_of_a_new_model(store: SqlStore, demo_dir: Path, tmp_path: Path) -> None:
    if store.engine.dialect.name != "postgresql":
        pytest.skip("SQLite write transactions (BEGIN IMMEDIATE) already serialize publishes")
    barrier = threading.Barrier(2, timeout=2)
    armed = {"on": False}
    waited = threading.local()

    def clock() -> datetime:
        # The first clock read of each publish happens inside its write transaction, before any insert: make
        # both publishes reach that point before either goes on (or give up after 2 s if they cannot, as when
        # the publish lock makes the second wait for the first to commit).
        if armed["on"] and not getattr(waited, "done", False):
            waited.done = True
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()
        return NOW

    plat = bootstrap(Settings(home=tmp_path / "home"), store=store, clock=clock, runtimes=PluginRuntimes())
    plat.accounts.create(PROVIDER, "provider")
    packages = [copy_package(demo_dir, "digits", tmp_path, version=v) for v in ("1.0.0", "1.1.0")]
    errors: list[BaseException] = []

    def publish(package: Path) -> None:
        try:
            plat.registry.publish(package)
        except Exception as exc:
            errors.append(exc)

    armed["on"] = True
    threads = [threading.Thread(target=publish, args=(p,)) for p in packages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    entry = plat.registry.catalogue().get("digits")
    assert sorted(entry.versions) == ["1.0.0", "1.1.0"]
    assert entry.aliases["latest"] == "1.1.0"
    assert chain_ok(plat.store)
    published = sorted(r.subject for r in audit_records(plat.store) if r.action == "model.published")
    assert published == ["digits@1.0.0", "digits@1.1.0"]


# -- catalogue -------------------------------------------------------------------------------------------


def test_catalogue_loader_parses_each_version_once(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    platform.registry.publish(demo_dir / "digits")
    loader = CatalogueLoader(platform.store)
    first = loader.load()
    assert first.version_count == 1 and first.names() == ["digits"]
    platform.registry.publish(copy_package(demo_dir, "digits", tmp_path, version="1.1.0"))
    platform.registry.publish(demo_dir / "sentiment")
    platform.registry.move_alias("digits", "stable", "1.0.0")

    second = loader.load()
    assert second.version_count == 3 and second.names() == ["digits", "sentiment"]
    assert second.resolve("digits", "1.0.0") is first.resolve("digits", "1.0.0")  # reused, not parsed again
    assert second.resolve("digits").version == "1.1.0"
    assert second.resolve("digits", "stable").version == "1.0.0"
    assert loader.load().resolve("sentiment") is second.resolve("sentiment")
    fresh = CatalogueLoader(platform.store).load()
    assert fresh.resolve("digits", "1.0.0") == first.resolve("digits", "1.0.0")


def test_model_summary_is_the_latest_versions_facts(platform: Platform, demo_dir: Path, tmp_path: Path) -> None:
    for version in ("1.2.0", "1.10.0", "1.9.0"):
        platform.registry.publish(copy_package(demo_dir, "digits", tmp_path, version=version))
    platform.registry.move_alias("digits", "stable", "1.2.0")
    summary = model_summary(platform.registry.catalogue().get("digits"))
    assert summary["name"] == "digits"
    assert summary["latest"] == "1.10.0"
    assert summary["versions"] == ["1.2.0", "1.9.0", "1.10.0"]
    assert summary["aliases"] == {"latest": "1.10.0", "stable": "1.2.0"}
    assert summary["runtime"] == "onnx"
    assert summary["pricing"] == {"unit": "image", "price_per_iu": "0.0010", "currency": "USD"}
