"""Registry services: publish an immutable version, move aliases, and load the catalogue snapshot."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelmarket.audit import chain as audit
from modelmarket.core.clock import Clock
from modelmarket.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from modelmarket.core.ids import new_id
from modelmarket.core.tensors import TensorSpec
from modelmarket.core.uow import Lock, UnitOfWorkFactory
from modelmarket.metering.units import UnitKind
from modelmarket.registry.catalogue import LATEST, ArtifactRecord, Catalogue, ModelEntry, VersionRecord
from modelmarket.registry.manifest import (
    NAME_RE,
    Manifest,
    Source,
    StepDecl,
    load_manifest,
    parse_manifest,
    parse_source,
)
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
class PreparedPackage:
    """A package that passed validation: its manifest, files, their hashes and the version digest. Nothing is
    stored yet."""

    manifest: Manifest
    files: tuple[PackageFile, ...]
    artifacts: tuple[ArtifactRecord, ...]
    digest: str
    provider_id: str
    existing: StoredVersion | None
    """The version already published under this name and number with the same digest (``Conflict`` is raised
    for a different one)."""


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
        evaluation=None if stored.evaluation_json is None else json.loads(stored.evaluation_json),
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

    # -- publish ----------------------------------------------------------------------------------------
    def publish(self, package_dir: Path, actor: str = "cli") -> PublishResult:
        """Validate, hash, store and record a version at once, without the publish gate (``governance.gate``):
        for the platform's own tools and tests. The CLI and the API publish through the gate."""
        prepared = self.prepare(package_dir)
        if prepared.existing is not None:  # refused or a no-op before any blob is written
            return PublishResult(version_from_stored(prepared.existing), created=False)
        self.store(prepared)
        return self.record(prepared.manifest, prepared.artifacts, prepared.digest, prepared.provider_id, actor)

    def prepare(self, package_dir: Path, account_id: str | None = None) -> PreparedPackage:
        """Validate the package and hash its files; nothing is stored. ``account_id``: the account submitting
        it, which must be the manifest's provider (``PermissionDenied`` otherwise)."""
        manifest = load_manifest(package_dir)
        known = sorted(self.runtimes.names())
        if not manifest.is_pipeline and manifest.runtime not in known:
            raise InvalidInput(f"runtime: unknown runtime {manifest.runtime!r} (available: {', '.join(known)})")
        _check_tensor_names(manifest)
        _check_unit_inputs(manifest)
        files = tuple(collect_artifacts(package_dir, manifest))
        if not manifest.is_pipeline:
            self.runtimes.validate(manifest.runtime, manifest.parameters, [f.relpath for f in files])
        hashed = tuple(ArtifactRecord(f.relpath, *_hash_file(f)) for f in files)
        digest = version_digest(manifest, hashed)
        with self.uow.read() as uow:
            provider_id = _provider_id(uow, manifest.provider)
            if account_id is not None and provider_id != account_id:
                raise PermissionDenied(
                    f"provider: {manifest.provider!r} is another account; a provider publishes only under its own "
                    "account name"
                )
            model = uow.registry.model(manifest.name)
            if model is not None and model.provider_account_id != provider_id:
                raise PermissionDenied(f"model {manifest.name!r} belongs to another provider")
            existing = uow.registry.version(manifest.name, manifest.version)
            if existing is None and manifest.is_pipeline:
                check_pipeline_steps(manifest, stored_resolver(uow.registry))
        if existing is not None:
            _same_or_conflict(existing, manifest, digest)
        return PreparedPackage(manifest, files, hashed, digest, provider_id, existing)

    def store(self, prepared: PreparedPackage) -> None:
        """Write the artifacts to the blob store (immutable and content-addressed: a crash leaves no half
        version, and storing the same bytes again is a no-op)."""
        for art, f in zip(prepared.artifacts, prepared.files, strict=True):
            self.blobs.put_file(f.path, expected_sha256=art.sha256)

    def record(
        self,
        manifest: Manifest,
        artifacts: tuple[ArtifactRecord, ...],
        digest: str,
        provider_id: str,
        actor: str,
        evaluation: dict[str, Any] | None = None,
        uow: RegistryUnitOfWork | None = None,
    ) -> PublishResult:
        """Record the version (its artifacts already stored) and move ``latest`` when it is the newest; audited.
        ``uow``: the caller's write unit of work (under ``Lock.PUBLISH``), so the version and the caller's own
        records commit together; else one is opened."""
        if uow is not None:
            return self._record(uow, manifest, artifacts, digest, provider_id, actor, evaluation)
        with self.uow.write(Lock.PUBLISH, manifest.name) as own:
            return self._record(own, manifest, artifacts, digest, provider_id, actor, evaluation)

    def _record(
        self,
        uow: RegistryUnitOfWork,
        manifest: Manifest,
        stored: tuple[ArtifactRecord, ...],
        digest: str,
        provider_id: str,
        actor: str,
        evaluation: dict[str, Any] | None = None,
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
            evaluation_json=None if evaluation is None else json.dumps(evaluation, sort_keys=True),
        )
        uow.registry.add_version(version)
        audit.append(
            uow.audit,
            actor=actor,
            action="model.published",
            subject=f"{manifest.name}@{manifest.version}",
            payload={
                "digest": digest,
                "artifacts": {a.path: a.sha256 for a in stored},
                **({"steps": {s.id: s.model for s in manifest.steps or ()}} if manifest.is_pipeline else {}),
            },
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


StepResolver = Callable[[str, str | None], VersionRecord]
"""``(model name, version or alias or None for latest) -> the version``; raises ``NotFound`` (as
``Catalogue.resolve`` does)."""


def stored_resolver(repo: RegistryRepository) -> StepResolver:
    """Resolve step models against the stored registry, the way ``ModelEntry.resolve`` does: a version, else an
    alias (``latest`` when none is given)."""

    def resolve(name: str, ref: str | None) -> VersionRecord:
        key = LATEST if ref is None else ref
        stored = repo.version(name, key)
        if stored is None:
            target = repo.alias(name, key)
            stored = repo.version(name, target) if target is not None else None
        if stored is not None:
            return version_from_stored(stored)
        if repo.model(name) is None:
            raise NotFound(f"model {name!r} is not published")
        raise NotFound(f"model {name!r} has no version or alias {key!r}")

    return resolve


def check_pipeline_steps(manifest: Manifest, resolve: StepResolver) -> None:
    """Refuse a pipeline unless each step's model resolves now, is a model (pipelines do not nest), and every
    mapping fits it: each step input named is one of the model's inputs, each of its inputs is mapped, and every
    source (pipeline input -> step input, step output -> step input, step output -> pipeline output) has the
    datatype and a shape compatible with where it goes. ``InvalidInput`` names the step and the field."""
    if manifest.steps is None or manifest.outputs_from is None:
        return
    pipeline_inputs = {t.name: TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in manifest.inputs}
    done: dict[str, VersionRecord] = {}  # step id -> its model's version
    for i, step in enumerate(manifest.steps):
        model = _step_model(i, step, resolve)
        declared = {spec.name: spec for spec in model.inputs}
        where = f"{model.ref} (step {step.id!r})"
        for name, source in step.sources.items():
            field = f"steps[{i}].inputs.{name}"
            target = declared.get(name)
            if target is None:
                raise InvalidInput(f"{field}: {where} has no input {name!r} (its inputs: {', '.join(declared)})")
            _check_fits(
                field, source, _source_spec(field, source, pipeline_inputs, done), target, f"input {name!r} of {where}"
            )
        missing = [name for name in declared if name not in step.inputs]
        if missing:
            raise InvalidInput(
                f"steps[{i}].inputs: {where} needs input(s) {', '.join(missing)}: give each a source "
                "('input.<pipeline input>' or '<step id>.<output>')"
            )
        done[step.id] = model
    for j, out in enumerate(manifest.outputs):
        field = f"outputs_from.{out.name}"
        source = parse_source(manifest.outputs_from[out.name])
        target = TensorSpec(out.name, out.datatype, tuple(out.shape))
        _check_fits(field, source, _source_spec(field, source, {}, done), target, f"output {out.name!r} (outputs[{j}])")


def _step_model(index: int, step: StepDecl, resolve: StepResolver) -> VersionRecord:
    try:
        model = resolve(step.model_name, step.model_ref)
    except NotFound as exc:
        raise InvalidInput(
            f"steps[{index}].model: {exc.message} (step {step.id!r}): publish the model first, then the pipeline"
        ) from None
    if model.is_pipeline:
        raise InvalidInput(
            f"steps[{index}].model: {model.ref} (step {step.id!r}) is a pipeline: a step calls a model (pipelines "
            "do not nest; list that pipeline's steps here instead)"
        )
    return model


def _source_spec(
    field: str, source: Source, pipeline_inputs: dict[str, TensorSpec], done: dict[str, VersionRecord]
) -> TensorSpec:
    """The declared tensor a source names (the manifest has checked that its step is an earlier one)."""
    if source.step is None:
        return pipeline_inputs[source.tensor]
    model = done[source.step]
    spec = next((o for o in model.outputs if o.name == source.tensor), None)
    if spec is None:
        names = ", ".join(o.name for o in model.outputs)
        raise InvalidInput(
            f"{field}: step {source.step!r} ({model.ref}) has no output {source.tensor!r} (its outputs: {names})"
        )
    return spec


def _check_fits(field: str, source: Source, spec: TensorSpec, target: TensorSpec, what: str) -> None:
    if spec.datatype != target.datatype:
        raise InvalidInput(f"{field}: {str(source)!r} is {spec.datatype} but {what} is {target.datatype}")
    if not shapes_compatible(spec.shape, target.shape):
        raise InvalidInput(
            f"{field}: {str(source)!r} has shape {list(spec.shape)} but {what} takes {list(target.shape)} "
            "(-1 is any size)"
        )


def shapes_compatible(a: Sequence[int], b: Sequence[int]) -> bool:
    """Whether some tensor could have both declared shapes: the same rank, each size equal or -1 on either side."""
    return len(a) == len(b) and all(x == y or x == -1 or y == -1 for x, y in zip(a, b, strict=True))


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
