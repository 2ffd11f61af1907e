"""Registry services: publish an immutable version, list and show models, move aliases, resolve references."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, insert, select, text, update

from modelmarket.adapters.blobs import BlobStore
from modelmarket.adapters.store import Store
from modelmarket.adapters.store import schema as t
from modelmarket.audit import chain as audit
from modelmarket.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from modelmarket.core.ids import new_id
from modelmarket.registry.manifest import NAME_RE, Manifest, load_manifest, parse_manifest

LATEST = "latest"
ALIAS_RE = NAME_RE


@dataclass(frozen=True, slots=True)
class ArtifactRecord:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class VersionRecord:
    id: str
    model_name: str
    version: str
    digest: str
    manifest: Manifest
    provider_account_id: str
    artifacts: tuple[ArtifactRecord, ...]
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model_name,
            "version": self.version,
            "digest": self.digest,
            "created_at": self.created_at,
            "provider_account_id": self.provider_account_id,
            "manifest": self.manifest.to_json(),
            "artifacts": [{"path": a.path, "sha256": a.sha256, "size_bytes": a.size_bytes} for a in self.artifacts],
        }


@dataclass(slots=True)
class ModelEntry:
    name: str
    provider_account_id: str
    versions: dict[str, VersionRecord] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def sorted_versions(self) -> list[VersionRecord]:
        return sorted(self.versions.values(), key=lambda v: v.manifest.semver)

    def resolve(self, ref: str | None) -> VersionRecord:
        """``ref`` is a version, an alias, or None for ``latest``."""
        key = ref or LATEST
        if key in self.versions:
            return self.versions[key]
        if key in self.aliases:
            return self.versions[self.aliases[key]]
        raise NotFound(f"model {self.name!r} has no version or alias {key!r}")


@dataclass(frozen=True, slots=True)
class Catalogue:
    """An in-memory snapshot of every model, version and alias (what the gateway routes with)."""

    models: dict[str, ModelEntry]

    def get(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            raise NotFound(f"model {name!r} is not published") from None

    def resolve(self, name: str, ref: str | None = None) -> VersionRecord:
        return self.get(name).resolve(ref)


@dataclass(frozen=True, slots=True)
class PublishResult:
    version: VersionRecord
    created: bool  # False when the same bytes were already published under this version


def _expand_artifacts(package_dir: Path, manifest: Manifest) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path]] = []
    for i, decl in enumerate(manifest.artifacts):
        src = package_dir / decl.path
        if src.is_file():
            files.append((decl.path, src))
        elif src.is_dir():
            inner = sorted(p for p in src.rglob("*") if p.is_file())
            if not inner:
                raise InvalidInput(f"artifacts[{i}].path: directory {decl.path!r} is empty")
            files.extend((p.relative_to(package_dir).as_posix(), p) for p in inner)
        else:
            raise InvalidInput(f"artifacts[{i}].path: {decl.path!r} does not exist in {package_dir}")
    return files


def version_digest(manifest: Manifest, artifacts: Iterable[ArtifactRecord]) -> str:
    doc = {"manifest": manifest.to_json(), "artifacts": sorted((a.path, a.sha256) for a in artifacts)}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class RegistryService:
    def __init__(
        self, store: Store, blobs: BlobStore, clock: Callable[[], datetime], known_runtimes: Iterable[str]
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.clock = clock
        self.known_runtimes = frozenset(known_runtimes)

    # -- publish -----------------------------------------------------------------------------------------
    def publish(self, package_dir: Path, actor: str = "cli") -> PublishResult:
        manifest = load_manifest(package_dir)
        if manifest.runtime not in self.known_runtimes:
            known = ", ".join(sorted(self.known_runtimes))
            raise InvalidInput(f"runtime: unknown runtime {manifest.runtime!r} (available: {known})")
        _check_tensor_names(manifest)
        files = _expand_artifacts(package_dir, manifest)
        provider_id = self._provider_id(manifest.provider)
        # Blobs first: they are immutable and content-addressed, so a crash here leaves no half version.
        stored = tuple(ArtifactRecord(rel, *self.blobs.put_file(src)) for rel, src in files)
        digest = version_digest(manifest, stored)
        with self.store.write() as conn:
            return self._record(conn, manifest, stored, digest, provider_id, actor)

    def _provider_id(self, provider: str) -> str:
        with self.store.read() as conn:
            row = conn.execute(select(t.accounts.c.id, t.accounts.c.role).where(t.accounts.c.name == provider)).first()
        if row is None:
            raise InvalidInput(
                f"provider: no account named {provider!r} (create it with "
                f"`modelmarket accounts create {provider} --role provider`)"
            )
        if row.role != "provider":
            raise InvalidInput(f"provider: account {provider!r} has role {row.role!r}, not 'provider'")
        return str(row.id)

    def _record(
        self,
        conn: Connection,
        manifest: Manifest,
        stored: tuple[ArtifactRecord, ...],
        digest: str,
        provider_id: str,
        actor: str,
    ) -> PublishResult:
        now = self.clock().isoformat()
        if conn.dialect.name == "postgresql":
            # Serialize publishes of one model (SQLite writers are already serialized by BEGIN IMMEDIATE).
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": manifest.name})
        existing = conn.execute(
            select(t.model_versions).where(
                t.model_versions.c.model_name == manifest.name, t.model_versions.c.version == manifest.version
            )
        ).first()
        if existing is not None:
            if existing.digest != digest:
                raise Conflict(
                    f"{manifest.name} {manifest.version} is already published with different content "
                    f"(digest {existing.digest[:12]}, yours {digest[:12]}); versions are immutable: "
                    "bump the version"
                )
            return PublishResult(_load_version(conn, existing), created=False)
        model = conn.execute(select(t.models).where(t.models.c.name == manifest.name)).first()
        if model is None:
            conn.execute(insert(t.models).values(name=manifest.name, provider_account_id=provider_id, created_at=now))
        elif model.provider_account_id != provider_id:
            raise PermissionDenied(f"model {manifest.name!r} belongs to another provider")
        version_id = new_id("ver_")
        major, minor, patch = manifest.semver
        conn.execute(
            insert(t.model_versions).values(
                id=version_id,
                model_name=manifest.name,
                version=manifest.version,
                version_major=major,
                version_minor=minor,
                version_patch=patch,
                digest=digest,
                manifest_json=json.dumps(manifest.to_json(), sort_keys=True),
                created_at=now,
            )
        )
        conn.execute(
            insert(t.artifacts),
            [
                {"version_id": version_id, "path": a.path, "sha256": a.sha256, "size_bytes": a.size_bytes}
                for a in stored
            ],
        )
        audit.append(
            conn,
            actor=actor,
            action="model.published",
            subject=f"{manifest.name}@{manifest.version}",
            payload={"digest": digest, "artifacts": {a.path: a.sha256 for a in stored}},
            now=self.clock(),
        )
        if self._is_newest(conn, manifest):
            self._set_alias(conn, manifest.name, LATEST, manifest.version, actor)
        row = conn.execute(select(t.model_versions).where(t.model_versions.c.id == version_id)).one()
        return PublishResult(_load_version(conn, row), created=True)

    @staticmethod
    def _is_newest(conn: Connection, manifest: Manifest) -> bool:
        v = t.model_versions.c
        newest = conn.execute(
            select(v.version)
            .where(v.model_name == manifest.name)
            .order_by(v.version_major.desc(), v.version_minor.desc(), v.version_patch.desc())
            .limit(1)
        ).scalar_one()
        return bool(newest == manifest.version)

    def _set_alias(self, conn: Connection, model: str, alias: str, version: str, actor: str) -> None:
        a = t.aliases.c
        now = self.clock()
        current = conn.execute(select(a.version).where(a.model_name == model, a.alias == alias)).scalar()
        if current == version:
            return
        if current is None:
            conn.execute(
                insert(t.aliases).values(model_name=model, alias=alias, version=version, updated_at=now.isoformat())
            )
        else:
            conn.execute(
                update(t.aliases)
                .where(a.model_name == model, a.alias == alias)
                .values(version=version, updated_at=now.isoformat())
            )
        audit.append(
            conn,
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
        with self.store.write() as conn:
            exists = conn.execute(select(t.models.c.name).where(t.models.c.name == model)).first()
            if exists is None:
                raise NotFound(f"model {model!r} is not published")
            v = t.model_versions.c
            found = conn.execute(select(v.id).where(v.model_name == model, v.version == version)).first()
            if found is None:
                raise NotFound(f"model {model!r} has no version {version!r}")
            self._set_alias(conn, model, alias, version, actor)

    # -- reads -------------------------------------------------------------------------------------------
    def catalogue(self) -> Catalogue:
        with self.store.read() as conn:
            return load_catalogue(conn)


def _check_tensor_names(manifest: Manifest) -> None:
    for kind, tensors in (("inputs", manifest.inputs), ("outputs", manifest.outputs)):
        seen: set[str] = set()
        for i, tensor in enumerate(tensors):
            if tensor.name in seen:
                raise InvalidInput(f"{kind}[{i}].name: duplicate tensor name {tensor.name!r}")
            seen.add(tensor.name)


def _load_version(conn: Connection, row: Any) -> VersionRecord:
    arts = conn.execute(
        select(t.artifacts).where(t.artifacts.c.version_id == row.id).order_by(t.artifacts.c.path)
    ).all()
    provider = conn.execute(
        select(t.models.c.provider_account_id).where(t.models.c.name == row.model_name)
    ).scalar_one()
    return _version_from_rows(row, provider, [ArtifactRecord(a.path, a.sha256, a.size_bytes) for a in arts])


def _version_from_rows(row: Any, provider_id: str, arts: list[ArtifactRecord]) -> VersionRecord:
    return VersionRecord(
        id=row.id,
        model_name=row.model_name,
        version=row.version,
        digest=row.digest,
        manifest=parse_manifest(json.loads(row.manifest_json), f"stored manifest of {row.model_name}"),
        provider_account_id=provider_id,
        artifacts=tuple(arts),
        created_at=row.created_at,
    )


def load_catalogue(conn: Connection) -> Catalogue:
    entries = {
        m.name: ModelEntry(name=m.name, provider_account_id=m.provider_account_id)
        for m in conn.execute(select(t.models))
    }
    arts: dict[str, list[ArtifactRecord]] = {}
    for a in conn.execute(select(t.artifacts).order_by(t.artifacts.c.path)):
        arts.setdefault(a.version_id, []).append(ArtifactRecord(a.path, a.sha256, a.size_bytes))
    for row in conn.execute(select(t.model_versions)):
        entry = entries[row.model_name]
        entry.versions[row.version] = _version_from_rows(row, entry.provider_account_id, arts.get(row.id, []))
    for al in conn.execute(select(t.aliases)):
        entries[al.model_name].aliases[al.alias] = al.version
    return Catalogue(models=entries)
