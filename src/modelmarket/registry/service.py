"""Registry services: publish an immutable version, move aliases, and load the catalogue snapshot."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelmarket.audit import chain as audit
from modelmarket.core.clock import Clock
from modelmarket.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from modelmarket.core.ids import new_id
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.metering.units import UnitKind
from modelmarket.registry.catalogue import LATEST, ArtifactRecord, Catalogue, ModelEntry, VersionRecord
from modelmarket.registry.manifest import NAME_RE, Manifest, load_manifest, parse_manifest
from modelmarket.registry.package import PackageFile, collect_artifacts
from modelmarket.registry.ports import (
    BlobStore,
    RegistryRepository,
    RegistryUnitOfWork,
    RuntimeCatalog,
    StoredAlias,
    StoredModel,
    StoredVersion,
)

ALIAS_RE = NAME_RE
HASH_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PublishResult:
    version: VersionRecord
    created: bool  # False when the same bytes were already published under this version


def version_digest(manifest: Manifest, artifacts: Iterable[ArtifactRecord]) -> str:
    doc = {"manifest": manifest.to_json(), "artifacts": sorted((a.path, a.sha256) for a in artifacts)}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _hash_file(file: PackageFile) -> tuple[str, int]:
    """Hash through the package walk again (no link followed anywhere on the path, the same file collected)."""
    h = hashlib.sha256()
    size = 0
    with file.open() as fh:
        while chunk := fh.read(HASH_CHUNK_BYTES):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def version_from_stored(stored: StoredVersion) -> VersionRecord:
    return VersionRecord(
        id=stored.id,
        model_name=stored.model_name,
        version=stored.version,
        digest=stored.digest,
        manifest=parse_manifest(json.loads(stored.manifest_json), f"stored manifest of {stored.model_name}"),
        provider_account_id=stored.provider_account_id,
        artifacts=stored.artifacts,
        created_at=stored.created_at,
    )


class RegistryService:
    def __init__(
        self,
        uow: UnitOfWorkFactory[RegistryUnitOfWork],
        blobs: BlobStore,
        clock: Clock,
        runtimes: RuntimeCatalog,
    ) -> None:
        self.uow = uow
        self.blobs = blobs
        self.clock = clock
        self.runtimes = runtimes

    # -- publish -----------------------------------------------------------------------------------------
    def publish(self, package_dir: Path, actor: str = "cli") -> PublishResult:
        """Validate, hash, store and record a version. Nothing is stored for a package that is refused."""
        manifest = load_manifest(package_dir)
        known = sorted(self.runtimes.names())
        if manifest.runtime not in known:
            raise InvalidInput(f"runtime: unknown runtime {manifest.runtime!r} (available: {', '.join(known)})")
        _check_tensor_names(manifest)
        _check_unit_inputs(manifest)
        files = collect_artifacts(package_dir, manifest)
        self.runtimes.validate(manifest.runtime, manifest.parameters, [f.relpath for f in files])
        hashed = tuple(ArtifactRecord(f.relpath, *_hash_file(f)) for f in files)
        digest = version_digest(manifest, hashed)
        with self.uow.read() as uow:
            provider_id = _provider_id(uow, manifest.provider)
            model = uow.registry.model(manifest.name)
            if model is not None and model.provider_account_id != provider_id:
                raise PermissionDenied(f"model {manifest.name!r} belongs to another provider")
            existing = uow.registry.version(manifest.name, manifest.version)
        if existing is not None:  # refused or a no-op before any blob is written
            return PublishResult(_same_or_conflict(existing, manifest, digest), created=False)
        # Blobs next: immutable and content-addressed, so a crash here leaves no half version.
        for art, f in zip(hashed, files, strict=True):
            self.blobs.put_file(f.path, expected_sha256=art.sha256)
        with self.uow.write(Lock.PUBLISH, manifest.name) as uow:
            return self._record(uow, manifest, hashed, digest, provider_id, actor)

    def _record(
        self,
        uow: RegistryUnitOfWork,
        manifest: Manifest,
        stored: tuple[ArtifactRecord, ...],
        digest: str,
        provider_id: str,
        actor: str,
    ) -> PublishResult:
        now = self.clock()
        existing = uow.registry.version(manifest.name, manifest.version)
        if existing is not None:  # published meanwhile by someone else
            return PublishResult(_same_or_conflict(existing, manifest, digest), created=False)
        model = uow.registry.model(manifest.name)
        if model is None:
            uow.registry.add_model(StoredModel(manifest.name, provider_id, now.isoformat()))
        elif model.provider_account_id != provider_id:
            raise PermissionDenied(f"model {manifest.name!r} belongs to another provider")
        version = StoredVersion(
            id=new_id("ver_"),
            model_name=manifest.name,
            version=manifest.version,
            semver=manifest.semver,
            digest=digest,
            manifest_json=json.dumps(manifest.to_json(), sort_keys=True),
            created_at=now.isoformat(),
            provider_account_id=provider_id,
            artifacts=stored,
        )
        uow.registry.add_version(version)
        audit.append(
            uow.audit,
            actor=actor,
            action="model.published",
            subject=f"{manifest.name}@{manifest.version}",
            payload={"digest": digest, "artifacts": {a.path: a.sha256 for a in stored}},
            now=now,
        )
        if uow.registry.newest_version(manifest.name) == manifest.version:
            self._set_alias(uow, manifest.name, LATEST, manifest.version, actor)
        return PublishResult(version_from_stored(version), created=True)

    def _set_alias(self, uow: RegistryUnitOfWork, model: str, alias: str, version: str, actor: str) -> None:
        current = uow.registry.alias(model, alias)
        if current == version:
            return
        now = self.clock()
        uow.registry.set_alias(StoredAlias(model, alias, version), now.isoformat())
        audit.append(
            uow.audit,
            actor=actor,
            action="alias.moved",
            subject=f"{model}@{alias}",
            payload={"from": current, "to": version},
            now=now,
        )

    # -- aliases -----------------------------------------------------------------------------------------
    def move_alias(self, model: str, alias: str, version: str, actor: str = "cli") -> None:
        if not ALIAS_RE.match(alias):
            raise InvalidInput(f"alias: {alias!r} must be lowercase letters, digits and '-'")
        with self.uow.write() as uow:
            if uow.registry.model(model) is None:
                raise NotFound(f"model {model!r} is not published")
            if uow.registry.version(model, version) is None:
                raise NotFound(f"model {model!r} has no version {version!r}")
            self._set_alias(uow, model, alias, version, actor)

    # -- reads -------------------------------------------------------------------------------------------
    def catalogue(self) -> Catalogue:
        """A fresh, complete snapshot (every version parsed)."""
        return CatalogueLoader(self.uow).load()


def _same_or_conflict(existing: StoredVersion, manifest: Manifest, digest: str) -> VersionRecord:
    if existing.digest != digest:
        raise Conflict(
            f"{manifest.name} {manifest.version} is already published with different content "
            f"(digest {existing.digest[:12]}, yours {digest[:12]}); versions are immutable: bump the version"
        )
    return version_from_stored(existing)


def _provider_id(uow: RegistryUnitOfWork, provider: str) -> str:
    account = uow.accounts.by_name(provider)
    if account is None:
        raise InvalidInput(
            f"provider: no account named {provider!r} (create it with "
            f"`modelmarket accounts create {provider} --role provider`)"
        )
    if account.role != "provider":
        raise InvalidInput(f"provider: account {provider!r} has role {account.role!r}, not 'provider'")
    return account.id


TEXT_UNITS = (UnitKind.TOKENS_1K, UnitKind.AUDIO_MINUTE)
"""Units counted on BYTES inputs (text, WAV files): a model priced in them must declare one."""


def _check_unit_inputs(manifest: Manifest) -> None:
    unit = manifest.pricing.unit
    if unit in TEXT_UNITS and not any(t.datatype == "BYTES" for t in manifest.inputs):
        raise InvalidInput(
            f"pricing.unit: {unit.value} is counted on BYTES inputs ({unit.base_unit}s), and this model declares "
            "none; price it per image or per request, or declare its text/audio input as BYTES"
        )


def _check_tensor_names(manifest: Manifest) -> None:
    for kind, tensors in (("inputs", manifest.inputs), ("outputs", manifest.outputs)):
        seen: set[str] = set()
        for i, tensor in enumerate(tensors):
            if tensor.name in seen:
                raise InvalidInput(f"{kind}[{i}].name: duplicate tensor name {tensor.name!r}")
            seen.add(tensor.name)


class CatalogueLoader:
    """Builds catalogue snapshots, reusing the versions it parsed before.

    Versions are immutable, so a reload reads the cheap index of version ids, the models and the aliases, and
    fetches and parses in full only the versions it has not seen: at 10,000 versions a reload with nothing new
    parses nothing.
    """

    def __init__(self, uow: UnitOfWorkFactory[RegistryUnitOfWork]) -> None:
        self.uow = uow
        self._versions: dict[str, VersionRecord] = {}

    def load(self) -> Catalogue:
        with self.uow.read() as uow:
            models = uow.registry.models()
            index = uow.registry.version_index()
            missing = [version_id for version_id, _ in index if version_id not in self._versions]
            fresh = _fetch(uow.registry, missing)
            aliases = uow.registry.aliases()
        for stored in fresh:
            self._versions[stored.id] = version_from_stored(stored)
        live = {version_id for version_id, _ in index}
        for gone in [v for v in self._versions if v not in live]:
            del self._versions[gone]
        entries = {m.name: ModelEntry(name=m.name, provider_account_id=m.provider_account_id) for m in models}
        for version_id, model_name in index:
            record = self._versions[version_id]
            entries[model_name].versions[record.version] = record
        for al in aliases:
            entries[al.model_name].aliases[al.alias] = al.version
        return Catalogue(models=entries)


VERSION_FETCH_BATCH = 500
"""Versions fetched per query while loading new ones (bounded IN lists)."""


def _fetch(repo: RegistryRepository, ids: Sequence[str]) -> list[StoredVersion]:
    out: list[StoredVersion] = []
    for i in range(0, len(ids), VERSION_FETCH_BATCH):
        out.extend(repo.versions(ids[i : i + VERSION_FETCH_BATCH]))
    return out
